"""Semantic-ID tokens: the preset tokenizer, tokens added to a Hub tokenizer, and the token map."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_padrec.data import ItemIndex, code_token
from modeling_padrec.errors import TargetError
from modeling_padrec.tokenization import (
    EOS_TOKEN,
    REC_TOKEN,
    SEP_TOKEN,
    TokenMap,
    add_rec_tokens,
    build_tokenizer,
    rec_tokens,
)

HUB_WORDS = ["<|endoftext|>", "<unk>", "hello", "world", "<", "a", "_", "1", ">"]


@pytest.fixture
def index():
    # one collision (items 0 and 2) → 3 tokens per item: 2 code levels + the disambiguation slot
    return ItemIndex.from_codes([(0, 1), (2, 0), (0, 1), (1, 3)])


def hub_tokenizer(folder, pad: bool = False):
    """A small word-level tokenizer saved like a Hub checkpoint and loaded back through AutoTokenizer."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(HUB_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"pad_token": "<unk>"} if pad else {}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>", **extra
    )
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_rec_tokens_layout(index):
    toks = rec_tokens(index)
    assert toks[:2] == [SEP_TOKEN, REC_TOKEN]
    assert len(toks) == 2 + sum(index.codebook_sizes) == 2 + 3 + 4 + 2
    assert toks[2:5] == ["<a_0>", "<a_1>", "<a_2>"] and toks[-2:] == ["<c_0>", "<c_1>"]
    assert len(set(toks)) == len(toks)


def test_build_tokenizer_round_trip(index, tmp_path):
    tok = build_tokenizer(index)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tok.get_vocab() and len(again) == len(tok) == 4 + len(rec_tokens(index))
    text = "<s> <a_0><b_1><c_1> <|sep|> <a_1> <b_3> <c_0> <|rec|> </s>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<s>", "<a_0>", "<b_1>", "<c_1>", SEP_TOKEN, "<a_1>", "<b_3>", "<c_0>", REC_TOKEN, EOS_TOKEN
    ]  # fmt: skip
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        assert getattr(again, attr) == getattr(tok, attr) is not None
    assert again.padding_side == "left"
    assert (
        TokenMap.from_tokenizer(again, index).fingerprint()
        == TokenMap.from_tokenizer(tok, index).fingerprint()
    )
    assert again.decode(ids[1:4]).split() == ["<a_0>", "<b_1>", "<c_1>"]


def test_token_map_and_slot_table(index):
    tok = build_tokenizer(index)
    tm = TokenMap.from_tokenizer(tok, index)
    assert tm.levels == 3 and tm.num_slots == 5 and tm.vocab_size == len(tok)
    assert [len(ids) for ids in tm.level_token_ids] == index.codebook_sizes
    assert tm.level_token_ids[1][3] == tok.convert_tokens_to_ids("<b_3>")
    table = tm.slot_table()
    assert table.shape == (len(tok),) and table.dtype == torch.long
    for lv in range(3):
        for c in range(index.codebook_sizes[lv]):
            assert table[tok.convert_tokens_to_ids(code_token(lv, c))] == lv
    assert table[tm.sep_id] == 3
    for other in (tm.rec_id, tm.eos_id, tm.bos_id, tm.pad_id, tok.unk_token_id):
        assert table[other] == 4
    assert torch.bincount(table).tolist() == [*index.codebook_sizes, 1, 5]
    # items → ids follows the full code, disambiguation slot included
    item_ids = tm.item_ids(index)
    assert item_ids.shape == (4, 3)
    assert tok.convert_ids_to_tokens(item_ids[2].tolist()) == ["<a_0>", "<b_1>", "<c_1>"]
    assert table[item_ids].tolist() == [[0, 1, 2]] * 4
    rec_vocab = tm.rec_vocab()
    assert rec_vocab == sorted(rec_vocab) and len(rec_vocab) == sum(index.codebook_sizes) + 2
    assert tm.sep_id in rec_vocab and tm.eos_id in rec_vocab and tm.rec_id not in rec_vocab


def test_fingerprint_follows_the_layout(index, tmp_path):
    tm = TokenMap.from_tokenizer(build_tokenizer(index), index)
    assert tm.fingerprint() == TokenMap.from_tokenizer(build_tokenizer(index), index).fingerprint()
    assert tm.fingerprint() == dataclasses.replace(tm, vocab_size=tm.vocab_size + 7).fingerprint()
    changed = [
        dataclasses.replace(tm, sep_id=tm.rec_id, rec_id=tm.sep_id),
        dataclasses.replace(tm, eos_id=tm.pad_id),
        dataclasses.replace(
            tm, level_token_ids=[tm.level_token_ids[1], tm.level_token_ids[0], tm.level_token_ids[2]]
        ),
    ]
    other_index = ItemIndex.from_codes([(0, 1), (2, 0), (0, 1), (1, 4)])  # one more code at level b
    changed.append(TokenMap.from_tokenizer(build_tokenizer(other_index), other_index))
    hub = hub_tokenizer(tmp_path)
    add_rec_tokens(hub, index)
    changed.append(TokenMap.from_tokenizer(hub, index))  # same tokens, other ids
    prints = [tm.fingerprint(), *(c.fingerprint() for c in changed)]
    assert len(set(prints)) == len(prints)


def test_token_map_rejects_a_tokenizer_without_the_codes(index):
    bigger = ItemIndex.from_codes([(0, 1), (2, 0), (0, 1), (5, 3)])
    with pytest.raises(TargetError, match="lacks 3 of the dataset's semantic-ID tokens"):
        TokenMap.from_tokenizer(build_tokenizer(index), bigger)


def test_add_rec_tokens_to_a_hub_tokenizer(index, tmp_path):
    tok = hub_tokenizer(tmp_path / "hub")
    base_len = len(tok)
    assert tok.pad_token is None and tok.bos_token is None
    ids = add_rec_tokens(tok, index)
    assert ids == list(range(base_len, base_len + len(rec_tokens(index))))
    assert tok.pad_token_id == tok.eos_token_id == 0 and tok.padding_side == "left"
    # codes written together stay whole tokens; the base vocabulary is unchanged
    enc = tok("hello <a_1><b_0><c_0> world", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(enc) == ["hello", "<a_1>", "<b_0>", "<c_0>", "world"]
    assert enc[0] == 2 and enc[-1] == 3
    # adding again adds nothing and returns the same ids
    assert add_rec_tokens(tok, index) == ids and len(tok) == base_len + len(ids)
    tm = TokenMap.from_tokenizer(tok, index)
    assert tm.bos_id is None and tm.eos_id == 0 and tm.level_token_ids[0][0] == ids[2]
    # saved and reloaded: the added tokens keep their ids
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.convert_tokens_to_ids(rec_tokens(index)) == ids
    assert TokenMap.from_tokenizer(again, index).fingerprint() == tm.fingerprint()


def test_add_rec_tokens_keeps_an_existing_pad_token(index, tmp_path):
    tok = hub_tokenizer(tmp_path, pad=True)
    add_rec_tokens(tok, index)
    assert tok.pad_token == "<unk>" and tok.pad_token_id != tok.eos_token_id
