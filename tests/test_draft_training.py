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


def test_a_block_draft_trains_from_a_chain_draft_on_the_catalogs_forced_tokens(
    tiny_target, synthetic_dir, tmp_path
):
    """``forced_inputs="block"``: the examples carry the catalog's forced tokens (as the trie walks each list);
    ``init_from`` starts from a trained draft of the same shape and target, and refuses any other."""
    import json

    import pytest

    from modeling_padrec.data import load_dataset
    from modeling_padrec.decoding import Recommender
    from modeling_padrec.draft import PadRecDraftError, load_draft
    from modeling_padrec.draft_training import META_NAME, DraftExamples, forced_flags
    from modeling_padrec.target import load_target

    cache = tmp_path / "cache"
    options = dict(depth=2, max_steps=2, max_users=12, cache_dir=str(cache), batch_size=4)
    train_draft(tiny_target, synthetic_dir, tmp_path / "chain", **options)
    out = train_draft(tiny_target, synthetic_dir, tmp_path / "block", forced_inputs="block",
                      init_from=str(tmp_path / "chain"), lr=1e-4, **options)  # fmt: skip
    block = load_draft(out)
    assert block.config.forced_inputs == "block"
    assert json.loads((out / META_NAME).read_text())["args"]["init_from"] == str(tmp_path / "chain")

    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir))
    examples = DraftExamples.load(cache / FEATURES_NAME, json.loads(_fingerprint(cache)))
    flags = forced_flags(rec.trie, examples)
    for ids, start, forced in zip(examples.ids, examples.prompt_lens, flags, strict=True):
        assert not forced[:start].any()
        for i in range(start, len(ids)):  # forced where the catalog allowed one token after the list so far
            assert bool(forced[i]) == (rec.trie.walk(ids[start:i].tolist()).num_allowed() == 1)
    assert any(f.any() for f in flags)

    with pytest.raises(PadRecDraftError, match="max_draft_steps=2, this training builds max_draft_steps=3"):
        train_draft(tiny_target, synthetic_dir, tmp_path / "x", **{**options, "depth": 3},
                    init_from=str(tmp_path / "chain"))  # fmt: skip
    with pytest.raises(PadRecDraftError, match="no padrec_draft.json"):
        train_draft(tiny_target, synthetic_dir, tmp_path / "x", init_from=str(tmp_path), **options)
    with pytest.raises(PadRecDraftError, match="forced_inputs must be one of chain, block"):
        train_draft(tiny_target, synthetic_dir, tmp_path / "x", forced_inputs="tree", **options)
    assert not (tmp_path / "x").exists()


def _fingerprint(cache) -> str:
    from safetensors import safe_open

    with safe_open(cache / FEATURES_NAME, "pt") as f:
        return f.metadata()["fingerprint"]
