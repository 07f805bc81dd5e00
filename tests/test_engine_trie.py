"""CatalogTrie and ListState against a brute-force oracle that reads the item list directly."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_padrec.engine.trie import CatalogTrie

EOS, SEP = 1, 2
VOCAB = 40


def oracle_allowed(items: list[tuple[int, ...]], list_len: int, generated: list[int]) -> list[int]:
    """The valid next tokens, by enumeration over every catalog item (no trie)."""
    catalog = set(items)
    levels = len(items[0])
    if EOS in generated:
        return [EOS]
    parts: list[list[int]] = [[]]
    for tok in generated:
        if tok == SEP:
            parts.append([])
        else:
            parts[-1].append(tok)
    done, current = [tuple(p) for p in parts[:-1]], tuple(parts[-1])
    if any(p not in catalog for p in done) or len(set(done)) != len(done) or len(current) > levels:
        return [EOS]
    if len(current) == levels:
        if current not in catalog or current in done:
            return [EOS]
        return [EOS] if len(done) + 1 >= min(list_len, len(catalog)) else [SEP]
    free = Counter(c[: len(current) + 1] for c in catalog if c[: len(current)] == current and c not in done)
    return sorted({p[-1] for p in free}) or [EOS]


@st.composite
def catalogs(draw, max_levels=4, max_codes=4, max_items=14):
    levels = draw(st.integers(1, max_levels))
    sizes = [draw(st.integers(1, max_codes)) for _ in range(levels)]
    code = st.tuples(*(st.integers(0, s - 1) for s in sizes))
    codes = draw(st.lists(code, min_size=1, max_size=max_items))  # repeats allowed: one leaf
    items = [tuple(3 + lv * max_codes + c for lv, c in enumerate(cd)) for cd in codes]
    return items, draw(st.integers(1, 8))


@settings(max_examples=200, deadline=None, database=None)
@given(catalog=catalogs(), picks=st.lists(st.integers(0, 10**6), max_size=40), junk=st.booleans())
def test_walk_matches_the_oracle_at_every_step(catalog, picks, junk):
    items, list_len = catalog
    trie = CatalogTrie(torch.tensor(items), SEP, EOS, list_len)
    state, generated = trie.start(), []
    for pick in picks:
        expected = oracle_allowed(items, list_len, generated)
        assert state.allowed() == expected
        assert state.num_allowed() == len(expected)
        assert state.forced() == (expected[0] if len(expected) == 1 else None)
        assert state.allowed_tensor().tolist() == expected
        # mostly valid tokens; sometimes any token, as a rejected draft would write
        tok = pick % VOCAB if junk and pick % 5 == 0 else expected[pick % len(expected)]
        state.advance(tok)
        generated.append(tok)
    assert trie.walk(generated).allowed() == oracle_allowed(items, list_len, generated)


@settings(max_examples=100, deadline=None, database=None)
@given(catalog=catalogs())
def test_forced_run_writes_exactly_the_single_choices(catalog):
    items, list_len = catalog
    trie = CatalogTrie(torch.tensor(items), SEP, EOS, list_len)
    state = trie.start()
    generated: list[int] = []
    for _ in range(200):
        before = state.copy()
        run = state.forced_run()
        for tok in run:  # every token of the run was the only valid one
            assert oracle_allowed(items, list_len, generated) == [tok]
            generated.append(tok)
            before.advance(tok)
        assert before.allowed() == state.allowed()
        if state.done:
            break
        choice = state.allowed()
        assert len(choice) > 1
        state.advance(choice[-1])
        generated.append(choice[-1])
    assert state.done and generated[-1] == EOS
    parts = [tuple(p) for p in _split(generated[:-1])]
    assert len(parts) == min(list_len, len(set(items))) and len(set(parts)) == len(parts)
    assert set(parts) <= set(items)


def _split(tokens):
    part = []
    for tok in tokens:
        if tok == SEP:
            yield part
            part = []
        else:
            part.append(tok)
    yield part


def test_tables_of_a_small_catalog():
    items = [(4, 8), (4, 9), (5, 8), (4, 8)]  # (4, 8) twice: one leaf
    trie = CatalogTrie(torch.tensor(items), SEP, EOS, list_len=3)
    assert trie.num_items == 3 and trie.items_per_list == 3 and trie.levels == 2
    assert trie.token.tolist() == [-1, 4, 5, 8, 9, 8]
    assert trie.parent.tolist() == [-1, 0, 0, 1, 1, 2]
    assert trie.num_children.tolist() == [2, 2, 1, 0, 0, 0]
    assert trie.first_child.tolist()[:3] == [1, 3, 5]
    assert trie.leaves.tolist() == [3, 2, 1, 1, 1, 1]
    assert sorted(trie.leaf_item.tolist()) in ([0, 1, 2], [1, 2, 3])
    assert trie.child(0, 5) == 2 and trie.child(0, 6) == -1 and trie.child(1, 9) == 4
    state = trie.start()
    assert state.forced() is None
    state.advance(5)
    # (5, 8) is forced after 5, then the separator, then 4 (5's only item is used)
    assert state.forced_run() == [8, SEP, 4]
    assert state.allowed() == [8, 9]
    state.advance(9)
    assert state.forced_run() == [SEP, 4, 8, EOS]  # the last unused item, then the end


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="list_len"):
        CatalogTrie(torch.tensor([[4, 8]]), SEP, EOS, list_len=0)
    with pytest.raises(ValueError, match="separator and EOS"):
        CatalogTrie(torch.tensor([[4, SEP]]), SEP, EOS, list_len=1)
    with pytest.raises(ValueError, match="non-empty"):
        CatalogTrie(torch.zeros(0, 2, dtype=torch.long), SEP, EOS, list_len=1)


def test_mask_keeps_allowed_scores_only():
    trie = CatalogTrie(torch.tensor([[4, 8], [4, 9], [5, 8]]), SEP, EOS, list_len=2)
    state = trie.walk([4, 8, SEP])
    scores = torch.randn(2, VOCAB)
    masked = state.mask(scores)
    assert torch.isfinite(masked).nonzero()[:, 1].tolist() == [4, 5, 4, 5]
    assert torch.equal(masked[:, [4, 5]], scores[:, [4, 5]])


def test_large_catalog_walk_touches_only_the_path():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (50_000, 3), generator=gen) + torch.tensor([10, 300, 600])
    codes = torch.cat([codes, torch.arange(len(codes))[:, None] % 7 + 900], dim=1)  # a disambiguation level
    trie = CatalogTrie(codes, SEP, EOS, list_len=10)
    assert trie.num_items == len({tuple(r) for r in codes.tolist()})
    state = trie.start()
    assert len(state.allowed()) == 256
    for tok in codes[123].tolist():
        state.advance(tok)
    assert state.at_leaf and state.items == 1 and state.allowed() == [SEP]
