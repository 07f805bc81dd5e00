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
