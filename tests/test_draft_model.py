"""The draft model on its own: config, slots, forward, position signals, hookup and its errors."""

from __future__ import annotations

import pytest
import torch
from draft_world import SEP, make_world, one_thread, token_map  # noqa: F401

from modeling_padrec.configuration_padrec_draft import PadRecDraftConfig
from modeling_padrec.draft import causal_lm, draft_config, load_draft, new_draft
from modeling_padrec.modeling_padrec_draft import PadRecDraftError, PadRecDraftModel


@pytest.fixture(scope="module")
def world():
    return make_world(seed=11)


@pytest.fixture(scope="module")
def lora_world():
    return make_world(seed=12, lora=True)


def _inputs(draft, length=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor(draft.config.rec_token_ids)[
        torch.randint(len(draft.config.rec_token_ids), (1, length), generator=gen)
    ]
    feats = torch.randn(1, length, draft.config.hidden_size, generator=gen)
    return ids, feats


def _moved_draft(world, item, step, gate, seed):
    """A draft with the given signals whose every weight is moved off its init (zero gates, unit norms, ...)."""
    draft = new_draft(world.target, world.token_map, depth=3, use_item_position=item, use_step_position=step,
                      seed=seed, step_gate=gate)  # fmt: skip
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    return draft


# --------------------------------------------------------------------------- config


SIGNALS = [(True, True, "context"), (True, False, "context"), (False, True, "context"), (False, False, "context"),
           (True, True, "none"), (False, True, "none")]  # fmt: skip


def test_config_from_target_and_token_map(world):
    tm = world.token_map
    cfg = draft_config(world.target, tm, depth=6, use_item_position=False)
    base = causal_lm(world.target).config
    assert (cfg.hidden_size, cfg.vocab_size) == (base.hidden_size, base.vocab_size)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (
        base.num_attention_heads,
        base.num_key_value_heads,
    )
    assert cfg.rec_token_ids == tm.rec_vocab() and cfg.num_slots == tm.num_slots == cfg.levels + 2
    assert cfg.max_draft_steps == 6 and not cfg.use_item_position and cfg.use_step_position
    assert cfg.token_map_fingerprint == tm.fingerprint()
    assert cfg.rope_parameters["rope_theta"] == base.rope_parameters["rope_theta"]


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="one slot per id"):
        PadRecDraftConfig(vocab_size=10, rec_token_ids=[1, 2], rec_token_slots=[0])
    with pytest.raises(ValueError, match="vocab_size"):
        PadRecDraftConfig(vocab_size=10, rec_token_ids=[1, 12], rec_token_slots=[0, 1])
    with pytest.raises(ValueError, match="num_slots"):
        PadRecDraftConfig(vocab_size=10, rec_token_ids=[1], rec_token_slots=[7], num_slots=4)
    with pytest.raises(ValueError, match="max_draft_steps"):
        PadRecDraftConfig(vocab_size=10, max_draft_steps=0)
    with pytest.raises(ValueError, match="step_gate must be one of context, none"):
        PadRecDraftConfig(vocab_size=10, step_gate="low-rank")


def test_token_map_vocab_mismatch_is_refused(world):
    with pytest.raises(PadRecDraftError, match="vocabulary"):
        draft_config(world.target, token_map(levels=3, codes=3))


# --------------------------------------------------------------------------- tables and head


def test_slot_of_every_id_matches_the_token_map(world):
    draft = new_draft(world.target, world.token_map, depth=2)
    every_id = torch.arange(world.token_map.vocab_size)
    assert torch.equal(draft.slot_ids(every_id), world.token_map.slot_table())
    assert int(draft.slot_ids(torch.tensor(SEP))) == world.token_map.levels


def test_head_covers_rec_vocab_only_and_scatters_to_full_vocab(world):
    draft = new_draft(world.target, world.token_map, depth=2)
    ids, feats = _inputs(draft)
    out = draft(ids, feats)
    rec = world.token_map.rec_vocab()
    assert out.logits.shape == (1, 7, len(rec)) and out.features.shape == feats.shape
    full = draft.vocab_logits(out.logits)
    assert full.shape == (1, 7, world.token_map.vocab_size)
    outside = torch.ones(world.token_map.vocab_size, dtype=torch.bool)
    outside[rec] = False
    assert torch.isneginf(full[..., outside]).all() and torch.equal(full[..., rec], out.logits)


def test_new_draft_copies_target_rows(lora_world):
    """Embedding and head rows of the rec vocabulary come from the (PEFT-wrapped) target."""
    w = lora_world
    draft = new_draft(w.target, w.token_map, depth=3, seed=0)
    model = causal_lm(w.target)
    rec = torch.tensor(w.token_map.rec_vocab())
    with torch.no_grad():
        assert torch.allclose(draft.embed_tokens.weight[:-1], model.get_input_embeddings()(rec))
        assert torch.allclose(draft.lm_head.weight, model.lm_head.weight[rec], atol=1e-5)
    again = new_draft(w.target, w.token_map, depth=3, seed=0)
    other = new_draft(w.target, w.token_map, depth=3, seed=1)
    assert torch.equal(draft.fc.weight, again.fc.weight) and not torch.equal(draft.fc.weight, other.fc.weight)


# --------------------------------------------------------------------------- forward


def test_cached_steps_equal_one_full_pass(world):
    """Causal attention: feeding positions one by one through the cache gives the full pass's outputs."""
    from transformers import DynamicCache

    draft = new_draft(world.target, world.token_map, depth=3, seed=2)
    ids, feats = _inputs(draft, length=6, seed=1)
    full = draft(ids, feats, step_ids=torch.tensor([[0, 0, 0, 1, 2, 0]]))
    cache = DynamicCache()
    head = draft(ids[:, :3], feats[:, :3], cache=cache)
    parts = [head.features]
    for t, step in zip(range(3, 6), (1, 2, 0), strict=True):
        parts.append(draft(ids[:, t : t + 1], feats[:, t : t + 1], step_ids=step, cache=cache).features)
    assert cache.get_seq_length() == 6
    assert torch.allclose(torch.cat(parts, dim=1), full.features, atol=1e-5)


@pytest.mark.parametrize("item,step,gate", SIGNALS)
def test_decode_step_is_forward_for_one_token(lora_world, item, step, gate):
    """The one-token fast path (fused tables) computes what forward computes, with and without the head, and
    rebuilds its tables when a weight changes."""
    from transformers import DynamicCache

    draft = _moved_draft(lora_world, item, step, gate, seed=3)
    ids, feats = _inputs(draft, length=9, seed=4)
    slow, fast = DynamicCache(), DynamicCache()
    with torch.no_grad():
        draft(ids[:, :4], feats[:, :4], cache=slow)
        draft(ids[:, :4], feats[:, :4], cache=fast)
        for t in range(4, 9):
            if t == 7:  # a changed weight must reach the fast path
                draft.fc.weight.mul_(1.5)
            a = draft(ids[:, t : t + 1], feats[:, t : t + 1], step_ids=t - 3, cache=slow)
            b = draft.decode_step(ids[:, t : t + 1], feats[:, t : t + 1], t - 3, fast)
            torch.testing.assert_close(b.features, a.features, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
        assert draft.decode_step(ids[:, :1], feats[:, :1], 0, fast, compute_logits=False).logits is None
    assert slow.get_seq_length() == fast.get_seq_length() - 1 == 9


def test_eager_and_sdpa_attention_agree(world):
    """The draft builds explicit additive masks, which both attention implementations read the same way."""
    from modeling_padrec.draft_training import unroll

    draft = new_draft(world.target, world.token_map, depth=3, seed=2)
    assert draft.config._attn_implementation == "sdpa"
    ids, feats = _inputs(draft, length=6, seed=7)
    with torch.no_grad():
        sdpa = [o.features for o in unroll(draft, ids, feats, depth=3)]
        draft.set_attn_implementation("eager")
        eager = [o.features for o in unroll(draft, ids, feats, depth=3)]
    for a, b in zip(sdpa, eager, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_padding_mask_keeps_rows_independent(world):
    draft = new_draft(world.target, world.token_map, depth=3, seed=2)
    ids, feats = _inputs(draft, length=5, seed=3)
    alone = draft(ids[:, :3], feats[:, :3])
    batch_ids = torch.cat([ids, ids])
    batch_ids[0, 3:] = 0
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    both = draft(batch_ids, torch.cat([feats, feats]), attention_mask=mask)
    assert torch.allclose(both.features[0, :3], alone.features[0], atol=1e-5)


@pytest.mark.parametrize("item,step,gate", SIGNALS)
def test_position_signals_follow_the_switches(world, item, step, gate):
    draft = new_draft(world.target, world.token_map, depth=4, use_item_position=item, use_step_position=step,
                      step_gate=gate)  # fmt: skip
    names = {n.split(".")[1] for n, _ in draft.named_parameters() if n.startswith("signals.")}
    expected = ({"slot_embed", "slot_scale"} if item else set()) | (
        ({"step_embed", "step_gate"} if gate == "context" else {"step_embed"}) if step else set()
    )
    assert names == expected
    ids, feats = _inputs(draft)
    base = draft(ids, feats).features
    # the step id matters only with the step signal
    assert torch.allclose(draft(ids, feats, step_ids=2).features, base) != step
    # the slot embedding matters only with the item signal
    with torch.no_grad():
        if item:
            draft.signals.slot_embed.weight.add_(1.0)
            assert not torch.allclose(draft(ids, feats).features, base)
            draft.signals.slot_scale.zero_()
            unscaled = draft(ids, feats).features
            draft.signals.slot_embed.weight.add_(5.0)
            assert torch.allclose(draft(ids, feats).features, unscaled)  # alpha = 0 switches it off


def test_steps_beyond_the_depth_reuse_the_last_embedding(world):
    draft = new_draft(world.target, world.token_map, depth=3, use_item_position=False)
    ids, feats = _inputs(draft)
    assert torch.allclose(draft(ids, feats, step_ids=7).features, draft(ids, feats, step_ids=2).features)


# --------------------------------------------------------------------------- hookup and errors


def _hooks(world) -> tuple[int, int, bool]:
    decoder = causal_lm(world.target).get_decoder()
    count = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in world.target.modules())
    return count, len(decoder._forward_hooks), "generate" in world.target.__dict__


def test_attach_then_detach_removes_every_hook(world):
    before = _hooks(world)
    draft = new_draft(world.target, world.token_map, depth=2)
    own = list(draft.state_dict())
    draft.attach(world.target, world.token_map)
    assert list(draft.state_dict()) == own  # the target never becomes part of the draft
    attached = _hooks(world)
    assert attached[0] == before[0] + 1 and attached[1] == before[1] + 1 and attached[2]
    draft.attach(world.target)  # attaching twice does not stack hooks
    assert _hooks(world) == attached
    draft.detach()
    assert _hooks(world) == before and not draft.is_attached
    draft.detach()  # idempotent


def test_generate_before_attach_is_a_clear_error(world):
    draft = new_draft(world.target, world.token_map, depth=2)
    with pytest.raises(PadRecDraftError, match=r"draft\.attach\(target\)"):
        world.generate(world.prompt([0]), draft, max_new_tokens=4)


def test_draft_generate_alone_is_refused(world):
    draft = new_draft(world.target, world.token_map, depth=2).attach(world.target)
    try:
        with pytest.raises(PadRecDraftError, match="assistant_model"):
            draft.generate(world.prompt([0]), max_new_tokens=3)
    finally:
        draft.detach()


def test_draft_attached_to_another_model_fails_clearly(world):
    other = make_world(seed=13)
    draft = new_draft(world.target, world.token_map, depth=2).attach(other.target)
    try:
        with pytest.raises(PadRecDraftError, match="no target features"):
            world.generate(world.prompt([0, 1]), draft, max_new_tokens=6)
    finally:
        draft.detach()


def test_hidden_and_vocab_mismatch(world):
    draft = new_draft(world.target, world.token_map, depth=2)
    wider = make_world(seed=11, hidden=48)
    with pytest.raises(PadRecDraftError, match="hidden_size=32.*hidden_size=48"):
        draft.attach(wider.target)
    bigger = make_world(seed=11, codes=4)
    with pytest.raises(PadRecDraftError, match="vocab_size"):
        draft.attach(bigger.target)
    assert not draft.is_attached


def test_token_map_fingerprint_mismatch(world):
    draft = new_draft(world.target, world.token_map, depth=2)
    draft.check_token_map(world.token_map)
    shuffled = token_map()
    shuffled.level_token_ids = [list(reversed(ids)) for ids in shuffled.level_token_ids]
    with pytest.raises(PadRecDraftError, match="token layout"):
        draft.check_token_map(shuffled)
    with pytest.raises(PadRecDraftError, match="token layout"):
        draft.attach(world.target, shuffled)
    assert not draft.is_attached


# --------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(world, tmp_path):
    draft = new_draft(world.target, world.token_map, depth=4, use_step_position=False, seed=5)
    draft.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert {"configuration_padrec_draft.py", "modeling_padrec_draft.py"} <= names
    loaded = load_draft(tmp_path, world.token_map)
    assert isinstance(loaded, PadRecDraftModel)
    settings = {k: v for k, v in draft.config.to_dict().items() if k != "_name_or_path"}
    assert settings == {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"}
    for (name, a), (_, b) in zip(draft.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.generation_config.num_assistant_tokens == 4
    assert loaded.generation_config.num_assistant_tokens_schedule == "constant"
    with pytest.raises(PadRecDraftError, match="no such draft directory"):
        load_draft(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PadRecDraftError, match="not a saved"):
        load_draft(tmp_path / "empty")


# --------------------------------------------------------------------------- training-time test


def test_training_unroll_is_what_drafting_computes(world):
    """Unrolled step k at position t equals drafting: true context up to t - k, then k steps on own features."""
    from transformers import DynamicCache

    from modeling_padrec.draft_training import unroll

    draft = new_draft(world.target, world.token_map, depth=3, seed=4)
    with torch.no_grad():
        draft.signals.step_embed.weight.normal_()  # make the step id matter
        ids, feats = _inputs(draft, length=8, seed=5)
        outs = unroll(draft, ids, feats, depth=3)
        for k in range(3):
            for t in range(k, 7):
                cache = DynamicCache()
                o = draft(ids[:, 1 : t - k + 2], feats[:, : t - k + 1], step_ids=0, cache=cache)
                for j in range(1, k + 1):
                    nxt = ids[:, t - k + j + 1 : t - k + j + 2]
                    o = draft(nxt, o.features[:, -1:], step_ids=j, cache=cache)
                assert torch.allclose(o.features[:, -1], outs[k].features[:, t], atol=1e-5), (k, t)
                assert torch.allclose(o.logits[:, -1], outs[k].logits[:, t], atol=1e-5), (k, t)


def test_block_draft_unroll_is_what_block_drafting_computes(world):
    """A draft with ``forced_inputs="block"``: unrolled step k at position t equals drafting where a forced token
    at draft step >= 2 reads the feature the token before it read (its run's), and any other the feature the step
    before predicted; the engine's one forward over a run equals those steps."""
    from transformers import DynamicCache

    from modeling_padrec.draft_training import unroll

    draft = new_draft(world.target, world.token_map, depth=4, seed=4, forced_inputs="block")
    assert draft.config.forced_inputs == "block"
    with torch.no_grad():
        draft.signals.step_embed.weight.normal_()
        ids, feats = _inputs(draft, length=10, seed=7)
        forced = torch.tensor([[False, False, True, True, False, True, False, True, True, True]])
        with pytest.raises(ValueError, match="forced-token flags"):
            unroll(draft, ids, feats, depth=4)
        outs = unroll(draft, ids, feats, depth=4, forced=forced)
        chain = unroll(new_draft(world.target, world.token_map, depth=4, seed=4), ids, feats, depth=4)
        assert not torch.allclose(outs[3].features, chain[3].features)  # the rule changes what is computed
        for k in range(4):
            for t in range(k, 9):
                cache = DynamicCache()
                o = draft(ids[:, 1 : t - k + 2], feats[:, : t - k + 1], step_ids=0, cache=cache)
                read = None
                for j in range(1, k + 1):
                    e = t - k + j  # entry e carries token e + 1
                    read = read if j >= 2 and forced[0, e + 1] else o.features[:, -1:]
                    o = draft(ids[:, e + 1 : e + 2], read, step_ids=j, cache=cache)
                torch.testing.assert_close(o.features[:, -1], outs[k].features[:, t], atol=1e-5, rtol=1e-4)
        # entries 5..7 (tokens 6: a choice, 7 and 8: forced) as one run: one forward, all on one feature
        cache, run = DynamicCache(), DynamicCache()
        o = draft(ids[:, 1:6], feats[:, :5], step_ids=0, cache=cache)
        draft(ids[:, 1:6], feats[:, :5], step_ids=0, cache=run)
        first = o.features[:, -1:]
        for j, e in enumerate(range(5, 8), start=1):
            o = draft(ids[:, e + 1 : e + 2], first, step_ids=j, cache=cache)
        fused = draft.decode_step(ids[:, 6:9], first.expand(1, 3, -1), torch.tensor([[1, 2, 3]]), run,
                                  compute_logits=False)  # fmt: skip
        torch.testing.assert_close(fused.features[:, -1], o.features[:, -1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "item,step,gate", [(True, True, "context"), (False, False, "context"), (True, True, "none")]
)
def test_decode_step_for_tree_nodes_is_forward_under_the_same_mask(lora_world, item, step, gate):
    """Several tokens at once (one level of a draft tree): own positions, own steps, a boolean tree mask."""
    from transformers import DynamicCache

    draft = _moved_draft(lora_world, item, step, gate, seed=5)
    ids, feats = _inputs(draft, length=9, seed=6)
    slow, fast = DynamicCache(), DynamicCache()
    mask = torch.ones(1, 1, 3, 7, dtype=torch.bool)
    mask[..., 4:] = torch.tensor([[True, False, False], [True, True, False], [False, False, True]])
    positions = torch.tensor([[4, 5, 4]])
    steps = torch.tensor([[1, 2, 1]])
    with torch.no_grad():
        draft(ids[:, :4], feats[:, :4], cache=slow)
        draft(ids[:, :4], feats[:, :4], cache=fast)
        a = draft(
            ids[:, 4:7],
            feats[:, 4:7],
            step_ids=steps,
            position_ids=positions,
            attention_mask=mask,
            cache=slow,
        )
        b = draft.decode_step(
            ids[:, 4:7], feats[:, 4:7], steps, fast, position_ids=positions, attention_mask=mask
        )
    torch.testing.assert_close(b.features, a.features, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    assert fast.get_seq_length() == 7


@pytest.mark.parametrize("item,step,gate", SIGNALS)
def test_decode_step_catches_up_on_positions_that_continue_the_cache(lora_world, item, step, gate):
    """Several new positions continuing the cache (a chain's catch-up on the verified positions), without position
    ids, under a causal mask given or left to decode_step, compute what forward computes; the head read by rows gives those rows of the
    full head, in the order asked."""
    from transformers import DynamicCache

    draft = _moved_draft(lora_world, item, step, gate, seed=7)
    ids, feats = _inputs(draft, length=9, seed=8)
    slow, fast = DynamicCache(), DynamicCache()
    keys = torch.arange(9)
    causal = (keys[None, :] <= keys[5:, None])[None, None]
    with torch.no_grad():
        draft(ids[:, :5], feats[:, :5], cache=slow)
        draft(ids[:, :5], feats[:, :5], cache=fast)
        a = draft(ids[:, 5:], feats[:, 5:], cache=slow)
        b = draft.decode_step(ids[:, 5:], feats[:, 5:], 0, fast, attention_mask=causal)
        fast.crop(-4)  # the same positions again, with the causal mask left to decode_step
        c = draft.decode_step(ids[:, 5:], feats[:, 5:], 0, fast)
        rows = torch.tensor([4, 0, 2, len(draft.config.rec_token_ids) - 1])
        picked = draft.head_logits(b.features, rows)
    torch.testing.assert_close(b.features, a.features, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(picked, b.logits[..., rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.features, b.features, atol=1e-6, rtol=1e-6)
    assert fast.get_seq_length() == 9
