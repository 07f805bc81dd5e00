"""Draft distillation: the cached lists and features are found again however the paths are spelled."""

import os

from modeling_padrec.draft_training import FEATURES_NAME, train_draft


def test_distillation_cache_is_reused_from_another_directory(
    tiny_target, synthetic_dir, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    options = dict(depth=2, max_steps=2, max_users=12, cache_dir=str(cache), batch_size=4)
    train_draft(tiny_target, synthetic_dir, tmp_path / "a", **options)
    built = (cache / FEATURES_NAME).stat().st_mtime_ns
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    train_draft(os.path.relpath(tiny_target), os.path.relpath(synthetic_dir), tmp_path / "b", **options)
    assert (cache / FEATURES_NAME).stat().st_mtime_ns == built  # not rebuilt
    assert (tmp_path / "a" / "model.safetensors").is_file() and (
        tmp_path / "b" / "model.safetensors"
    ).is_file()


def test_a_target_trained_again_gets_its_own_cache_and_its_drafts_say_which(
    tiny_target, synthetic_dir, tmp_path
):
    import json
    import shutil

    import pytest
    from safetensors.torch import load_file, save_file

    from modeling_padrec.draft_training import META_NAME
    from modeling_padrec.errors import PadrecError
    from modeling_padrec.study.run import _check_distilled_from
    from modeling_padrec.target import weights_digest

    target, cache = tmp_path / "target", tmp_path / "cache"
    shutil.copytree(tiny_target, target)
    options = dict(depth=2, max_steps=2, max_users=12, cache_dir=str(cache), batch_size=4)
    train_draft(target, synthetic_dir, tmp_path / "a", **options)
    first, built = weights_digest(target), (cache / FEATURES_NAME).stat().st_mtime_ns
    assert json.loads((tmp_path / "a" / META_NAME).read_text())["target_weights"] == first
    _check_distilled_from(tmp_path / "a", target, first)  # the training it was distilled from: accepted

    adapter = target / "adapter_model.safetensors"  # the same folder, other weights: "trained again"
    weights = load_file(adapter)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, adapter, metadata={"format": "pt"})
    assert weights_digest(target) != first
    train_draft(target, synthetic_dir, tmp_path / "b", **options)
    assert (cache / FEATURES_NAME).stat().st_mtime_ns != built  # the old training's features were not reused
    assert json.loads((tmp_path / "b" / META_NAME).read_text())["target_weights"] == weights_digest(target)
    with pytest.raises(
        PadrecError, match=f"distilled from another training .*weights {first}.*delete the draft"
    ):
        _check_distilled_from(tmp_path / "a", target, weights_digest(target))
