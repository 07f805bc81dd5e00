"""A tiny synthetic world for the draft tests: token layout, catalog, random Qwen2 targets (plain or LoRA).

Vocabulary: ``<pad> <unk> <s> </s> <|sep|> <|rec|>`` then ``levels * codes`` code tokens. Targets are random,
with the LM head scaled up so greedy choices are far from ties (assisted and plain decoding compute the same
logits through different kernels; a near-tie could flip an argmax by float noise, which is not what these tests
are about).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

from modeling_padrec.constraint import CatalogListConstraint
from modeling_padrec.tokenization import TokenMap

PAD, UNK, BOS, EOS, SEP, REC = range(6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread is several times faster than contended threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class World:
    token_map: TokenMap
    items: list[tuple[int, ...]]
    target: torch.nn.Module
    list_len: int

    def constraint(self) -> CatalogListConstraint:
        return CatalogListConstraint(torch.tensor(self.items), SEP, EOS, REC, self.list_len)

    def prompt(self, item_indices: list[int]) -> torch.LongTensor:
        ids = [BOS]
        for k, i in enumerate(item_indices):
            ids += ([SEP] if k else []) + list(self.items[i])
        return torch.tensor([ids + [REC]])

    def generate(self, prompt, draft=None, constrained=True, **kwargs) -> list[int]:
        """Greedy (unless told otherwise) ``generate`` of the target, with ``draft`` as assistant if given."""
        kwargs.setdefault("do_sample", False)
        processors = LogitsProcessorList([self.constraint()] if constrained else [])
        extra = {"assistant_model": draft} if draft is not None else {}
        with torch.no_grad():
            out = self.target.generate(
                prompt, logits_processor=processors, pad_token_id=PAD, eos_token_id=EOS, **extra, **kwargs
            )
        return out[0, prompt.shape[1] :].tolist()


def token_map(levels: int = 2, codes: int = 3) -> TokenMap:
    level_ids = [[6 + lv * codes + c for c in range(codes)] for lv in range(levels)]
    return TokenMap(
        levels=levels,
        level_token_ids=level_ids,
        sep_id=SEP,
        rec_id=REC,
        eos_id=EOS,
        bos_id=BOS,
        pad_id=PAD,
        vocab_size=6 + levels * codes,
    )


def make_world(
    levels: int = 2,
    codes: int = 3,
    num_items: int = 7,
    list_len: int = 3,
    hidden: int = 32,
    sharpness: float = 20.0,
    lora: bool = False,
    bigram: bool = False,
    seed: int = 0,
) -> World:
    """A random target over a random catalog. ``bigram``: attention and MLP outputs zeroed, so the next token
    depends on the current token only (a draft can then copy the target exactly)."""
    tm = token_map(levels, codes)
    rng = random.Random(seed)
    all_codes = [(a, b) for a in range(codes) for b in range(codes)] if levels == 2 else None
    chosen = (
        rng.sample(all_codes, num_items)
        if all_codes
        else [tuple(rng.randrange(codes) for _ in range(levels)) for _ in range(num_items)]
    )
    items = sorted({tuple(tm.level_token_ids[lv][c] for lv, c in enumerate(code)) for code in chosen})
    config = Qwen2Config(
        vocab_size=tm.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    torch.manual_seed(seed)
    target = Qwen2ForCausalLM(config)
    with torch.no_grad():
        target.lm_head.weight.mul_(sharpness)
        if bigram:
            for layer in target.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    target.generation_config.do_sample = False
    if lora:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
        )
        target = get_peft_model(target, lora_config)
    return World(tm, items, target.eval(), list_len)


@torch.no_grad()
def agreeing_draft(world: World, depth: int, **flags):
    """A draft that copies a ``bigram`` target: token embedding → identity layer → the target's norm and head.

    Its logits over the rec vocabulary equal the target's, so under the catalog constraint (which only allows
    rec tokens) every drafted token is the target's own greedy choice.
    """
    from modeling_padrec.draft import causal_lm, new_draft

    draft = new_draft(world.target, world.token_map, depth=depth, **flags)
    hidden = draft.config.hidden_size
    draft.fc.weight.zero_()
    draft.fc.weight[:, hidden:] = torch.eye(hidden)
    draft.layer.self_attn.o_proj.weight.zero_()
    draft.layer.mlp.down_proj.weight.zero_()
    if draft.config.use_item_position:
        draft.signals.slot_scale.zero_()
    if draft.config.use_step_position:
        draft.signals.step_embed.weight.zero_()
    draft.norm.weight.copy_(causal_lm(world.target).model.norm.weight)
    return draft


@torch.no_grad()
def perturbed(draft, scale: float = 0.5, seed: int = 0):
    """The same draft with every weight shifted by Gaussian noise (relative ``scale``)."""
    gen = torch.Generator().manual_seed(seed)
    for p in draft.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * scale * (p.std() if p.numel() > 1 else 1.0))
    return draft
