"""padrec's engine as a transformers ``custom_generate`` recipe: catalog-constrained recommendation lists, with
jump-forward over the tokens the catalog forces and PAD-Rec drafting (a chain or a tree), from a Hub repo.

``padrec export`` ships this file as ``custom_generate/generate.py`` of the draft repo, next to the engine's
files and the catalog the draft and its target were trained on (``catalog.safetensors``: every item's code token
ids, the separator, EOS and the list length). With nothing but transformers and peft::

    draft = AutoModel.from_pretrained("org/padrec-draft", trust_remote_code=True)
    out = target.generate(**inputs, custom_generate="org/padrec-draft", trust_remote_code=True,
                          assistant_model=draft, max_new_tokens=60)

Extra arguments (all optional): ``catalog`` (a folder or repo id holding ``catalog.safetensors``, or an
``(items, L)`` tensor / nested list of code token ids; default: the draft's repo), ``draft_depth`` (choices per
round), ``tree_width``, ``tree_budget`` and ``tree_acceptance`` (draft a tree instead of a chain; the last a
calibrated acceptance curve to rank its nodes by, ``[(confidence, rate), ...]``, or a list of such curves by
sibling order: the draft's first pick at a choice point, then its others). A catalog passed at call time must
keep every trained item's codes (items may be appended); any other is refused. Greedy by default;
``do_sample=True`` with ``temperature`` / ``top_k`` / ``top_p`` samples under the catalog. Rows of a batch are
decoded one after another (left padding is removed per row) and returned padded with the pad token, like
``generate``.

This file imports only torch, transformers and its sibling files: it ships as Hub remote code.
"""

from __future__ import annotations

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file

from .loop import Engine, GenerationSettings
from .trie import CatalogTrie

CATALOG_FILE = "catalog.safetensors"


def load_catalog(location) -> dict[str, torch.Tensor]:
    """``catalog.safetensors`` of a folder or Hub repo id: ``item_token_ids`` ``(items, L)``, ``sep_token_id``,
    ``eos_token_id``, ``list_len``."""
    path = cached_file(str(location), CATALOG_FILE)
    if path is None:
        raise ValueError(f"{location}: no {CATALOG_FILE} (a padrec draft repo carries one)")
    tables = load_state_dict(path)
    missing = {"item_token_ids", "sep_token_id", "eos_token_id", "list_len"} - set(tables)
    if missing:
        raise ValueError(f"{path}: not a padrec catalog (missing {', '.join(sorted(missing))})")
    return tables


def check_catalog(trained: torch.Tensor, given: torch.Tensor, where: str) -> None:
    """``given`` must hold every trained item with its trained codes, in item order (more items may follow)."""
    n = trained.shape[0]
    if given.dim() != 2 or given.shape[1] != trained.shape[1]:
        raise ValueError(
            f"catalog: expected (items, {trained.shape[1]}) code token ids like {where}'s, got {tuple(given.shape)}"
        )
    if given.shape[0] < n or not torch.equal(given[:n].to(trained.dtype), trained):
        changed = "fewer items" if given.shape[0] < n else "other codes for some of its items"
        raise ValueError(
            f"catalog: not the catalog the model was trained on ({where}: {n} items; this one has "
            f"{given.shape[0]} items and {changed})"
        )


def _settings(generation_config, kwargs) -> GenerationSettings:
    def pick(name, default=None):
        if name in kwargs and kwargs[name] is not None:
            return kwargs[name]
        value = getattr(generation_config, name, None) if generation_config is not None else None
        return default if value is None else value

    do_sample = bool(pick("do_sample", False))
    return GenerationSettings(
        do_sample=do_sample,
        temperature=float(pick("temperature", 1.0)) if do_sample else 1.0,
        top_k=pick("top_k") if do_sample else None,
        top_p=pick("top_p") if do_sample else None,
        max_new_tokens=pick("max_new_tokens"),
    )


@torch.no_grad()
def generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config=None,
    assistant_model=None,
    catalog=None,
    draft_depth: int | None = None,
    tree_width: int | None = None,
    tree_budget: int | None = None,
    tree_acceptance=None,
    generator: torch.Generator | None = None,
    **kwargs,
):
    """Catalog-constrained lists for every row of ``input_ids`` (see the module's docstring)."""
    input_ids = inputs if inputs is not None else kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("generate: pass input_ids (the prompts, each ending with <|rec|>)")
    attention_mask = kwargs.get("attention_mask")
    draft = assistant_model
    given_ids = catalog is not None and not isinstance(catalog, str)  # token ids, checked against the draft's
    if draft is None and (catalog is None or given_ids):
        raise ValueError(
            "generate: pass assistant_model (a padrec draft), or catalog as its repo id or folder"
            + (": a catalog given as token ids is checked against the draft's" if given_ids else "")
        )
    source = draft.name_or_path if catalog is None or given_ids else catalog
    tables = load_catalog(source)
    items = tables["item_token_ids"].long()
    if given_ids:
        given = torch.as_tensor(catalog, dtype=torch.long)
        check_catalog(items, given, source)
        items = given
    vocab = model.get_output_embeddings().weight.shape[0]
    if int(items.max()) >= vocab or int(items.min()) < 0:
        raise ValueError(f"catalog: token ids outside the model's vocabulary of {vocab}")
    if draft is not None:
        fingerprint = getattr(draft.config, "catalog", None) or {}
        if fingerprint.get("items") not in (None, int(tables["item_token_ids"].shape[0])):
            raise ValueError(f"catalog: {source} does not belong to the draft {draft.name_or_path}")
        if not set(items.unique().tolist()) <= set(draft.config.rec_token_ids):
            raise ValueError("catalog: code tokens the draft was not built for")
        if getattr(draft, "is_attached", False):
            draft.detach()  # the engine feeds the draft itself; hooks from attach() are not needed
    trie = CatalogTrie(
        items, int(tables["sep_token_id"]), int(tables["eos_token_id"]), int(tables["list_len"])
    )
    settings = _settings(generation_config, kwargs)
    if settings.max_new_tokens is None:
        settings.max_new_tokens = trie.items_per_list * (trie.levels + 1)
    engine = Engine(model, trie, draft, draft_depth, settings, tree_width, tree_budget, tree_acceptance)
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else int(tables["eos_token_id"])
    rows = []
    for r in range(input_ids.shape[0]):
        prompt = input_ids[r]
        if attention_mask is not None:
            prompt = prompt[attention_mask[r].bool()]
        out = engine.generate(prompt.tolist(), generator=generator)
        rows.append(out.output_ids)
    width = max(len(r) for r in rows)
    new = torch.full((input_ids.shape[0], width), pad, dtype=input_ids.dtype, device=input_ids.device)
    for r, ids in enumerate(rows):
        new[r, : len(ids)] = torch.tensor(ids, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new], dim=1)
    as_dict = kwargs.get("return_dict_in_generate")
    if as_dict is None and generation_config is not None:
        as_dict = generation_config.return_dict_in_generate
    return GenerateDecoderOnlyOutput(sequences=sequences) if as_dict else sequences
