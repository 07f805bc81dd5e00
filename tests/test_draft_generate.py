"""The draft inside ``target.generate(..., assistant_model=draft)``: lossless, fewer target forwards, sampling."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from draft_world import EOS, agreeing_draft, make_world, one_thread, perturbed  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chi2_contingency, chisquare

from modeling_padrec.decoding import ForwardCounter
from modeling_padrec.draft import new_draft

FLAGS = [(True, True), (False, False), (True, False), (False, True)]


@pytest.fixture(scope="module")
def worlds():
    return {
        "plain": make_world(seed=3),
        "lora": make_world(seed=4, lora=True),
        "bigram": make_world(seed=5, bigram=True),
    }


_drafts: dict = {}


def _draft(worlds, world: str, kind: str, depth: int, flags: tuple[bool, bool]):
    key = (world, kind, depth, flags)
    if key not in _drafts:
        w = worlds[world]
        item, step = flags
        if kind == "agreeing":
            d = agreeing_draft(w, depth, use_item_position=item, use_step_position=step)
        else:
            forced_inputs = "block" if kind == "block" else "chain"
            d = new_draft(w.target, w.token_map, depth, item, step, seed=depth, forced_inputs=forced_inputs)
            if kind in ("perturbed", "block"):
                d = perturbed(d, seed=depth)
        _drafts[key] = d
    return _drafts[key]


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    world=st.sampled_from(["plain", "lora", "bigram"]),
    kind=st.sampled_from(["untrained", "perturbed", "agreeing", "block"]),
    depth=st.integers(1, 8),
    flags=st.sampled_from(FLAGS),
    history=st.lists(st.integers(0, 6), max_size=4),
    max_new_tokens=st.integers(1, 14),
    constrained=st.booleans(),
)
def test_assisted_greedy_equals_plain_greedy(
    worlds, world, kind, depth, flags, history, max_new_tokens, constrained
):
    """Whatever the draft proposes, the output is the target's own greedy output, token for token."""
    if kind == "agreeing":
        world = "bigram"  # the agreeing draft copies a bigram target
    w = worlds[world]
    draft = _draft(worlds, world, kind, depth, flags).attach(w.target)
    try:
        prompt = w.prompt([i % len(w.items) for i in history])
        plain = w.generate(prompt, constrained=constrained, max_new_tokens=max_new_tokens)
        assisted = w.generate(prompt, draft, constrained=constrained, max_new_tokens=max_new_tokens)
    finally:
        draft.detach()
    assert assisted == plain


def test_a_block_draft_reads_a_forced_token_on_its_runs_feature(worlds):
    """Stock ``generate`` with a ``forced_inputs="block"`` draft: a drafted token the catalog forces, after the
    round's first, reads the feature the token before it read; any other reads the feature just predicted."""
    w = worlds["plain"]
    draft = perturbed(new_draft(w.target, w.token_map, 6, seed=2, forced_inputs="block"), seed=2)
    calls, fused = [], draft.decode_step

    def spy(input_ids, target_features, step, cache, **kwargs):
        out = fused(input_ids, target_features, step, cache, **kwargs)
        calls.append((int(input_ids[0, -1]), step, target_features.clone(), out.features[:, -1:].clone()))
        return out

    draft.decode_step = spy
    draft.attach(w.target)
    try:
        prompt = w.prompt([0, 1])
        assert w.generate(prompt, draft, max_new_tokens=40) == w.generate(prompt, max_new_tokens=40)
    finally:
        draft.detach()
    sep, forced_seen = w.token_map.sep_id, 0
    for (_, before, read_before, predicted), (token, step, read, _) in itertools.pairwise(calls):
        if not isinstance(step, int) or step < 1 or before != step - 1:
            continue  # a round's catch-up over the verified positions
        if step == 1:  # a round's first drafted token reads the catch-up's prediction
            torch.testing.assert_close(read, predicted)
        elif token == sep:  # after an item's last code the separator is always forced: its run's feature
            torch.testing.assert_close(read, read_before)
            forced_seen += 1
    assert forced_seen


def _spy_rounds(draft) -> list[list[int]]:
    """Record the tokens the draft proposes in every round (by wrapping its ``generate``)."""
    rounds: list[list[int]] = []
    original = draft.generate

    def generate(input_ids=None, **kwargs):
        out = original(input_ids=input_ids, **kwargs)
        rounds.append(out.sequences[0, input_ids.shape[1] :].tolist())
        return out

    draft.generate = generate
    return rounds


def test_eos_inside_a_drafted_run_and_rounds_cut_short(worlds):
    w = worlds["bigram"]
    draft = agreeing_draft(w, depth=8).attach(w.target)
    rounds = _spy_rounds(draft)
    prompt = w.prompt([0, 3])
    try:
        plain = w.generate(prompt, max_new_tokens=20)
        assisted = w.generate(prompt, draft, max_new_tokens=20)
        assert assisted == plain and assisted[-1] == EOS and len(assisted) == 3 * 3
        # EOS was proposed by the draft (not the target's bonus token), with more depth left in the round
        assert any(EOS in r and len(r) < 8 for r in rounds[1:])
        rounds.clear()
        for n in (2, 4, 5, 7):
            assert w.generate(prompt, draft, max_new_tokens=n) == plain[:n]
        assert max(len(r) for r in rounds) < 8  # the length budget, not the depth, ended those rounds
    finally:
        draft.detach()


@pytest.mark.parametrize("world", ["plain", "bigram"])
def test_rollback_of_the_cache_between_rounds_removes_nothing(worlds, world):
    """Assisted generation crops the assistant's cache before each round to drop rejected drafts; transformers
    5.25 sizes that crop from the drafted sequence rather than the cache. The draft's cache holds verified
    positions only between rounds, so whatever the crop asks, the next round starts from all of them."""
    from modeling_padrec.modeling_padrec_draft import PadRecDraftCache

    w = worlds[world]
    draft = _mixed_draft(w) if world == "bigram" else new_draft(w.target, w.token_map, depth=3, seed=9)
    draft.attach(w.target)
    original, held = draft.generate, []

    def generate(input_ids=None, cache=None, **kwargs):
        if isinstance(cache, PadRecDraftCache):  # a later round: roll back more than the drafted tokens
            before = cache.get_seq_length()
            cache.crop(-min(before, 4))
            held.append((before, cache.get_seq_length(), input_ids.shape[1]))
        return original(input_ids=input_ids, cache=cache, **kwargs)

    draft.generate = generate
    prompt = w.prompt([2, 0, 5])
    try:
        plain = w.generate(prompt, max_new_tokens=12)
        assisted = w.generate(prompt, draft, max_new_tokens=12)
    finally:
        draft.detach()
    assert assisted == plain
    assert len(held) >= 2
    for before, after, length in held:
        assert after == before and before < length  # nothing removed; every held position is before the end


def test_agreeing_draft_needs_fewer_target_forwards(worlds):
    w = worlds["bigram"]
    draft = agreeing_draft(w, depth=4).attach(w.target, w.token_map)
    prompt = w.prompt([1, 2, 4])
    try:
        with ForwardCounter(w.target) as ar:
            plain = w.generate(prompt, max_new_tokens=20)
        draft.stats.reset()
        with ForwardCounter(w.target) as sd:
            assisted = w.generate(prompt, draft, max_new_tokens=20)
    finally:
        draft.detach()
    assert assisted == plain
    assert ar.count == len(plain) == 9
    assert sd.count <= 4, sd.count  # blind round + ceil(9 / (4 + 1)) + slack for the first item
    stats = draft.stats.summary()
    assert stats["rounds"] + stats["blind_rounds"] == sd.count
    assert all(a == 1.0 for a in stats["acceptance_by_step"]), stats
    assert stats["accepted"] + stats["blind_accepted"] + sd.count >= len(assisted)


def _mixed_draft(w):
    """An agreeing draft, perturbed: on the bigram world it gets some rounds fully, some partly, some not."""
    return perturbed(agreeing_draft(w, 3), scale=1.0, seed=1)


@pytest.mark.parametrize("world", ["plain", "lora", "bigram"])
def test_draft_reads_target_features_of_accepted_positions(worlds, world):
    """Every round, the draft pairs f_t (the target's last hidden state at t, on the kept sequence) with x_{t+1}."""
    from modeling_padrec.draft import target_features

    w = worlds[world]
    draft = _mixed_draft(w) if world == "bigram" else new_draft(w.target, w.token_map, depth=3, seed=9)
    draft.attach(w.target)
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    forward = draft.forward

    def spy(input_ids, target_features, step_ids=None, cache=None, **kwargs):
        if cache is not None and step_ids == 0:  # a round's first pass: features captured from the target
            calls.append((cache.get_seq_length(), input_ids.clone(), target_features.clone()))
        return forward(input_ids, target_features, step_ids=step_ids, cache=cache, **kwargs)

    fused = draft.decode_step  # rounds after the first read their features through the fast path

    def spy_step(input_ids, target_features, step, cache, **kwargs):
        if isinstance(step, int) and step == 0:
            calls.append((cache.get_seq_length(), input_ids.clone(), target_features.clone()))
        return fused(input_ids, target_features, step, cache, **kwargs)

    draft.forward, draft.decode_step = spy, spy_step
    prompt = w.prompt([2, 0, 5])
    try:
        out = w.generate(prompt, draft, max_new_tokens=12, constrained=world == "bigram")
    finally:
        draft.detach()
    if world == "bigram":
        # some drafts were kept, so later rounds start further on
        assert {a for _, a in draft.stats.rounds} > {0}
    sequence = torch.cat([prompt, torch.tensor([out])], dim=1)
    with torch.no_grad():
        truth = target_features(w.target, sequence)
    assert len(calls) >= 3 and calls[0][0] == 0  # the prompt's features arrive in one piece after the prefill
    covered = 0
    for past, ids, feats in calls:
        n = ids.shape[1]
        assert past == covered and n >= 1  # no position skipped, read twice, or left out of a round
        assert torch.equal(ids, sequence[:, past + 1 : past + 1 + n])
        assert torch.allclose(feats, truth[:, past : past + n], atol=1e-4)
        covered = past + n


def test_stats_match_what_the_target_kept(worlds):
    """Per-round accepted lengths equal the drafted prefix found in the output; tokens = accepted + forwards."""
    w = worlds["bigram"]
    draft = _mixed_draft(w).attach(w.target)
    rounds = _spy_rounds(draft)
    starts: list[int] = []
    spied = draft.generate

    def generate(input_ids=None, **kwargs):
        starts.append(input_ids.shape[1])
        return spied(input_ids=input_ids, **kwargs)

    draft.generate = generate
    prompt = w.prompt([2, 0, 5])
    try:
        with ForwardCounter(w.target) as sd:
            out = w.generate(prompt, draft, max_new_tokens=12)
    finally:
        draft.detach()
    sequence = prompt[0].tolist() + out
    expected = []
    for start, drafted in zip(starts, rounds, strict=True):
        kept = sequence[start : start + len(drafted)]
        n = next(
            (i for i, (a, b) in enumerate(zip(drafted, kept, strict=False)) if a != b),
            min(len(drafted), len(kept)),
        )
        expected.append((len(drafted), n))
    stats = draft.stats.summary()
    assert draft.stats.rounds == expected[1:] and stats["blind_accepted"] == expected[0][1]
    assert {a for _, a in expected} >= {0, 1, 3}  # rejected, partly and fully accepted rounds
    assert stats["rounds"] + stats["blind_rounds"] == len(rounds)
    # one token short of max_length, generate skips the draft: such a last forward has no round
    assert sd.count - len(rounds) in (0, 1)
    # every target forward yields its accepted drafts plus one token, unless a drafted EOS ended the list
    eos_drafted = out[-1] == EOS and rounds[-1][-1] == EOS and expected[-1][1] == len(rounds[-1])
    assert stats["accepted"] + stats["blind_accepted"] + sd.count - eos_drafted == len(out)
    by_step = [
        sum(a > k for _, a in expected[1:]) / sum(a >= k for d, a in expected[1:] if d > k) for k in range(3)
    ]
    assert stats["acceptance_by_step"] == pytest.approx(by_step)
    assert len(stats["draft_ms_by_step"]) == 3
    draft.stats.reset()
    assert draft.stats.summary()["rounds"] == 0


def test_trained_draft_needs_fewer_forwards(tiny_target, synthetic_dir, tmp_path):
    """A few dozen self-distillation steps: identical lists, far fewer target forwards than AR or untrained."""
    import json

    from modeling_padrec.data import load_dataset
    from modeling_padrec.decoding import Recommender
    from modeling_padrec.draft import load_draft
    from modeling_padrec.draft_training import train_draft
    from modeling_padrec.target import load_target

    out = train_draft(
        tiny_target, synthetic_dir, tmp_path / "draft", depth=4, max_steps=60, seed=0, max_users=150
    )
    assert {"config.json", "model.safetensors", "modeling_padrec_draft.py", "padrec_draft.json"} <= {
        p.name for p in out.iterdir()
    }
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    assert not out.with_name("draft.work").exists()

    target = load_target(tiny_target)
    rec = Recommender(target, load_dataset(synthetic_dir))
    trained = load_draft(out, rec.token_map)
    untrained = new_draft(target, rec.token_map, depth=4, seed=0)
    forwards = Counter()
    for user in rec.dataset.eval_users("test")[:8]:
        plain = rec.recommend(user)
        forwards["ar"] += plain.target_forwards
        for name, draft in (("trained", trained), ("untrained", untrained)):
            draft.attach(target.model, rec.token_map)
            try:
                got = rec.recommend(user, assistant_model=draft)
            finally:
                draft.detach()
            assert got.output_ids == plain.output_ids
            forwards[name] += got.target_forwards
    assert forwards["trained"] < 0.6 * forwards["ar"], forwards
    assert forwards["trained"] < forwards["untrained"], forwards


# --------------------------------------------------------------------------- speculative sampling


TEMPERATURE = 0.8


def _sample(w, prompt, draft, n: int, seed: int, max_new_tokens: int) -> list[list[int]]:
    torch.manual_seed(seed)
    # temperature and top-k warpers are part of the processors both the target and the draft apply
    kwargs = dict(do_sample=True, temperature=TEMPERATURE, top_k=5, max_new_tokens=max_new_tokens)
    return [w.generate(prompt, draft, **kwargs) for _ in range(n)]


def test_speculative_sampling_matches_plain_sampling():
    """First-item distributions with and without the (untrained, so very different) draft are the same."""
    w = make_world(seed=6, sharpness=2.0)
    prompt = w.prompt([0, 2])
    draft = perturbed(new_draft(w.target, w.token_map, depth=3, seed=1), scale=2.0, seed=1).attach(w.target)
    first_round_q: list[torch.Tensor] = []
    original = draft.generate

    def spy(input_ids=None, **kwargs):
        out = original(input_ids=input_ids, **kwargs)
        if input_ids.shape[1] == prompt.shape[1]:
            first_round_q.append(out.scores[0][0].softmax(-1))
        return out

    draft.generate = spy
    n = 400
    try:
        assisted = _sample(w, prompt, draft, n, seed=0, max_new_tokens=4)
    finally:
        draft.detach()
    plain = _sample(w, prompt, None, n, seed=1, max_new_tokens=4)

    # exact target distribution of the first token, under the constraint
    with torch.no_grad():
        logits = w.target(prompt).logits[:, -1].float()
    p = (w.constraint()(prompt, logits) / TEMPERATURE).softmax(-1)[0]  # <= 3 first codes: top-5 keeps all
    q = first_round_q[0]
    support = torch.nonzero(p > 0).flatten().tolist()
    assert abs(p - q).sum() / 2 > 0.2  # the blind draft's q is far from p: accepting it blindly would show

    def counts(samples, key, cats):
        c = Counter(key(s) for s in samples)
        return np.array([c[x] for x in cats])

    expected = p[support].double().numpy()
    expected = n * expected / expected.sum()
    first = counts(assisted, lambda s: s[0], support)
    assert chisquare(first, expected).pvalue > 1e-3
    wrong = counts([[int(torch.multinomial(q, 1))] for _ in range(n)], lambda s: s[0], support)
    assert chisquare(wrong, expected).pvalue < 1e-3  # the test has the power to notice

    items = sorted({tuple(s[:2]) for s in assisted + plain})
    table = np.stack(
        [counts(assisted, lambda s: tuple(s[:2]), items), counts(plain, lambda s: tuple(s[:2]), items)]
    )
    table = table[:, table.sum(0) >= 10]  # chi-square needs expected counts that are not tiny
    assert table.shape[1] >= 3
    assert chi2_contingency(table).pvalue > 1e-3
    # second item's first code: drafted with real target features
    codes = sorted({s[3] for s in assisted + plain})
    table = np.stack([counts(assisted, lambda s: s[3], codes), counts(plain, lambda s: s[3], codes)])
    table = table[:, table.sum(0) >= 10]
    assert chi2_contingency(table).pvalue > 1e-3


def test_sampling_drafts_are_valid_items():
    """With the catalog constraint, every drafted token continues a valid list (never a repeat or non-item)."""
    w = make_world(seed=7, sharpness=2.0)
    constraint = w.constraint()
    draft = new_draft(w.target, w.token_map, depth=5, seed=3).attach(w.target)
    rounds = _spy_rounds(draft)
    starts: list[list[int]] = []
    original = draft.generate

    def generate(input_ids=None, **kwargs):
        starts.append(input_ids[0].tolist())
        return original(input_ids=input_ids, **kwargs)

    draft.generate = generate
    try:
        torch.manual_seed(0)
        for history in itertools.islice(itertools.permutations(range(len(w.items)), 2), 6):
            w.generate(w.prompt(list(history)), draft, do_sample=True, max_new_tokens=12)
    finally:
        draft.detach()
    assert len(rounds) == len(starts) > 6
    for before, drafted in zip(starts, rounds, strict=True):
        generated = before[before.index(5) + 1 :]  # after <|rec|>
        for tok in drafted:
            assert tok in constraint.allowed(generated)
            generated.append(tok)
