"""Self-distillation training of a PAD-Rec draft, with a K-step training-time test.

1. **Data, once.** For training users (cut points inside their *train* sequences only, so no validation or test
   prompt is ever seen), the target writes its own greedy, catalog-constrained list. The target's last hidden
   states over ``prompt + list`` are computed once and cached in ``<out>.work/features.safetensors`` (or in
   ``cache_dir``, which several trainings on the same target and data can share: the ablation drafts and the
   small-LM assistant all read the same lists).
2. **Loss.** At draft position t the input is (f_t, x_{t+1}); the output must predict f_{t+1} (smooth L1) and
   the target's next-token distribution at t+1 over the recommendation vocabulary (soft cross-entropy).
3. **Training-time test.** Step k = 0..K-1 is unrolled: step k at position t reads the feature that step k-1
   predicted at t-1 and attends exactly what it would attend while drafting (true context up to t-k, then its
   own chain), with step id k. Without it the step embedding would only ever see k = 0.

Training runs through :func:`modeling_padrec.training.train_stage` (accelerate, safetensors checkpoints).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from transformers import DynamicCache

from .configuration_padrec_draft import FORCED_INPUTS
from .draft import PadRecDraftError, causal_lm, new_draft, target_features
from .fileio import staged_dir
from .modeling_padrec_draft import PadRecDraftModel
from .training import LOG_NAME, StageConfig, run_settings, train_stage

FEATURES_NAME = "features.safetensors"
META_NAME = "padrec_draft.json"


@dataclass
class DraftTrainArgs:
    """Everything :func:`train_draft` takes; stored in ``padrec_draft.json`` beside the saved draft."""

    target_dir: str
    data: str
    out: str
    depth: int = 5
    use_item_position: bool = True
    use_step_position: bool = True
    max_steps: int = 300
    seed: int = 0
    batch_size: int = 16
    lr: float = 2e-3
    max_users: int | None = None
    prompts_per_user: int = 1
    feature_weight: float = 1.0
    token_weight: float = 1.0
    save_every: int = 200
    cache_dir: str | None = None
    step_gate: str = "context"  # "none": the step embedding without its context gate
    forced_inputs: str = "chain"  # "block": a forced token reads what its run read (PadRecDraftConfig)
    init_from: str | None = None  # a trained draft of the same shape for the same target to start from


# --------------------------------------------------------------------------- data: the target's own lists


class DraftExamples(Dataset):
    """``prompt + target list`` token ids with the target's features at every position."""

    def __init__(self, ids: list[torch.Tensor], features: list[torch.Tensor], prompt_lens: list[int]):
        self.ids, self.features, self.prompt_lens = ids, features, prompt_lens
        self.lengths = [len(x) for x in ids]  # for length-grouped batches
        self.forced: list[torch.Tensor] | None = (
            None  # per token: forced by the catalog (:func:`forced_flags`)
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.ids[i], "features": self.features[i], "prompt_len": self.prompt_lens[i]}
        if self.forced is not None:
            item["forced"] = self.forced[i]
        return item

    def save(self, path: Path, fingerprint: dict) -> None:
        lengths = torch.tensor([len(x) for x in self.ids])
        import os

        tensors = {
            "input_ids": torch.cat(self.ids),
            "features": torch.cat(self.features).contiguous(),
            "lengths": lengths,
            "prompt_lens": torch.tensor(self.prompt_lens),
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # readers never see a half-written cache
        save_file(tensors, tmp, metadata={"fingerprint": json.dumps(fingerprint, sort_keys=True)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, fingerprint: dict) -> DraftExamples | None:
        """The cached examples, or None when absent or made for other settings."""
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("fingerprint") != json.dumps(fingerprint, sort_keys=True):
                return None
        t = load_file(path)
        lengths = t["lengths"].tolist()
        return cls(
            list(t["input_ids"].split(lengths)), list(t["features"].split(lengths)), t["prompt_lens"].tolist()
        )


def training_prompts(
    dataset, encoder, history_len: int, max_users, per_user: int, seed: int
) -> list[list[int]]:
    """Prompts cut inside users' train sequences (a prefix of at least one item), ``per_user`` each."""
    rng = random.Random(seed)
    users = sorted(u for u, s in dataset.train.items() if len(s) >= 2)
    if max_users is not None:
        users = rng.sample(users, min(max_users, len(users)))
    prompts = []
    for user in users:
        seq = dataset.train[user]
        for cut in sorted(rng.sample(range(1, len(seq)), min(per_user, len(seq) - 1))):
            prompts.append(encoder.prompt(seq[:cut], history_len))
    return prompts


@torch.no_grad()
def build_examples(recommender, prompts: list[list[int]], batch_size: int = 32) -> DraftExamples:
    """The target's greedy constrained list for every prompt, and its features over ``prompt + list``."""
    from .examples import left_pad

    tm = recommender.token_map
    model = recommender.target.model
    device = next(model.parameters()).device
    ids, feats, prompt_lens = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = left_pad(chunk, tm.pad_id)
        out = recommender.generate(batch["input_ids"], batch["attention_mask"])
        width = batch["input_ids"].shape[1]
        rows = []
        for prompt, generated in zip(chunk, out[:, width:].tolist(), strict=True):
            if tm.eos_id in generated:
                generated = generated[: generated.index(tm.eos_id) + 1]
            rows.append(prompt + generated)
            prompt_lens.append(len(prompt))
        longest = max(len(r) for r in rows)
        padded = torch.full((len(rows), longest), tm.pad_id, dtype=torch.long)
        mask = torch.zeros_like(padded)
        for r, row in enumerate(rows):
            padded[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        hidden = target_features(model, padded.to(device), mask.to(device)).float().cpu()
        for r, row in enumerate(rows):
            ids.append(padded[r, : len(row)].clone())
            feats.append(hidden[r, : len(row)].clone())
    return DraftExamples(ids, feats, prompt_lens)


def collate_examples(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids (``pad_id``) and features (zeros); keep lengths and prompt lengths."""
    width = max(len(b["input_ids"]) for b in batch)
    hidden = batch[0]["features"].shape[-1]
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    feats = torch.zeros(len(batch), width, hidden)
    for r, b in enumerate(batch):
        ids[r, : len(b["input_ids"])] = b["input_ids"]
        feats[r, : len(b["input_ids"])] = b["features"]
    out = {
        "input_ids": ids,
        "features": feats,
        "lengths": torch.tensor([len(b["input_ids"]) for b in batch]),
        "prompt_lens": torch.tensor([b["prompt_len"] for b in batch]),
    }
    if "forced" in batch[0]:
        out["forced"] = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, b in enumerate(batch):
            out["forced"][r, : len(b["forced"])] = b["forced"]
    return out


def forced_flags(trie, examples: DraftExamples) -> list[torch.Tensor]:
    """For every example, which tokens the catalog forced: walking the list after the prompt through ``trie``
    (a :class:`~modeling_padrec.engine.CatalogTrie`), a token is forced where its list state allowed no other.
    Prompt tokens are not; a list the catalog does not allow is marked up to where it leaves the catalog."""
    flags = []
    for ids, start in zip(examples.ids, examples.prompt_lens, strict=True):
        forced = torch.zeros(len(ids), dtype=torch.bool)
        state = trie.start()
        for i, token in enumerate(ids[start:].tolist(), start):
            is_forced = state.forced() is not None
            if state.done or not state.advance(token):
                break
            forced[i] = is_forced
        flags.append(forced)
    return flags


# --------------------------------------------------------------------------- loss: K-step training-time test


def ttt_attention_mask(step: int, length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask ``(1, 1, length, (step + 1) * length)`` for step ``step`` of the unrolled draft.

    Keys are laid out step by step (the cache holds steps 0..step, ``length`` positions each). The query at
    position t sees the step-0 keys at positions <= t - step (true target context, as when the round started at
    t - step) and, for every j = 1..step, the step-j key at t - step + j (its own drafted chain).
    """
    t = torch.arange(length, device=device)[:, None]
    s = torch.arange(length, device=device)[None, :]
    blocks = [s <= t - step] + [s == t - step + j for j in range(1, step + 1)]
    allowed = torch.cat(blocks, dim=1)[None, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def rec_head(target, rec_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's LM head restricted to ``rec_ids``: (weight ``(R, hidden)``, bias ``(R,)``), frozen copies."""
    head = causal_lm(target).get_output_embeddings()
    with torch.no_grad():
        device = head.weight.device if hasattr(head, "weight") else next(head.parameters()).device
        hidden = causal_lm(target).config.get_text_config().hidden_size
        eye = torch.eye(hidden, device=device)
        bias = head(torch.zeros(1, hidden, device=device))[0]
        weight_t = head(eye) - bias
    ids = torch.tensor(rec_ids, device=weight_t.device)
    return weight_t[:, ids].T.float().cpu().contiguous(), bias[ids].float().cpu().contiguous()


def unroll(
    draft: PadRecDraftModel,
    input_ids: torch.Tensor,
    features: torch.Tensor,
    depth: int,
    forced: torch.Tensor | None = None,
) -> list:
    """The draft's outputs for steps 0..depth-1 at every position, as drafting would produce them.

    ``input_ids`` ``(batch, n)`` and ``features`` ``(batch, n, hidden)`` (the target's, right-padded). Output k at
    position t is the k-th draft step of a round whose last true position is t - k, fed the tokens
    ``x_{t-k+1..t+1}`` (the target's own, teacher-forced) and its own predicted features. Positions t < k have
    no such round and are garbage.

    For a draft with ``forced_inputs="block"``, ``forced`` ``(batch, n)`` marks the tokens the catalog forced: at
    steps k >= 2 an entry whose token is forced reads what the entry before it read at step k - 1 (a choice and
    its forced run read one feature, as the engine reads them in one forward).
    """
    block = draft.config.forced_inputs == "block"
    if block and forced is None:
        raise ValueError("a draft with forced_inputs='block' is unrolled with the forced-token flags")
    entry_forced = forced[:, 1:, None] if block else None  # entry t carries token x_{t+1}
    batch_size, n = input_ids.shape
    positions = torch.arange(n - 1, device=input_ids.device)[None].expand(batch_size, n - 1)
    inputs, cache, outputs = features[:, :-1], DynamicCache(), []
    for step in range(depth):
        mask = ttt_attention_mask(step, n - 1, inputs.dtype, input_ids.device)
        out = draft(
            input_ids[:, 1:], inputs, step_ids=step, position_ids=positions, attention_mask=mask, cache=cache
        )
        outputs.append(out)
        # step + 1 at position t reads the feature this step predicted at t - 1
        chained = torch.cat([torch.zeros_like(out.features[:, :1]), out.features[:, :-1]], dim=1)
        if block and step >= 1:  # a forced entry of a drafted run reads what the entry before it read
            before = torch.cat([torch.zeros_like(inputs[:, :1]), inputs[:, :-1]], dim=1)
            chained = torch.where(entry_forced, before, chained)
        inputs = chained
    return outputs


def draft_loss(
    draft: PadRecDraftModel,
    batch: dict[str, torch.Tensor],
    head: tuple[torch.Tensor, torch.Tensor],
    depth: int,
    feature_weight: float = 1.0,
    token_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over steps 0..depth-1 of ``feature_weight * smoothL1(f) + token_weight * CE(target dist)``."""
    ids, feats = batch["input_ids"], batch["features"].to(draft.fc.weight.dtype)
    lengths, prompt_lens = batch["lengths"], batch["prompt_lens"]
    weight, bias = (x.to(ids.device) for x in head)
    with torch.no_grad():
        target_dist = torch.softmax(
            feats[:, 1:].float() @ weight.T + bias, dim=-1
        )  # at t+1, predicting x_{t+2}
    t = torch.arange(ids.shape[1] - 1, device=ids.device)[None]
    # the draft is scored where it drafts: predicting list tokens x_{t+2}, t+2 in [prompt_len, length)
    scored = (t + 2 >= prompt_lens[:, None]) & (t + 2 < lengths[:, None])
    total = torch.zeros((), device=ids.device)
    metrics: dict[str, float] = {}
    for step, out in enumerate(unroll(draft, ids, feats, depth, batch.get("forced"))):
        valid = scored & (t >= step)
        if not valid.any():
            continue
        feature_loss = F.smooth_l1_loss(out.features, feats[:, 1:], reduction="none").mean(-1)[valid].mean()
        log_q = torch.log_softmax(out.logits.float(), dim=-1)
        token_loss = -(target_dist * log_q).sum(-1)[valid].mean()
        total = total + feature_weight * feature_loss + token_weight * token_loss
        agree = out.logits.argmax(-1) == target_dist.argmax(-1)
        metrics[f"acc_{step}"] = agree[valid].float().mean().item()
    return total / depth, metrics


# --------------------------------------------------------------------------- the recipe


def distillation_examples(
    recommender,
    target_dir,
    data,
    work: Path,
    max_users,
    prompts_per_user: int,
    seed: int,
    accelerator,
    target_weights: str,
) -> DraftExamples:
    """The target's lists and features for training prompts, cached in the folder ``work`` (reused while the
    target and its weights, the data, token layout and sampling settings are unchanged: a target trained again
    in the same folder gets a cache of its own). Shared by the draft and the small-LM assistant."""
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = {
        **run_settings({"target": str(target_dir), "data": str(data)}),
        "target_weights": target_weights,
        "token_map": recommender.token_map.fingerprint(),
        "max_users": max_users,
        "prompts_per_user": prompts_per_user,
        "seed": seed,
    }
    examples = DraftExamples.load(work / FEATURES_NAME, fingerprint)
    if examples is None:
        history_len = recommender.target.meta.history_len
        prompts = training_prompts(
            recommender.dataset, recommender.encoder, history_len, max_users, prompts_per_user, seed
        )
        examples = build_examples(recommender, prompts)
        if accelerator.is_main_process:
            examples.save(work / FEATURES_NAME, fingerprint)
        accelerator.wait_for_everyone()
    return examples


@dataclass
class Distillation:
    """What every model distilled from a target's own lists starts from (the PAD-Rec draft and the small-LM
    assistant): the loaded target and its recommender, the cached lists and features, and the work folder
    ``<out>.work`` holding checkpoints and the training log; ``target_weights``: the target's
    :func:`~modeling_padrec.target.weights_digest`, which the cache, the checkpoints and the saved model record."""

    target: object
    recommender: object
    examples: DraftExamples
    out: Path
    work: Path
    target_weights: str

    @classmethod
    def prepare(cls, args, accelerator) -> Distillation:
        """``args``: a :class:`DraftTrainArgs` or an ``AssistantTrainArgs`` (target_dir, data, out, seed,
        max_users, prompts_per_user, cache_dir)."""
        from accelerate.utils import set_seed

        from .data import load_dataset
        from .decoding import Recommender
        from .target import load_target, weights_digest

        set_seed(args.seed)
        target = load_target(args.target_dir, device=accelerator.device)
        weights = weights_digest(target.path)
        recommender = Recommender(target, load_dataset(args.data))
        out = Path(args.out).absolute()
        work = out.with_name(f"{out.name}.work")
        cache = Path(args.cache_dir) if args.cache_dir else work
        examples = distillation_examples(
            recommender, args.target_dir, args.data, cache, args.max_users, args.prompts_per_user, args.seed,
            accelerator, weights,
        )  # fmt: skip
        return cls(target, recommender, examples, out, work, weights)

    def train(self, model, name: str, args, loss, accelerator):
        """Run ``loss(model, batch) -> (loss, metrics)`` for ``args.max_steps`` steps on the lists; returns the
        trained model and the last logged metrics."""
        final: dict[str, float] = {}

        def loss_fn(m, batch):
            value, metrics = loss(m, batch)
            final.update(metrics)
            return value, metrics

        pad_id = self.recommender.token_map.pad_id
        model = train_stage(
            model,
            self.examples,
            lambda b: collate_examples(b, pad_id),
            StageConfig(
                name,
                args.max_steps,
                batch_size=min(args.batch_size, len(self.examples)),
                lr=args.lr,
                save_every=args.save_every,
            ),
            accelerator=accelerator,
            work_dir=self.work,
            seed=args.seed,
            run_fingerprint={
                **run_settings(asdict(args), drop=("out", "save_every", "cache_dir")),
                "target_weights": self.target_weights,  # a checkpoint from another training is not resumed
            },
            loss_fn=loss_fn,
        )
        return model, final

    def finish(self, accelerator) -> None:
        """Remove the work folder once the model is saved (main process), then line the processes up."""
        if accelerator.is_main_process:
            shutil.rmtree(self.work, ignore_errors=True)
        accelerator.wait_for_everyone()


def prepare_distillation(
    target_dir: str | Path,
    data: str | Path,
    cache_dir: str | Path,
    *,
    seed: int = 0,
    max_users: int | None = None,
    prompts_per_user: int = DraftTrainArgs.prompts_per_user,
) -> int:
    """Build the distillation cache in ``cache_dir`` that :func:`train_draft` reads with the same target, data,
    seed, ``max_users`` and ``prompts_per_user`` (or find it there), so drafts trained at the same time in
    several processes read one cache instead of each building it. Returns the number of training examples."""
    from accelerate import Accelerator

    args = DraftTrainArgs(
        str(target_dir), str(data), str(Path(cache_dir) / "unused"), seed=seed, max_users=max_users,
        prompts_per_user=prompts_per_user, cache_dir=str(cache_dir),
    )  # fmt: skip
    return len(Distillation.prepare(args, Accelerator()).examples)


def train_draft(
    target_dir: str | Path,
    data: str | Path,
    out: str | Path,
    depth: int = 5,
    use_item_position: bool = True,
    use_step_position: bool = True,
    max_steps: int = 300,
    seed: int = 0,
    *,
    accelerator=None,
    **options,
) -> Path:
    """Train a PAD-Rec draft for the target in ``target_dir`` on dataset ``data``; save it to ``out``.

    ``options``: the other fields of :class:`DraftTrainArgs` (batch_size, lr, max_users, prompts_per_user,
    feature_weight, token_weight, save_every, cache_dir, step_gate, forced_inputs, init_from). Both position signals off gives the EAGLE-style baseline,
    trained by the same recipe. ``out`` gets the Hub-loadable draft (remote code included), ``padrec_draft.json``
    (the arguments, the target's weights digest and final metrics) and ``train_log.jsonl``. Returns ``out`` as an absolute path.
    """
    from accelerate import Accelerator

    args = DraftTrainArgs(
        str(target_dir),
        str(data),
        str(out),
        depth,
        use_item_position,
        use_step_position,
        max_steps,
        seed,
        **options,
    )
    if args.forced_inputs not in FORCED_INPUTS:
        raise PadRecDraftError(
            f"forced_inputs must be one of {', '.join(FORCED_INPUTS)}, got {args.forced_inputs!r}"
        )
    if args.init_from is not None and not (Path(args.init_from) / META_NAME).is_file():
        raise PadRecDraftError(
            f"--init-from {args.init_from}: not a draft trained by padrec train-draft (no {META_NAME})"
        )
    accelerator = accelerator or Accelerator()
    run = Distillation.prepare(args, accelerator)
    draft = new_draft(
        run.target,
        run.recommender.token_map,
        depth,
        use_item_position,
        use_step_position,
        seed=seed,
        step_gate=args.step_gate,
        forced_inputs=args.forced_inputs,
    )
    if args.init_from is not None:
        _start_from(draft, Path(args.init_from), run)
    if args.forced_inputs == "block":
        run.examples.forced = forced_flags(run.recommender.trie, run.examples)
    head = rec_head(run.target.model, draft.config.rec_token_ids)
    draft, final = run.train(
        draft.train(),
        "draft",
        args,
        lambda m, b: draft_loss(m, b, head, depth, args.feature_weight, args.token_weight),
        accelerator,
    )
    if accelerator.is_main_process:
        meta = {
            "args": asdict(args),
            "target_weights": run.target_weights,
            "examples": len(run.examples),
            "final": final,
        }
        _save_draft(draft.eval(), run.out, meta, run.work / LOG_NAME)
    run.finish(accelerator)
    return run.out


SHAPE = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
         "max_draft_steps", "use_item_position", "use_step_position", "step_gate")  # fmt: skip


def _start_from(draft: PadRecDraftModel, path: Path, run: Distillation) -> None:
    """Copy the weights of the trained draft at ``path`` into ``draft``: the same shape and signals, trained
    for the same target (weights digest) and catalog; anything else is refused."""
    from .draft import load_draft

    init = load_draft(path, run.recommender.token_map, device=draft.device, dataset=run.recommender.dataset)
    for name in SHAPE:
        ours, theirs = getattr(draft.config, name), getattr(init.config, name)
        if ours != theirs:
            raise PadRecDraftError(
                f"--init-from {path}: that draft has {name}={theirs!r}, this training builds {name}={ours!r}"
            )
    recorded = distilled_from(path)
    if recorded != run.target_weights:
        raise PadRecDraftError(
            f"--init-from {path}: that draft was trained for target weights {recorded}, "
            f"this target's are {run.target_weights}"
        )
    draft.load_state_dict(init.state_dict())


def distilled_from(draft_dir: str | Path) -> str | None:
    """The weights digest of the target a trained draft was distilled from, as its ``padrec_draft.json``
    records it (None for a draft written before drafts recorded it)."""
    try:
        meta = json.loads((Path(draft_dir) / META_NAME).read_text())
    except ValueError as e:
        raise PadRecDraftError(f"{draft_dir}: {META_NAME} is not readable JSON ({e})") from None
    return meta.get("target_weights")


def _save_draft(draft: PadRecDraftModel, out: Path, meta: dict, log: Path) -> None:
    """Write the draft folder beside ``out`` and move it into place (an old ``out`` is replaced whole)."""
    with staged_dir(out) as tmp:
        draft.save_pretrained(tmp)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        if log.is_file():
            shutil.copyfile(log, tmp / LOG_NAME)
