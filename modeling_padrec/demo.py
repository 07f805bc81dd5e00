"""``padrec demo``: the whole chain, small enough to run anywhere in a few minutes.

synthetic catalog (or ``--data``) → semantic IDs → list-wise LoRA target → constrained recommendations →
Recall/NDCG against MostPop → PAD-Rec draft and its no-position ablation, small-LM assistant → ``padrec bench``.
Everything is written under ``--out``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_demo(
    out: Path,
    data: str | None = None,
    base: str = "qwen2-tiny",
    max_steps: int = 300,
    users: int = 200,
    bench_users: int = 50,
):
    from .assistant import train_assistant
    from .bench import BenchConfig, report_markdown, run_bench
    from .data import load_dataset
    from .decoding import Recommender
    from .draft_training import train_draft
    from .evaluate import evaluate_lists, format_eval_table
    from .synthetic import make_synthetic
    from .target import load_target
    from .training import TargetTrainArgs, train_target

    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data_dir = out / "data"
        print(f"[1/7] synthetic catalog + semantic IDs (residual k-means) → {data_dir}", file=sys.stderr)
        make_synthetic(data_dir, seed=0)
    else:
        data_dir = Path(data)
        print(f"[1/7] dataset {data_dir}", file=sys.stderr)
    dataset = load_dataset(data_dir)
    summary = dataset.summary()
    print(
        f"      {summary['users']} users, {summary['items']} items, {summary['levels']} tokens per item, "
        f"{summary['collisions']} code collisions",
        file=sys.stderr,
    )
    target_dir = out / "target"
    print(f"[2/7] training the target ({base}, {max_steps} steps per stage) → {target_dir}", file=sys.stderr)
    train_target(TargetTrainArgs(data=str(data_dir), out=str(target_dir), base=base, max_steps=max_steps))
    print(f"[3/7] recommending for {users} test users (constrained greedy decoding)", file=sys.stderr)
    target = load_target(target_dir)
    rec = Recommender(target, dataset)
    eval_users = dataset.eval_users("test")[:users]
    lists = rec.recommend_batch(eval_users, "test")
    report = evaluate_lists(lists, dataset, "test", rec.list_len)
    (out / "evaluate.json").write_text(json.dumps(report, indent=2) + "\n")
    print("[4/7] results", file=sys.stderr)
    for user in eval_users[:3]:
        r = rec.recommend(user)
        print(f"  user {user}: history {dataset.history(user, 'test')[-5:]} → {r.items}")
        print(
            f"           held out {dataset.test[user]}, {r.target_forwards} target forwards, {r.latency_ms:.0f} ms"
        )
    print("\n" + format_eval_table(report))

    cache = out / "distill-cache"  # the target's lists, computed once for both drafts and the assistant
    drafts = {"draft-padrec": (True, True), "draft-none": (False, False)}
    for name, (item, step) in drafts.items():
        which = "PAD-Rec draft" if item else "no-position draft (ablation)"
        print(f"[5/7] training the {which}, {max_steps} steps → {out / name}", file=sys.stderr)
        train_draft(
            target_dir,
            data_dir,
            out / name,
            depth=4,
            use_item_position=item,
            use_step_position=step,
            max_steps=max_steps,
            max_users=1000,
            cache_dir=str(cache),
        )
    print(f"[6/7] distilling the small-LM assistant (1 layer) → {out / 'assistant'}", file=sys.stderr)
    train_assistant(
        target_dir,
        data_dir,
        out / "assistant",
        depth=4,
        max_steps=max_steps,
        max_users=1000,
        cache_dir=str(cache),
    )
    print(f"[7/7] padrec bench on {bench_users} test users (every method, interleaved)", file=sys.stderr)
    bench = run_bench(
        BenchConfig(
            str(target_dir),
            str(data_dir),
            drafts=[str(out / d) for d in drafts],
            assistant=str(out / "assistant"),
            users=bench_users,
        ),
        out=out / "bench",
        progress=sys.stderr.isatty(),
    )
    print("\n" + report_markdown(bench))
    print(f"evaluation: {out / 'evaluate.json'}   bench report: {out / 'bench' / 'report.md'}")
    print(f"target: {target_dir}   drafts: {', '.join(str(out / d) for d in drafts)}")
    return report
