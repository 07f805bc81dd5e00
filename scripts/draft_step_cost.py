"""What each position signal costs per draft step, measured on the draft's own decode paths.

    OMP_NUM_THREADS=1 python scripts/draft_step_cost.py runs/study/Instruments/ref/draft-pad-rec-seed0-steps150-depth12 \
        --out results/study/step_cost.json

Takes one PAD-Rec draft (both signals, context gate) and times, with the same weights, the draft with both
signals, with the step embedding added ungated (``step_gate="none"``), with the step signal switched off, and with
both off (switching a signal off skips its work; the outputs then differ, which
does not matter for timing). Two paths, each the engine's: the one-token ``decode_step`` (a draft step inside a
round) and the multi-token ``forward`` over the positions the target kept (the start of a round). Calls are
interleaved variant by variant, ``--repeats`` times; the figures are medians in microseconds, plus each signal's
share of the step. The step gate's own ops (linear + sigmoid) are also timed alone on the same input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from modeling_padrec.draft import load_draft
from modeling_padrec.hardware import hardware_info

# variant -> (item signal, step signal, step gate)
VARIANTS = {
    "both": (True, True, True),
    "both, step ungated": (True, True, False),
    "item only": (True, False, False),
    "none": (False, False, False),
}


def _set(draft, item: bool, step: bool, gated: bool) -> None:
    signals = draft.signals
    signals.use_item_position, signals.use_step_position, signals.gated = item, step, gated


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("draft", help="a PAD-Rec draft folder with both position signals")
    p.add_argument("--context", type=int, default=80, help="positions already in the draft's cache")
    p.add_argument("--kept", type=int, default=3, help="positions in a round-start forward")
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    draft = load_draft(args.draft).eval()
    if not (draft.config.use_item_position and draft.config.use_step_position):
        print(f"{args.draft}: needs a draft with both position signals", file=sys.stderr)
        return 2
    hidden = draft.config.hidden_size
    ids = torch.tensor(draft.config.rec_token_ids)
    token = ids[:1][None]
    kept = ids[: args.kept][None]
    prefix = torch.randn(1, args.context, hidden)
    times: dict[str, dict[str, list[float]]] = {v: {"decode_step": [], "round_start": []} for v in VARIANTS}
    gate_times: list[float] = []
    with torch.inference_mode():
        caches = {}
        for name, flags in VARIANTS.items():
            _set(draft, *flags)
            draft._decode_cache = None  # the fast path's tables fold the slot signal in: one set per variant
            cache = DynamicCache()
            draft(ids[: args.context][None], prefix, cache=cache)
            caches[name] = (cache, draft.decode_tables(torch.device("cpu")))
        feature = torch.randn(1, 1, hidden)
        features = torch.randn(1, args.kept, hidden)
        for r in range(args.repeats):
            for name, flags in VARIANTS.items():
                _set(draft, *flags)
                cache, tables = caches[name]
                t0 = time.perf_counter()
                draft.decode_step(token, feature, 1 + r % 4, cache, tables=tables)
                t1 = time.perf_counter()
                cache.crop(-1)
                t2 = time.perf_counter()
                draft(kept, features, step_ids=0, cache=cache, compute_logits=False)
                t3 = time.perf_counter()
                cache.crop(-args.kept)
                times[name]["decode_step"].append(1e6 * (t1 - t0))
                times[name]["round_start"].append(1e6 * (t3 - t2))
            t0 = time.perf_counter()
            torch.sigmoid(draft.signals.step_gate(feature))
            gate_times.append(1e6 * (time.perf_counter() - t0))
    _set(draft, True, True, True)
    medians = {v: {k: round(statistics.median(x), 1) for k, x in paths.items()} for v, paths in times.items()}
    report = {
        "draft": args.draft,
        "context": args.context,
        "kept": args.kept,
        "repeats": args.repeats,
        "median_us": medians,
        "step_gate_alone_us": round(statistics.median(gate_times), 1),
        "share_of_decode_step": {
            "step signal": round(1 - medians["item only"]["decode_step"] / medians["both"]["decode_step"], 4),
            "step gate": round(
                1 - medians["both, step ungated"]["decode_step"] / medians["both"]["decode_step"], 4
            ),
            "item signal": round(1 - medians["none"]["decode_step"] / medians["item only"]["decode_step"], 4),
        },
        "hardware": hardware_info("cpu"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
