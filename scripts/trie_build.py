"""Build time, memory and walk cost of the compiled CatalogTrie: the shipped catalogs and a synthetic 1M-item one.

    python scripts/trie_build.py ../shared/data results/trie-build.json [--items 1000000]

Writes one JSON object (and prints it): per catalog, items, levels, nodes, build seconds (median of 3), the
tensor tables' bytes, the resident memory the process holds more with the trie built (tensors plus the walk's
Python-list mirrors; Linux ``/proc``, else null), the growth of the process's peak RSS (cumulative: a catalog that
fits under an earlier peak shows 0), and the median cost of one walk step (``allowed`` + ``advance``) over whole
random lists, in microseconds. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from modeling_padrec.data import load_dataset
from modeling_padrec.engine.trie import CatalogTrie
from modeling_padrec.fileio import write_json_atomic
from modeling_padrec.hardware import hardware_info
from modeling_padrec.tokenization import TokenMap, build_tokenizer

SEP, EOS = 4, 3


def synthetic_codes(num_items: int, levels: int = 4, codebook: int = 256, seed: int = 0) -> torch.Tensor:
    """Random L-level codes plus a disambiguation level (the n-th item sharing a code gets code n)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, codebook, (num_items, levels), generator=gen)
    key = torch.zeros(num_items, dtype=torch.long)
    for col in range(levels):
        key = key * codebook + codes[:, col]
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    starts = torch.ones(num_items, dtype=torch.bool)
    starts[1:] = sorted_key[1:] != sorted_key[:-1]
    group_start = torch.cummax(torch.where(starts, torch.arange(num_items), torch.zeros_like(key)), 0).values
    rank = torch.empty_like(key)
    rank[order] = torch.arange(num_items) - group_start
    full = torch.cat([codes, rank[:, None]], dim=1)
    offsets = 10 + torch.arange(levels + 1) * codebook  # disjoint token ids per level
    return full + offsets


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float | None:
    """Resident memory now (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(name: str, codes: torch.Tensor, list_len: int = 10, lists: int = 200) -> dict:
    before, resident = peak_rss_mb(), rss_mb()
    times = []
    trie = None
    for _ in range(3):
        trie = None  # the previous build is freed before the next one
        t0 = time.perf_counter()
        trie = CatalogTrie(codes, SEP, EOS, list_len)
        times.append(time.perf_counter() - t0)
    grown = peak_rss_mb() - before
    held = rss_mb()
    gen = torch.Generator().manual_seed(0)
    step_us = []
    for _ in range(lists):
        state, steps = trie.start(), 0
        picks = torch.randint(0, 1 << 30, (200,), generator=gen).tolist()
        t0 = time.perf_counter()
        while not state.done:
            allowed = state.allowed()
            state.advance(allowed[picks[steps] % len(allowed)])
            steps += 1
        step_us.append((time.perf_counter() - t0) / steps * 1e6)
    return {
        "catalog": name,
        "items": trie.num_items,
        "levels": trie.levels,
        "nodes": trie.num_nodes,
        "build_s_median": round(statistics.median(times), 3),
        "table_mb": round(trie.nbytes() / 2**20, 2),
        "rss_held_mb": None if held is None or resident is None else round(held - resident, 1),
        "peak_rss_growth_mb": round(grown, 1),
        "walk_step_us_median": round(statistics.median(step_us), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="folder holding the dataset folders")
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--items", type=int, default=1_000_000, help="items of the synthetic catalog")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for folder in sorted(p for p in Path(args.data).iterdir() if p.is_dir()):
        dataset = load_dataset(folder)
        token_map = TokenMap.from_tokenizer(build_tokenizer(dataset.index), dataset.index)
        rows.append(measure(folder.name, token_map.item_ids(dataset.index)))
        print(json.dumps(rows[-1]), file=sys.stderr)
    rows.append(measure(f"synthetic-{args.items}", synthetic_codes(args.items)))
    print(json.dumps(rows[-1]), file=sys.stderr)
    report = {"command": "python scripts/trie_build.py " + " ".join(sys.argv[1:]), "catalogs": rows,
              "hardware": hardware_info("cpu")}  # fmt: skip
    write_json_atomic(args.out, report, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
