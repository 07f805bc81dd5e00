"""``padrec`` command line. Every subcommand is a thin layer over the library; bad input → one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import PadrecError
from .fileio import check_output_dir


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return x


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {n}")
    return n


def _quiet() -> None:
    """Keep library chatter (load reports, deprecations) off the user's terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def _device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PadrecError(f"--device {name}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PadrecError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise PadrecError(f"--device {name}: padrec runs on cpu or cuda")
    return name


def _print_json(obj) -> None:
    print(json.dumps(obj), flush=True)


# --------------------------------------------------------------------------- data


def cmd_data_inspect(args) -> int:
    from .data import load_dataset

    summary = load_dataset(args.path).summary()
    if args.json:
        _print_json(summary)
        return 0
    print(f"{summary['name']} ({summary['format']}) at {summary['path']}")
    for key in ("users", "items", "interactions", "levels", "code_levels", "codebook_sizes", "collisions"):
        print(f"  {key:<14} {summary[key]}")
    print(f"  {'splits':<14} {summary['splits']}")
    return 0


def cmd_data_build_ids(args) -> int:
    from .ids import build_ids

    summary = build_ids(
        args.inter,
        args.out,
        levels=args.levels,
        codebook_size=args.codebook_size,
        embeddings_path=args.embeddings,
        num_items=args.num_items,
        dim=args.dim,
        holdout=args.holdout,
        seed=args.seed,
    )
    _print_json(summary) if args.json else print(f"wrote {summary['out']}: {summary}")
    return 0


# --------------------------------------------------------------------------- target


def cmd_train_target(args) -> int:
    from .data import load_dataset
    from .training import TargetTrainArgs, train_target

    load_dataset(args.data)  # fail fast with a clear message before any model is built
    check_output_dir(args.out, "padrec_target.json")
    out = train_target(
        TargetTrainArgs(
            data=args.data,
            out=args.out,
            base=args.base,
            list_len=args.list_len,
            history_len=args.history_len,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            seed=args.seed,
            fit_splits=args.fit_splits,
            period_steps=args.period_steps,
            period_lr=args.period_lr,
        )
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"target written to {out}", file=sys.stderr)
    return 0


def _distil(args, train, what: str, **settings) -> int:
    """train-draft / train-assistant: check the inputs before any work, then distil from the target's lists."""
    from .data import load_dataset
    from .target import load_target

    load_dataset(args.data)
    load_target(args.target)
    check_output_dir(args.out, "model.safetensors")
    out = train(
        args.target,
        args.data,
        args.out,
        max_steps=args.max_steps,
        seed=args.seed,
        batch_size=args.batch_size,
        max_users=args.max_users,
        cache_dir=args.cache_dir,
        **settings,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{what} written to {out}", file=sys.stderr)
    return 0


def cmd_train_draft(args) -> int:
    from .draft_training import train_draft

    return _distil(args, train_draft, "draft", depth=args.depth, use_item_position=not args.no_item_pos,
                   use_step_position=not args.no_step_pos, step_gate=args.step_gate,
                   forced_inputs=args.forced_inputs, init_from=args.init_from, lr=args.lr)  # fmt: skip


def cmd_train_assistant(args) -> int:
    from .assistant import train_assistant

    return _distil(args, train_assistant, "assistant", layers=args.layers, depth=args.depth)


def _recommender(args):
    import torch

    from .catalog import unseen_note
    from .data import load_dataset
    from .decoding import Recommender
    from .target import load_target

    torch.manual_seed(0)
    dataset = load_dataset(args.data)
    target = load_target(args.target, device=_device(args.device), merge_lora=args.merge_lora)
    rec = Recommender(target, dataset, list_len=args.list_len, engine=args.engine)
    note = unseen_note(target.unseen_items, f"the target {args.target}")
    if note:
        print(note, file=sys.stderr)
    users = dataset.eval_users(args.split)[: args.users]
    if not users:
        raise PadrecError(f"{args.data}: no users with a non-empty {args.split} target list")
    return rec, users


def cmd_recommend(args) -> int:
    from tqdm.auto import tqdm

    if args.all:
        return _recommend_all(args)
    if args.out or args.batch_size:
        raise PadrecError("--out and --batch-size belong to whole-split jobs: add --all")
    rec, users = _recommender(args)
    kwargs, draft, engine = {}, None, None
    if args.depth and not args.draft:
        raise PadrecError("--depth needs --draft")
    if args.tree and not args.draft:
        raise PadrecError("--tree needs --draft")
    if args.tree and args.engine != "engine":
        raise PadrecError(
            "--tree drafts trees with padrec's engine; it cannot be used with --engine generate"
        )
    if args.draft:
        from .draft import load_draft

        draft = load_draft(args.draft, rec.token_map, device=rec.device, dataset=rec.dataset)
        if args.engine == "engine":
            width = args.tree_width if args.tree else None
            engine = rec.engine(draft, args.depth, width, args.tree)
        else:
            if args.depth:
                draft.generation_config.num_assistant_tokens = args.depth
            kwargs["assistant_model"] = draft.attach(rec.target.model, rec.token_map)
    if engine is not None:
        kwargs["engine"] = engine
    results, draft_summaries = [], []
    if args.warmup:  # one untimed request first: lazy initialisation stays out of the figures
        rec.recommend(users[0], args.split, **kwargs)
    for user in tqdm(users, desc="recommend", disable=args.json or not sys.stderr.isatty()):
        if draft is not None:
            draft.stats.reset()
        r = rec.recommend(user, args.split, **kwargs)
        results.append(r)
        if engine is not None:
            r.extra["accepted_per_round"] = [accepted for _, _, accepted, _ in r.extra["rounds"]]
        elif draft is not None:
            r.extra["accepted_per_round"] = draft.stats.accepted_per_round()
            draft_summaries.append(draft.stats.summary())
        if args.json:
            _print_json(r.to_json())
        else:
            print(f"user {r.user}: {r.items}  ({r.latency_ms:.1f} ms, {r.target_forwards} target forwards)")
    if args.stats:
        from .fileio import write_json_atomic
        from .hardware import hardware_info

        stats = recommend_stats(results, rec.token_map, draft if engine is None else None, draft_summaries)
        stats.update(target=str(args.target), draft=args.draft, data=str(args.data), split=args.split,
                     engine=args.engine, hardware=hardware_info(str(rec.device)))  # fmt: skip
        if engine is not None:
            stats.update(engine_stats(results, engine.depth))
        write_json_atomic(args.stats, stats, indent=2)
    return 0


def _recommend_all(args) -> int:
    """``recommend --all``: every user of the split (or the first ``--users``) into a JSON-lines file, batched,
    resumable, sharded over the processes of ``accelerate launch``."""
    import time

    from accelerate import Accelerator

    from .jobs import run_job
    from .target import weights_digest

    if not args.out:
        raise PadrecError("--all writes one line per user to a file: give --out FILE.jsonl")
    if args.engine != "engine":
        raise PadrecError(
            "--all decodes with padrec's engine in batches; it cannot be used with --engine generate"
        )
    for flag, value in (("--tree", args.tree), ("--stats", args.stats), ("--json", args.json)):
        if value:
            raise PadrecError(
                f"{flag} cannot be used with --all (draft trees and per-request reports are batch-1)"
            )
    if args.depth and not args.draft:
        raise PadrecError("--depth needs --draft")
    accelerator = Accelerator(cpu=_device(args.device) == "cpu")
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        args.device = str(accelerator.device)  # one GPU per process
    t0 = time.perf_counter()
    rec, users = _recommender(args)
    draft = None
    if args.draft:
        from .draft import load_draft

        draft = load_draft(args.draft, rec.token_map, device=rec.device, dataset=rec.dataset)
    engine = rec.engine(draft, args.depth)
    manifest = {"target": str(args.target), "target_weights": weights_digest(rec.target.path), "draft": args.draft,
                "data": str(args.data), "split": args.split, "list_len": rec.list_len, "depth": engine.depth}  # fmt: skip
    batch = args.batch_size or 16
    result = run_job(rec, users, args.split, args.out, engine, batch, manifest, accelerator)
    if accelerator.is_main_process:
        seconds = time.perf_counter() - t0
        print(
            f"recommend --all: {len(users)} users ({result.resumed} already in {args.out}) in {seconds:.1f} s with "
            f"{accelerator.num_processes} process(es), batch size {batch}; this process decoded {result.decoded} "
            f"at {result.users_per_second:.2f} users/s -> {args.out}",
            file=sys.stderr,
        )
    return 0


def cmd_evaluate(args) -> int:
    from tqdm.auto import tqdm

    from .evaluate import evaluate_lists
    from .hardware import hardware_info
    from .target import weights_digest

    if args.lists:
        return _evaluate_job(args)
    if not args.target:
        raise PadrecError(
            "give --target (decode and evaluate) or --lists (evaluate a finished recommend --all job)"
        )
    rec, users = _recommender(args)
    if args.split == "valid" and rec.target.meta.train.get("fit_splits") == "train+valid":
        raise PadrecError(
            f"--split valid: the target {args.target} was trained on the validation interactions "
            "(--fit-splits train+valid); evaluate it on the test split"
        )
    with tqdm(total=len(users), desc="evaluate", disable=not sys.stderr.isatty()) as bar:
        lists = rec.recommend_batch(users, args.split, batch_size=args.batch_size or 32, progress=bar)
    report = evaluate_lists(lists, rec.dataset, args.split, rec.list_len)
    report.update(target=str(args.target), target_weights=weights_digest(rec.target.path), data=str(args.data),
                  hardware=hardware_info(_device(args.device)))  # fmt: skip
    return _print_eval(args, report)


def _print_eval(args, report: dict) -> int:
    from .evaluate import format_eval_table
    from .fileio import write_json_atomic

    if args.out:
        write_json_atomic(args.out, report, indent=2)
    if args.json:
        _print_json(report)
    else:
        print(format_eval_table(report))
    return 0


def _evaluate_job(args) -> int:
    """``evaluate --lists FILE.jsonl``: the metrics of a finished ``recommend --all`` job's lists."""
    from .data import load_dataset
    from .evaluate import evaluate_lists
    from .jobs import read_job

    decoding = {"--target": args.target, "--users": args.users, "--list-len": args.list_len,
                "--batch-size": args.batch_size, "--merge-lora": args.merge_lora,
                "--engine": args.engine != "engine", "--device": args.device != "cpu"}  # fmt: skip
    for flag, given in decoding.items():
        if given:
            raise PadrecError(
                f"{flag} sets how lists are decoded; --lists {args.lists} holds decoded lists already"
            )
    dataset = load_dataset(args.data)
    manifest, lists = read_job(Path(args.lists), Path(args.data), dataset.eval_users(args.split), args.split)
    report = evaluate_lists(lists, dataset, args.split, manifest["list_len"])
    report.update(target=manifest["target"], target_weights=manifest.get("target_weights"), data=str(args.data),
                  lists=str(args.lists), job=manifest)  # fmt: skip
    return _print_eval(args, report)


def engine_stats(results, depth: int) -> dict:
    """What the engine's per-user extras add up to: forced share, choices, draft rounds and steps."""
    tokens = sum(len(r.output_ids) for r in results)
    rounds = [rd for r in results for rd in r.extra.get("rounds", [])]
    steps = sum(r.extra["draft_steps"] for r in results)
    return {
        "depth": depth,
        "forced_share": round(sum(r.extra["forced_tokens"] for r in results) / tokens, 4),
        "choices_per_list": round(sum(r.extra["choices"] for r in results) / len(results), 3),
        "rounds_mean": round(len(rounds) / len(results), 3),
        "accepted_per_round_mean": round(sum(rd[2] for rd in rounds) / len(rounds), 4) if rounds else None,
        "draft_ms_per_step": round(sum(r.extra["draft_ms"] for r in results) / steps, 4) if steps else None,
    }


def recommend_stats(results, token_map, draft, draft_summaries: list[dict]) -> dict:
    """Aggregate over a recommend run: tau, target forward time, and (with a draft) acceptance and draft cost."""
    import statistics

    tokens = sum(len(r.output_ids) for r in results)
    forwards = sum(r.target_forwards for r in results)
    out = {
        "users": len(results),
        "tau": round(tokens / forwards, 4),
        "target_forwards_mean": round(forwards / len(results), 3),
        "latency_ms_median": round(statistics.median(r.latency_ms for r in results), 3),
        "target_forward_ms_mean": round(sum(r.forward_ms for r in results) / forwards, 4),
    }
    if draft is None:
        return out
    names = token_map.slot_names()
    reached = [0] * len(names)
    accepted = [0] * len(names)
    by_step: dict[int, list[int]] = {}
    ms, steps = 0.0, 0
    for st in draft_summaries:
        for slot, (a, n) in enumerate(st["acceptance_by_slot_counts"]):
            accepted[slot] += a
            reached[slot] += n
        for k, (a, n) in enumerate(st["acceptance_by_step_counts"]):
            acc = by_step.setdefault(k, [0, 0])
            acc[0] += a
            acc[1] += n
        ms += st["draft_seconds"] * 1000
        steps += st["draft_steps"]
    out.update(
        depth=draft.generation_config.num_assistant_tokens,
        use_item_position=draft.config.use_item_position,
        use_step_position=draft.config.use_step_position,
        alpha_by_step=[round(a / n, 4) if n else None for a, n in (by_step[k] for k in sorted(by_step))],
        alpha_by_slot={nm: round(a / n, 4) for nm, a, n in zip(names, accepted, reached, strict=True) if n},
        accepted_per_round_mean=round(
            sum(sum(r.extra["accepted_per_round"]) for r in results)
            / max(1, sum(len(r.extra["accepted_per_round"]) for r in results)),
            4,
        ),
        draft_ms_per_step=round(ms / steps, 4) if steps else None,
    )
    return out


# --------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    from .bench import BenchConfig, TreeSpec, report_markdown, run_bench

    if args.throughput:
        return _bench_throughput(args)
    if args.batch_sizes or args.repeats:
        raise PadrecError("--batch-sizes and --repeats belong to the throughput benchmark: add --throughput")
    if args.tree is None and args.tree_rank != "auto":
        raise PadrecError("--tree-rank values the nodes of draft trees: add --tree auto|N")
    cfg = BenchConfig(
        target=args.target,
        data=args.data,
        drafts=list(args.draft),
        assistant=args.assistant,
        split=args.split,
        users=args.users or 300,
        list_len=args.list_len,
        warmup=args.warmup,
        depth=args.depth,
        lookup_tokens=args.lookup_tokens,
        device=_device(args.device),
        merge_lora=args.merge_lora,
        engine_depth=args.engine_depth,
        only=[n for part in args.only for n in part.split(",") if n] if args.only else None,
        tree=None
        if args.tree is None
        else TreeSpec.parse(
            args.tree,
            width=args.tree_width,
            depth=args.tree_depth,
            rank=args.tree_rank,
            progress=not args.json and sys.stderr.isatty(),
        ),
        temperature=args.temperature,
    )
    report = run_bench(cfg, out=args.out, progress=not args.json and sys.stderr.isatty())
    return _print_report(args, report, report_markdown)


def _print_report(args, report: dict, markdown) -> int:
    """A bench report on stdout: report.json with ``--json``, else its markdown and where it was written."""
    if args.json:
        _print_json(report)
    else:
        print(markdown(report))
        print(f"report: {Path(args.out) / 'report.md'}" if args.out else "(no --out: nothing written)")
    return 0


def _bench_throughput(args) -> int:
    from .bench import TreeSpec
    from .throughput import ThroughputConfig, run_throughput, throughput_markdown

    for flag, value in (("--assistant", args.assistant), ("--lookup-tokens", args.lookup_tokens),
                        ("--only", args.only), ("--depth", args.depth),
                        ("--temperature", args.temperature),
                        ("--tree-rank", None if args.tree_rank == "auto" else args.tree_rank)):  # fmt: skip
        if value:
            raise PadrecError(f"{flag} belongs to the per-request benchmark; --throughput measures generate, ar-jf "
                              "and the engine's drafts (--engine-depth sets the chain's depth)")  # fmt: skip
    tree = None if args.tree is None else TreeSpec.parse(args.tree).budget
    if tree == "auto":
        raise PadrecError("--tree auto: --throughput takes a fixed number of choice nodes (N >= 1)")
    sizes = _int_list(args.batch_sizes or "1,4,16,64", "--batch-sizes")
    cfg = ThroughputConfig(
        target=args.target, data=args.data, drafts=list(args.draft), split=args.split,
        users=args.users or 128, batch_sizes=sizes, list_len=args.list_len,
        device=_device(args.device), merge_lora=args.merge_lora, engine_depth=args.engine_depth, tree=tree,
        tree_width=args.tree_width, tree_depth=args.tree_depth,
        repeats=args.repeats or 1,
    )  # fmt: skip
    report = run_throughput(cfg, out=args.out, progress=not args.json and sys.stderr.isatty())
    return _print_report(args, report, throughput_markdown)


# --------------------------------------------------------------------------- hub


def cmd_stamp_catalog(args) -> int:
    from .catalog import stamp_catalog

    for line in stamp_catalog(args.target, args.data, args.draft):
        print(line)
    return 0


def cmd_export(args) -> int:
    import shutil

    from .hub import describe, export, push

    if not (args.out or args.dry_run):
        raise PadrecError("export: --out is required (or use --dry-run)")
    out = None if args.dry_run else args.out  # a dry run renders into a temp folder, shown, then removed
    plan, root = export(args.draft, args.target, args.repo_id, out, args.bench, args.target_repo_id,
                        args.base_repo_id, args.license, args.data, args.study)  # fmt: skip
    if args.dry_run:
        try:
            print("dry run: nothing written, nothing uploaded\n" + describe(plan, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    print(describe(plan, root))
    print(f"written to {root}", file=sys.stderr)
    if args.push:
        push(plan, root, private=args.private)
    return 0


# --------------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        out=Path(args.out),
        data=args.data,
        base=args.base,
        max_steps=args.max_steps,
        users=args.users,
        bench_users=args.bench_users,
    )
    return 0


# --------------------------------------------------------------------------- parser


def _distillation_args(parser: argparse.ArgumentParser, max_steps: int) -> None:
    """Arguments of every model distilled from a target's own lists (train-draft, train-assistant)."""
    parser.add_argument("--target", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-steps", type=_positive, default=max_steps)
    parser.add_argument("--batch-size", type=_positive, default=16)
    parser.add_argument(
        "--max-users", type=_positive, default=4000, help="training users whose lists are distilled"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir",
        help="keep the target's distillation lists here, shared by train-draft and train-assistant runs on the "
        "same target and data (default: OUT.work)",
    )


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=["engine", "generate"],
        default="engine",
        help="engine: padrec's decoding engine (jump-forward over forced tokens, drafting at choices; default); "
        "generate: stock transformers generate (the reference). Both write the same lists.",
    )
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="decode with the LoRA weights merged into a copy of the base",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="padrec", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect datasets, build semantic IDs").add_subparsers(
        dest="data_command", required=True
    )
    d = data.add_parser("inspect", help="summarise a dataset folder")
    d.add_argument(
        "path", help="dataset folder (LC-Rec X.inter.json + X.index.json, or train/valid/test.json)"
    )
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_data_inspect)

    d = data.add_parser("build-ids", help="semantic IDs (residual k-means) for a catalog without codes")
    d.add_argument("--inter", required=True, help='interactions JSON {"user": [item, ...]}')
    d.add_argument("--out", required=True, help="index.json to write")
    d.add_argument("--levels", type=_positive, default=3)
    d.add_argument("--codebook-size", type=_positive, default=256)
    d.add_argument(
        "--embeddings", help="item embeddings (.safetensors or .npy), rows = items; default: co-occurrence"
    )
    d.add_argument("--num-items", type=_positive)
    d.add_argument("--dim", type=_positive, default=32, help="co-occurrence embedding size")
    d.add_argument(
        "--holdout", type=int, default=2, help="last items per user left out (leave-one-out files)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_build_ids)

    t = sub.add_parser("train-target", help="train the list-wise LoRA target")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument(
        "--base",
        default="qwen2-small",
        help="preset (qwen2-tiny, qwen2-small, qwen2-deep) or Hub id / local path",
    )
    t.add_argument("--list-len", type=_positive, default=10)
    t.add_argument("--history-len", type=_positive, default=20)
    t.add_argument("--max-steps", type=_positive, help="steps of each training stage (default: the preset's)")
    t.add_argument("--batch-size", type=_positive, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--fit-splits",
        choices=["train", "train+valid"],
        default="train",
        help="learn from the training split, or from training + validation interactions (the validation split "
        "can then not be evaluated)",
    )
    t.add_argument(
        "--period-steps",
        type=_non_negative,
        default=0,
        help="a third LoRA stage of this many steps on the time split's own form: each user's training period "
        "-> the validation period's items (needs --fit-splits train+valid; default 0: none)",
    )
    t.add_argument("--period-lr", type=float, default=5e-4, help="learning rate of the --period-steps stage")
    t.set_defaults(func=cmd_train_target)

    for name, func, helptext in (
        ("recommend", cmd_recommend, "generate lists, one user at a time"),
        ("evaluate", cmd_evaluate, "Recall/NDCG of the target's lists vs MostPop"),
    ):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("--target", required=name == "recommend")
        r.add_argument("--data", required=True)
        r.add_argument("--split", default="test", choices=["valid", "test"])
        r.add_argument("--users", type=_positive, help="first N users with a non-empty target list")
        r.add_argument("--list-len", type=_positive, help="items per list (default: the target's)")
        r.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
        r.add_argument("--json", action="store_true")
        _engine_args(r)
        if name == "recommend":
            r.add_argument("--draft", help="a PAD-Rec draft folder (or repo id): faster, the same lists")
            r.add_argument(
                "--depth",
                type=_positive,
                help="with --draft: choices (engine) or tokens (generate) per round",
            )
            r.add_argument(
                "--tree",
                type=_positive,
                help="with --draft: draft a tree of at most this many choice nodes per round (--depth: "
                "most choices on a path)",
            )
            r.add_argument(
                "--tree-width", type=_positive, default=3, help="with --tree: children per choice point"
            )
            r.add_argument(
                "--stats", help="write run statistics (tau, alpha by step and slot, timings) to this JSON"
            )
            r.add_argument(
                "--no-warmup", dest="warmup", action="store_false", help="skip the untimed first request"
            )
            r.add_argument(
                "--all",
                action="store_true",
                help="a whole-split job: every user (or the first --users) to --out, batched, resumable; runs "
                "sharded under accelerate launch",
            )
            r.add_argument("--out", help="with --all: the JSON-lines file (one line per user, in user order)")
            r.add_argument(
                "--batch-size", type=_positive, help="with --all: requests decoded together (default 16)"
            )
        if name == "evaluate":
            r.add_argument(
                "--batch-size",
                type=_positive,
                help="users decoded together: stock generate batches (--engine generate) or the engine's "
                "continuous batch (default 32)",
            )
            r.add_argument(
                "--lists",
                help="evaluate the lists of a finished `padrec recommend --all` job (FILE.jsonl) instead of "
                "decoding; its target and split are the job's",
            )
            r.add_argument("--out", help="also write the report to this JSON file")
        r.set_defaults(func=func)

    t = sub.add_parser("train-draft", help="train a PAD-Rec draft by self-distillation from a target")
    _distillation_args(t, max_steps=300)
    t.add_argument("--depth", type=_positive, default=5, help="draft steps per round (K)")
    t.add_argument("--no-item-pos", action="store_true", help="switch off the item-slot embedding")
    t.add_argument("--no-step-pos", action="store_true", help="switch off the gated draft-step embedding")
    t.add_argument(
        "--step-gate",
        choices=["context", "none"],
        default="context",
        help="the step embedding's gate: context (PAD-Rec: a linear layer on every draft step) or none (added "
        "ungated, no per-step matmul)",
    )
    t.add_argument(
        "--forced-inputs",
        choices=["chain", "block"],
        default="chain",
        help="what a drafted token the catalog forces reads: chain (the feature predicted just before it) or "
        "block (the feature its run started from: the engine then reads a drafted choice and its forced run in "
        "one draft forward)",
    )
    t.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate (default 2e-3)")
    t.add_argument(
        "--init-from",
        help="start from this trained draft's weights (same shape and signals, same target), e.g. to train a "
        "block draft from a chain draft",
    )
    t.set_defaults(func=cmd_train_draft)

    t = sub.add_parser("train-assistant", help="distil a small standalone Qwen2 assistant (vanilla SD)")
    _distillation_args(t, max_steps=1000)
    t.add_argument("--layers", type=_positive, default=1, help="decoder layers (1 or 2 in the benchmark)")
    t.add_argument("--depth", type=_positive, default=5, help="tokens drafted per round")
    t.set_defaults(func=cmd_train_assistant)

    b = sub.add_parser(
        "bench", help="every decoding method on the same requests, interleaved; lossless check"
    )
    b.add_argument("--target", required=True)
    b.add_argument("--data", required=True)
    b.add_argument(
        "--draft", action="append", default=[], help="a draft folder (DIR or NAME=DIR); repeat for ablations"
    )
    b.add_argument("--assistant", help="a small-LM assistant folder (padrec train-assistant)")
    b.add_argument("--split", default="test", choices=["valid", "test"])
    b.add_argument(
        "--users", type=_positive, help="measured requests (first N users; default 300, --throughput 128)"
    )
    b.add_argument(
        "--warmup", type=_non_negative, default=3, help="requests run first and left out of the figures"
    )
    b.add_argument("--list-len", type=_positive, help="items per list (default: the target's)")
    b.add_argument(
        "--depth",
        type=_positive,
        help="tokens drafted per round by every stock-path method (default: each one's trained depth)",
    )
    b.add_argument(
        "--engine-depth",
        type=_positive,
        help="choices drafted per round by every engine draft (default: --depth, else the draft's trained depth)",
    )
    b.add_argument(
        "--lookup-tokens", type=_positive, help="prompt-lookup tokens per round (default: --depth, else 5)"
    )
    b.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    b.add_argument(
        "--merge-lora",
        action="store_true",
        help="every method decodes with the LoRA weights merged into the base",
    )
    b.add_argument(
        "--only",
        action="append",
        help="run only these methods (comma-separated names, e.g. ar-jf,pad-rec; ar always runs)",
    )
    b.add_argument(
        "--tree",
        metavar="auto|N",
        help="add a draft-tree method per draft (tree:NAME): N choice nodes per tree, or auto (chosen by a "
        "short calibration on validation users)",
    )
    b.add_argument("--tree-width", type=_positive, default=3, help="with --tree: children per choice point")
    b.add_argument(
        "--tree-depth",
        type=_positive,
        default=10,
        help="with --tree: most choices on a path (auto: the most tried)",
    )
    b.add_argument(
        "--tree-rank",
        choices=("auto", "draft", "acceptance", "sibling"),
        default="auto",
        help="with --tree: value greedy tree nodes by the draft's probability, by the acceptance curve a "
        "calibration on validation users fits, or by its two curves for the draft's first pick at a choice point "
        "and for its others (sibling) (auto: whichever the calibration replays as faster, or the draft's chain "
        "when no tree is; a fixed --tree N with auto ranks by the draft)",
    )
    b.add_argument(
        "--temperature",
        type=_positive_float,
        help="sample at this temperature instead of greedy decoding (the engine by speculative sampling); "
        "sampled lists are checked to be complete, not compared with ar's token for token",
    )
    b.add_argument(
        "--throughput",
        action="store_true",
        help="users per second and latency against the batch size: batched generate, ar-jf, the engine's "
        "chains (and, with --tree N, trees at batch size 1)",
    )
    b.add_argument("--batch-sizes", help="with --throughput: comma-separated batch sizes (default 1,4,16,64)")
    b.add_argument(
        "--repeats", type=_positive, help="with --throughput: interleaved runs per cell (default 1)"
    )
    b.add_argument("--out", help="report folder (report.json, report.md, requests.jsonl, plots)")
    b.add_argument("--json", action="store_true", help="print report.json instead of the tables")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser(
        "stamp-catalog",
        help="record the catalog a target (and its drafts) made before catalog records was trained on",
    )
    c.add_argument("--target", required=True, help="the target folder")
    c.add_argument("--data", required=True, help="the dataset whose catalog it was trained on")
    c.add_argument("--draft", action="append", default=[], help="a draft folder of that target; repeatable")
    c.set_defaults(func=cmd_stamp_catalog)

    e = sub.add_parser("export", help="Hub repositories for a draft and its target, with model cards")
    e.add_argument("--draft", required=True, help="draft folder (padrec train-draft)")
    e.add_argument("--target", required=True, help="target folder (padrec train-target)")
    e.add_argument("--repo-id", required=True, help="the draft's repo, ORG/NAME")
    e.add_argument("--target-repo-id", help="the target adapter's repo (default: REPO_ID-target)")
    e.add_argument("--base-repo-id", help="a preset target's base model repo (default: REPO_ID-base)")
    e.add_argument("--out", help="folder to write (one sub-folder per repo)")
    e.add_argument("--bench", help="padrec bench report.json whose figures go into the draft's card")
    e.add_argument("--data", help="dataset folder for the cards' example prompt (default: the target's)")
    e.add_argument(
        "--study", help="padrec study report.json cited in the draft's card (which draft to train)"
    )
    e.add_argument("--license", default="apache-2.0")
    e.add_argument(
        "--push", action="store_true", help="upload with huggingface_hub (token: HF_TOKEN / login)"
    )
    e.add_argument("--private", action="store_true", help="create the repos private when pushing")
    e.add_argument(
        "--dry-run", action="store_true", help="print the files and repos; write and upload nothing"
    )
    e.set_defaults(func=cmd_export)

    from .study.plan import FACTORS  # the plan alone: no torch

    st = sub.add_parser(
        "study",
        help="the seeded position-signal study: train and bench drafts by group, resumably; report with intervals",
    ).add_subparsers(dest="study_command", required=True, metavar="{plan,run,report}")
    for name, helptext, func in (
        ("plan", "list the groups the chosen factors need, and which are done", cmd_study_plan),
        ("run", "train and bench the groups not done yet (stop and rerun at any time)", cmd_study_run),
    ):
        q = st.add_parser(name, help=helptext)
        q.add_argument(
            "--factors",
            default=",".join(FACTORS),
            help=f"comma-separated: {','.join(FACTORS)}",
        )
        q.add_argument("--datasets", default="Instruments,Beauty,beauty-timesplit",
                       help="comma-separated dataset folder names under --data-root (budget, depth, sampling, gate, "
                            "target: the first)")  # fmt: skip
        q.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
        q.add_argument("--data-root", default="../shared/data", help="folder holding the dataset folders")
        q.add_argument(
            "--runs", default="runs", help="targets (runs/ref|deep/DATASET/target) and study drafts"
        )
        q.add_argument("--results", default="results/study", help="the per-group results and the report")
        q.set_defaults(func=func)
        if name == "run":
            q.add_argument("--groups", type=_positive, help="run at most this many groups, then stop")
            q.add_argument("--only", help="comma-separated group names (as `padrec study plan` lists them)")
            q.add_argument("--users", type=_positive, default=200, help="test users benched per group")
            q.add_argument("--device", default="cpu")
            q.add_argument(
                "--jobs", type=_positive, default=1,
                help="a group's drafts trained at once, each in a process of its own with its share of the torch "
                     "threads (the same drafts as one at a time; its distillation cache is built first)",
            )  # fmt: skip
    q = st.add_parser("report", help="tables, intervals and plots from the per-group results")
    q.add_argument("--results", default="results/study")
    q.add_argument(
        "--readme", help="also rewrite this file's <!-- study:start --> ... <!-- study:end --> block"
    )
    q.add_argument(
        "--check",
        action="store_true",
        help="recompute the report from the per-group results and compare it with the published one; write "
        "nothing, exit 1 where they differ",
    )
    q.set_defaults(func=cmd_study_report)

    m = sub.add_parser(
        "demo", help="the whole chain, small: synthetic catalog → IDs → target → drafts → bench"
    )
    m.add_argument("--data", help="a real dataset folder instead of the synthetic catalog")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--base", default="qwen2-tiny")
    m.add_argument("--max-steps", type=_positive, default=300)
    m.add_argument("--users", type=_positive, default=200, help="test users evaluated")
    m.add_argument("--bench-users", type=_positive, default=50, help="test users benchmarked")
    m.set_defaults(func=cmd_demo)
    return p


def _study_plan(args):
    from .study.plan import plan
    from .study.run import StudyPaths

    seeds = _int_list(args.seeds, "--seeds", minimum=0)
    factors = [f for f in args.factors.split(",") if f]
    datasets = [d for d in args.datasets.split(",") if d]
    if not datasets:
        raise PadrecError("--datasets: give at least one dataset")
    for d in datasets:
        if not (Path(args.data_root) / d).is_dir():
            raise PadrecError(f"--datasets: {Path(args.data_root) / d} is not a folder")
    try:
        groups = plan(factors, datasets, seeds)
    except ValueError as e:
        raise PadrecError(f"--factors: {e}") from None
    return groups, StudyPaths(Path(args.runs), Path(args.data_root), Path(args.results))


def _int_list(value: str, flag: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(x) for x in value.split(",") if x]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values):
        raise PadrecError(f"{flag} {value}: comma-separated integers >= {minimum}")
    return values


def cmd_study_plan(args) -> int:
    from .study.run import estimate_cpu, is_done

    groups, paths = _study_plan(args)
    for g in groups:
        print(f"{'done' if is_done(g, paths) else 'todo'}  {g.name}")
    print(f"{sum(is_done(g, paths) for g in groups)} of {len(groups)} groups done", file=sys.stderr)
    cost = estimate_cpu(groups, paths)
    if cost and cost["groups"]:
        print(
            f"the {cost['groups']} todo group(s): about {cost['train_s'] / 3600:.1f} h of draft training and "
            f"{cost['bench_s'] / 3600:.1f} h of benching on one core, at the rates the done groups measured here "
            "(distillation caches and targets not counted)",
            file=sys.stderr,
        )
    return 0


def cmd_study_run(args) -> int:
    from .study.report import write_report
    from .study.run import RunSettings, run_groups

    groups, paths = _study_plan(args)
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = sorted(set(names) - {g.name for g in groups})
        if unknown:
            raise PadrecError(f"--only: {', '.join(unknown)} not in the plan (see `padrec study plan`)")
        groups = [g for g in groups if g.name in names]
    settings = RunSettings(users=args.users, device=args.device, progress=sys.stderr.isatty(), jobs=args.jobs)
    ran = run_groups(groups, paths, settings, limit=args.groups)
    write_report(paths.results)
    print(f"study: ran {len(ran)} group(s); report -> {paths.results / 'report.md'}")
    return 0


def cmd_study_report(args) -> int:
    from .study.report import check_report, write_report

    results = Path(args.results)
    if not (results / "groups").is_dir():
        raise PadrecError(f"--results {results}: no groups/ folder (run `padrec study run` first)")
    if args.check:
        if args.readme:
            raise PadrecError("--check writes nothing; it cannot be used with --readme")
        diffs = check_report(results)
        if diffs:
            shown = "\n".join(f"  {d}" for d in diffs[:20]) + (
                f"\n  ... {len(diffs) - 20} more" if len(diffs) > 20 else ""
            )
            print(
                f"study: the published report differs from the per-group results at:\n{shown}",
                file=sys.stderr,
            )
            return 1
        print(f"study: {results / 'report.json'} and report.md are what the per-group results give")
        return 0
    if args.readme and not Path(args.readme).is_file():
        raise PadrecError(f"--readme {args.readme}: not a file")
    report = write_report(results, readme=Path(args.readme) if args.readme else None)
    print(f"study: {report['groups']} group(s) -> {results / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        return args.func(args)
    except PadrecError as e:
        print(f"padrec: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        from .modeling_padrec_draft import PadRecDraftError

        if not isinstance(e, PadRecDraftError):
            raise
        print(f"padrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("padrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `padrec recommend ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
