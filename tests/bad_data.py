"""Broken dataset folders shared by test_data.py and test_cli.py.

Each builder writes one bad dataset under ``root`` and returns ``(path to load, the file the error must name)``.
"""

from __future__ import annotations

import json
from pathlib import Path

GOOD_INDEX = {"0": ["<a_0>", "<b_1>"], "1": ["<a_1>", "<b_0>"], "2": ["<a_1>", "<b_1>"]}
GOOD_INTER = {"u1": [0, 1, 2], "u2": [2, 1, 0, 1]}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def lcrec(root: Path, index=GOOD_INDEX, inter=GOOD_INTER) -> Path:
    folder = root / "ds"
    if index is not None:
        _write(folder / "X.index.json", index)
    if inter is not None:
        _write(folder / "X.inter.json", inter)
    return folder


def missing_folder(root):
    return root / "no-such-dataset", root / "no-such-dataset"


def missing_index(root):
    folder = lcrec(root, index=None)
    return folder, folder


def unreadable_index_json(root):
    folder = lcrec(root, index='{"0": ["<a_0>", ')
    return folder, folder / "X.index.json"


def unreadable_inter_json(root):
    folder = lcrec(root, inter="{'u1': [0, 1]}")
    return folder, folder / "X.inter.json"


def not_utf8(root):
    folder = lcrec(root)
    (folder / "X.inter.json").write_bytes(b'{"u1": [0, 1], "\xff\xfe": [2]}')
    return folder, folder / "X.inter.json"


def unknown_item(root):
    folder = lcrec(root, inter={"u1": [0, 1, 2], "u2": [0, 7, 1]})
    return folder, folder / "X.inter.json"


def unequal_code_length(root):
    folder = lcrec(root, index={**GOOD_INDEX, "2": ["<a_1>", "<b_1>", "<c_0>"]})
    return folder, folder / "X.index.json"


def bad_code_token(root):
    folder = lcrec(root, index={**GOOD_INDEX, "1": ["<a_1>", "<a_0>"]})  # level b written with letter a
    return folder, folder / "X.index.json"


def malformed_code_token(root):
    folder = lcrec(root, index={**GOOD_INDEX, "1": ["a_1", "<b_0>"]})
    return folder, folder / "X.index.json"


def empty_interactions(root):
    folder = lcrec(root, inter={})
    return folder, folder / "X.inter.json"


def empty_index(root):
    folder = lcrec(root, index={})
    return folder, folder / "X.index.json"


def empty_presplit(root):
    folder = root / "ds"
    _write(folder / "X.index.json", GOOD_INDEX)
    for split in ("train", "valid", "test"):
        _write(folder / f"{split}.json", {"u1": []})
    return folder, folder / "train.json"


def presplit_missing_valid(root):
    folder = root / "ds"
    _write(folder / "X.index.json", GOOD_INDEX)
    _write(folder / "train.json", {"u1": [0, 1]})
    _write(folder / "test.json", {"u1": [2]})
    return folder, folder / "valid.json"


def two_indexes(root):
    folder = lcrec(root)
    _write(folder / "Y.index.json", GOOD_INDEX)
    return folder, folder


BAD_DATASETS = {
    f.__name__: f
    for f in (
        missing_folder,
        missing_index,
        unreadable_index_json,
        unreadable_inter_json,
        not_utf8,
        unknown_item,
        unequal_code_length,
        bad_code_token,
        malformed_code_token,
        empty_interactions,
        empty_index,
        empty_presplit,
        presplit_missing_valid,
        two_indexes,
    )
}
