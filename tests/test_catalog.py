"""Catalog identity: a model serves the catalog it was trained on (or that catalog with items appended), and
refuses any other one of the same shape with one line naming both sides; folders made before the record are
refused until their owner records the catalog."""

from __future__ import annotations

import json
import shutil

import pytest

from modeling_padrec.catalog import CatalogError, catalog_record, check_catalog
from modeling_padrec.cli import main
from modeling_padrec.data import ItemIndex, load_dataset
from modeling_padrec.draft import new_draft
from modeling_padrec.target import load_target

CODES = [(0, 1, 2), (1, 1, 0), (2, 0, 1)]


def test_check_catalog_unit():
    record = catalog_record(ItemIndex.from_codes(CODES))
    assert record["items"] == 3 and record["levels"] == 3
    assert check_catalog(record, ItemIndex.from_codes(CODES), "m", "d") == 0
    assert check_catalog(record, ItemIndex.from_codes([*CODES, (2, 2, 2), (0, 0, 0)]), "m", "d") == 2
    with pytest.raises(CatalogError, match=r"m was trained on catalog .* \(3 items\); d is catalog .*codes"):
        check_catalog(
            record, ItemIndex.from_codes([CODES[1], CODES[0], CODES[2]]), "m", "d"
        )  # two items swapped
    with pytest.raises(CatalogError, match="fewer than the 3"):
        check_catalog(record, ItemIndex.from_codes(CODES[:2]), "m", "d")
    with pytest.raises(CatalogError, match="stamp-catalog"):
        check_catalog(None, ItemIndex.from_codes(CODES), "m", "d")
    with pytest.raises(CatalogError, match="damaged"):
        check_catalog({"items": "x"}, ItemIndex.from_codes(CODES), "m", "d")


def _copy_data(src, dst, edit):
    shutil.copytree(src, dst)
    path = next(dst.glob("*.index.json"))
    index = json.loads(path.read_text())
    path.write_text(json.dumps(edit(index)))
    return dst


def _swap_two(index):
    index["0"], index["1"] = index["1"], index["0"]
    return index


def _append_one(index):
    n = len(index)
    taken = {tuple(v) for v in index.values()}
    first = index["0"]
    for tok in {v[-1] for v in index.values()}:  # an unused code: the first item's prefix, another last code
        if (*first[:-1], tok) not in taken:
            index[str(n)] = [*first[:-1], tok]
            return index
    raise AssertionError("no free code")


def _recommend(target, data, *extra):
    return main(["recommend", "--target", str(target), "--data", str(data), "--users", "1", *map(str, extra)])


def test_another_catalog_of_the_same_shape_is_refused(tmp_path, tiny_target, synthetic_dir, capsys):
    other = _copy_data(synthetic_dir, tmp_path / "other", _swap_two)
    assert load_dataset(other).index.levels == load_dataset(synthetic_dir).index.levels  # same token layout
    assert _recommend(tiny_target, other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padrec: error: target ") and str(other) in err[0]
    assert "was trained on catalog" in err[0] and "Traceback" not in err[0]
    for command in (["evaluate"], ["bench", "--only", "ar-jf"]):
        code = main([*command, "--target", str(tiny_target), "--data", str(other), "--users", "1"])
        assert code == 2 and "was trained on catalog" in capsys.readouterr().err


def test_an_extended_catalog_passes_with_one_note(tmp_path, tiny_target, synthetic_dir, capsys):
    bigger = _copy_data(synthetic_dir, tmp_path / "bigger", _append_one)
    assert _recommend(tiny_target, bigger) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("padrec: note:")]
    assert notes == [f"padrec: note: the catalog has 1 item the target {tiny_target} never saw in training"]


def test_old_folders_are_refused_until_stamped(tmp_path, tiny_target, synthetic_dir, capsys):
    target = tmp_path / "old-target"
    shutil.copytree(tiny_target, target)
    meta_path = target / "padrec_target.json"
    meta = json.loads(meta_path.read_text())
    del meta["catalog"]
    meta_path.write_text(json.dumps(meta))
    draft_dir = tmp_path / "old-draft"
    loaded = load_target(tiny_target)
    tm = loaded.check_dataset(load_dataset(synthetic_dir))
    new_draft(loaded, tm, depth=2).save_pretrained(draft_dir)
    assert json.loads((draft_dir / "config.json").read_text())["catalog"] == loaded.meta.catalog
    config = json.loads((draft_dir / "config.json").read_text())
    del config["catalog"]
    (draft_dir / "config.json").write_text(json.dumps(config))

    assert _recommend(target, synthetic_dir) == 2
    assert "stamp-catalog" in capsys.readouterr().err
    # another catalog cannot be stamped onto a folder whose token layout differs; the same shape can, which is
    # why stamping is the owner's explicit statement
    code = main(
        ["stamp-catalog", "--target", str(target), "--data", str(synthetic_dir), "--draft", str(draft_dir)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "recorded catalog" in out and f"draft {draft_dir}" in out
    assert json.loads(meta_path.read_text())["catalog"] == loaded.meta.catalog
    assert _recommend(target, synthetic_dir, "--draft", draft_dir) == 0
    # stamping again keeps the record; a target already stamped refuses another catalog
    assert main(["stamp-catalog", "--target", str(target), "--data", str(synthetic_dir)]) == 0
    assert "kept" in capsys.readouterr().out
    other = _copy_data(synthetic_dir, tmp_path / "other", _swap_two)
    assert main(["stamp-catalog", "--target", str(target), "--data", str(other)]) == 2
    assert "was trained on catalog" in capsys.readouterr().err


def test_a_draft_of_another_catalog_is_refused(tmp_path, tiny_target, synthetic_dir, capsys):
    loaded = load_target(tiny_target)
    tm = loaded.check_dataset(load_dataset(synthetic_dir))
    draft_dir = tmp_path / "draft"
    new_draft(loaded, tm, depth=2).save_pretrained(draft_dir)
    config = json.loads((draft_dir / "config.json").read_text())
    config["catalog"] = {**config["catalog"], "fingerprint": "0123456789abcdef"}
    (draft_dir / "config.json").write_text(json.dumps(config))
    assert _recommend(tiny_target, synthetic_dir, "--draft", draft_dir) == 2
    err = capsys.readouterr().err
    assert f"draft {draft_dir} was trained on catalog 0123456789abcdef" in err
