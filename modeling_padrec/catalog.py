"""Which catalog a model was made for, and whether the data at hand is that catalog.

The token-layout fingerprint (:meth:`~modeling_padrec.tokenization.TokenMap.fingerprint`) says which tokens a
model reads; two catalogs with the same codebook shape share it. What a target and a draft learn is which item
has which codes, so every model folder records its catalog: the number of items and a digest of their codes, in
item order. The data a command is given passes when its first ``items`` items have exactly the recorded codes:
the same catalog, or the same catalog with items appended (the model never saw those; it can still list them,
as the catalog constraint allows them). Anything else is refused.

A folder written before the record existed has none: it is refused, with the command that records a catalog for
it once its owner says which one it was trained on (``padrec stamp-catalog``).
"""

from __future__ import annotations

import hashlib
import json

from .data import ItemIndex
from .errors import PadrecError


class CatalogError(PadrecError):
    """The data's catalog is not the one the model was trained on."""


def _digest(codes) -> str:
    payload = json.dumps([list(c) for c in codes], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def catalog_record(index: ItemIndex) -> dict:
    """What a model folder stores about its catalog: items, tokens per item, the digest of every item's codes."""
    return {"items": len(index), "levels": index.levels, "fingerprint": _digest(index.codes)}


def check_catalog(record: dict | None, index: ItemIndex, model: str, data: str) -> int:
    """Check the data's catalog ``index`` against a model's ``record``; returns how many of the data's items the
    model never saw (0: the same catalog). Raises :class:`CatalogError` naming both sides otherwise."""
    if not record:
        raise CatalogError(
            f"{model} was made before padrec recorded the catalog a model is trained on, so nothing ties it to "
            f"{data}; if it was trained on this catalog, record that with `padrec stamp-catalog --target TARGET "
            f"--data {data}` (add --draft DIR for its drafts)"
        )
    try:
        items, fingerprint = int(record["items"]), str(record["fingerprint"])
    except (KeyError, TypeError, ValueError):
        raise CatalogError(f"{model}: its catalog record is damaged ({record!r})") from None
    if len(index) >= items and _digest(index.codes[:items]) == fingerprint:
        return len(index) - items
    ours = catalog_record(index)
    why = (
        f"it has {len(index)} items, fewer than the {items} the model knows"
        if len(index) < items
        else f"its first {items} items do not have the codes the model learned"
    )
    raise CatalogError(
        f"{model} was trained on catalog {fingerprint} ({items} items); {data} is catalog {ours['fingerprint']} "
        f"({len(index)} items): {why}"
    )


def unseen_note(unseen: int, model: str) -> str | None:
    """The one line a command prints when the data's catalog extends the model's."""
    if not unseen:
        return None
    return f"padrec: note: the catalog has {unseen} item{'s' if unseen != 1 else ''} {model} never saw in training"


def stamp_catalog(target_dir, data_dir, drafts=()) -> list[str]:
    """Record ``data_dir``'s catalog in a target folder made before catalogs were recorded, and in its drafts:
    the owner's statement that they were trained on it. The token layout must match; a folder that already has a
    record keeps it (and must fit the data). Returns one line per folder. Each file is replaced atomically."""
    from pathlib import Path

    from .data import load_dataset
    from .fileio import write_json_atomic
    from .target import TARGET_META, load_target

    dataset = load_dataset(data_dir)
    target = load_target(target_dir)
    target.token_map(dataset.index)  # the token layout must match before any catalog is recorded
    record, lines = catalog_record(dataset.index), []
    if target.meta.catalog:
        check_catalog(target.meta.catalog, dataset.index, f"target {target.path}", str(data_dir))
        record = target.meta.catalog
        lines.append(f"target {target.path}: already records catalog {record['fingerprint']}; kept")
    else:
        meta = json.loads((target.path / TARGET_META).read_text())
        write_json_atomic(target.path / TARGET_META, {**meta, "catalog": record}, indent=2)
        lines.append(
            f"target {target.path}: recorded catalog {record['fingerprint']} ({record['items']} items)"
        )
    from .draft import load_draft

    for draft in drafts:
        load_draft(draft)  # a damaged or foreign draft is refused before anything is written
        path = Path(draft) / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CatalogError(f"--draft {draft}: not a readable PAD-Rec draft config ({e})") from None
        if config.get("model_type") != "padrec_draft":
            raise CatalogError(f"--draft {draft}: {path} is not a PAD-Rec draft config")
        if config.get("token_map_fingerprint") != target.meta.token_map_fingerprint:
            raise CatalogError(
                f"--draft {draft}: built for token layout {config.get('token_map_fingerprint')}, the target has "
                f"{target.meta.token_map_fingerprint}"
            )
        if config.get("catalog"):
            if config["catalog"] != record:
                raise CatalogError(
                    f"--draft {draft}: records catalog {config['catalog'].get('fingerprint')}, not the target's "
                    f"{record['fingerprint']}"
                )
            lines.append(f"draft {draft}: already records catalog {record['fingerprint']}; kept")
            continue
        write_json_atomic(path, {**config, "catalog": record}, indent=2)
        lines.append(f"draft {draft}: recorded catalog {record['fingerprint']}")
    return lines
