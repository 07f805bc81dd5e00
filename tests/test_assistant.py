"""The small-LM assistant (vanilla speculative decoding baseline): distillation, folder, loading, errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_padrec.assistant import AssistantError, load_assistant, new_assistant, train_assistant
from modeling_padrec.data import load_dataset
from modeling_padrec.decoding import Recommender
from modeling_padrec.target import load_target


@pytest.fixture(scope="module")
def assistant_dir(tmp_path_factory, tiny_target, synthetic_dir):
    out = tmp_path_factory.mktemp("assistants") / "small-lm"
    return train_assistant(tiny_target, synthetic_dir, out, layers=1, depth=4, max_steps=30, max_users=100)


def test_folder_is_a_plain_transformers_model_with_its_draft_length(assistant_dir):
    files = {p.name for p in assistant_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "padrec_assistant.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    model = AutoModelForCausalLM.from_pretrained(assistant_dir)
    assert model.config.num_hidden_layers == 1
    assert model.generation_config.num_assistant_tokens == 4
    assert model.generation_config.num_assistant_tokens_schedule == "constant"
    meta = json.loads((assistant_dir / "padrec_assistant.json").read_text())
    assert meta["args"]["max_steps"] == 30 and meta["examples"] > 0
    assert (assistant_dir / "train_log.jsonl").is_file()
    assert not list(assistant_dir.parent.glob("*.work"))  # the feature cache is cleaned up


def test_new_assistant_starts_from_the_targets_embeddings_and_head(tiny_target):
    target = load_target(tiny_target)
    assistant = new_assistant(target, layers=2, seed=0)
    base = target.model.get_base_model()
    ids = torch.arange(base.config.vocab_size)
    assert assistant.config.num_hidden_layers == 2
    torch.testing.assert_close(assistant.get_input_embeddings()(ids), base.get_input_embeddings()(ids))
    h = torch.randn(3, base.config.hidden_size)
    torch.testing.assert_close(assistant.lm_head(h), base.get_output_embeddings()(h), atol=1e-5, rtol=1e-5)


def test_assisted_lists_equal_plain_greedy(assistant_dir, tiny_target, synthetic_dir):
    target = load_target(tiny_target)
    rec = Recommender(target, load_dataset(synthetic_dir))
    assistant = load_assistant(assistant_dir, rec.token_map)
    plain_forwards = assisted_forwards = 0
    for user in rec.dataset.eval_users("test")[:10]:
        plain = rec.recommend(user)
        assisted = rec.recommend(user, assistant_model=assistant)
        assert assisted.output_ids == plain.output_ids
        plain_forwards += plain.target_forwards
        assisted_forwards += assisted.target_forwards
    assert assisted_forwards < plain_forwards  # the distilled assistant gets tokens accepted


def test_load_errors_name_the_folder(tmp_path, assistant_dir, tiny_target, synthetic_dir):
    with pytest.raises(AssistantError, match="not a padrec assistant folder"):
        load_assistant(tmp_path)

    class OtherLayout:
        def fingerprint(self):
            return "0000"

    with pytest.raises(AssistantError, match="another token layout"):
        load_assistant(assistant_dir, OtherLayout())
