"""``padrec study``: the plan's groups, the bootstrap intervals, a group trained, benched and reported end to end,
resuming, and the refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from test_cli import assert_clean_error, padrec

from modeling_padrec.errors import PadrecError
from modeling_padrec.study.instances import pooled_over_trainings, target_instances
from modeling_padrec.study.plan import (
    BUDGETS,
    GATE_VARIANTS,
    PAIR,
    SAMPLING_STEPS,
    TARGET_STEPS,
    TARGETS,
    UNGATED,
    VARIANTS,
    Group,
    draft_settings,
    member_of,
    plan,
)
from modeling_padrec.study.report import (
    GroupResult,
    held_out_seeds,
    held_out_tally,
    load_results,
    new_seed_figures,
    report_markdown,
    seed_spreads,
    write_report,
)
from modeling_padrec.study.run import (
    TARGET_RECIPES,
    RunSettings,
    StudyPaths,
    estimate_cpu,
    is_done,
    run_groups,
    train_missing,
    training_record,
)
from modeling_padrec.study.stats import geometric_mean, new_seed_interval, ratio_of_sums, t_quantile


def test_plan_trains_every_draft_once_and_covers_every_factor():
    groups = plan(datasets=("A", "B"), seeds=(0, 1))
    names = [g.name for g in groups]
    assert len(names) == len(set(names))
    greedy = [g for g in groups if not g.temperature]
    # the ablation, budget and depth groups bench each draft once; the sampling and gate groups bench again
    # drafts those groups trained (plus, for the gate, the ungated one)
    trained = [g for g in greedy if UNGATED not in g.variants]
    drafts = [(g.dataset, g.target, g.seed, g.steps, g.depth, v) for g in trained for v in g.variants]
    assert len(drafts) == len(set(drafts))
    gated = [g for g in groups if UNGATED in g.variants]
    assert sorted(g.seed for g in gated) == [0, 1] and all(member_of(g) == ["gate"] for g in gated)
    for g in gated:
        assert {
            (g.dataset, g.target, g.seed, g.steps, g.depth, v) for v in g.variants if v != UNGATED
        } <= set(drafts)
    # the target factor: the pair at its budget on each target; the deeper target's groups count for it alone,
    # the reference target's is the budget factor's group
    sized = {(g.target, g.seed, g.steps) for g in groups if "target" in member_of(g)}
    assert {(t, s, n) for t in TARGETS for s in (0, 1) for n in TARGET_STEPS} <= sized
    assert set(TARGET_RECIPES) == set(TARGETS)
    for g in groups:
        if g.target != "ref":
            assert g.dataset == "A" and g.steps in TARGET_STEPS and g.variants == PAIR and not g.temperature
            assert member_of(g) == ["target"]
        elif g.steps in TARGET_STEPS and g.variants == PAIR and not g.temperature:
            assert {"budget", "target"} <= set(member_of(g))
    sampled = [g for g in groups if g.temperature]
    assert {(g.seed, g.steps) for g in sampled} == {(s, n) for s in (0, 1) for n in SAMPLING_STEPS}
    for g in sampled:  # a sampled group benches drafts a greedy group trains, and its greedy twin is planned
        assert g.dataset == "A" and g.variants == PAIR and g.temperature == 1.0 and g.name.endswith("-t1")
        assert {(g.dataset, g.target, g.seed, g.steps, g.depth, v) for v in g.variants} <= set(drafts)
        assert any(
            "sampling" in member_of(t) and (t.seed, t.steps, t.depth) == (g.seed, g.steps, g.depth)
            for t in greedy
        )
        assert member_of(g) == ["sampling"]
    for seed in (0, 1):
        for dataset in ("A", "B"):  # the ablation: all four variants at the base budget and depth
            assert any(g.dataset == dataset and g.seed == seed and "ablation" in member_of(g) for g in groups)
        for steps in BUDGETS:  # the budget factor on the first dataset only
            assert any(g.dataset == "A" and g.seed == seed and g.steps == steps for g in groups)
        assert not any(g.dataset == "B" and g.steps != 500 for g in groups)
    assert groups[0].variants == tuple(VARIANTS) and groups[0].dataset == "A"  # the core question first
    with pytest.raises(ValueError, match="unknown factor"):
        plan(factors=("ablation", "speed"))
    assert draft_settings(UNGATED) == {
        "use_item_position": True,
        "use_step_position": True,
        "step_gate": "none",
    }
    assert draft_settings("item-only") == {"use_item_position": True, "use_step_position": False}


def test_intervals():
    rng = np.random.default_rng(0)
    same = geometric_mean([np.full(50, 2.0), np.full(40, 2.0)])
    assert (same.value, same.low, same.high, same.seeds, same.requests) == (2.0, 2.0, 2.0, 2, 90)
    noisy = geometric_mean([np.exp(rng.normal(0.1, 0.2, 200)) for _ in range(3)])
    assert noisy.low < noisy.value < noisy.high and noisy.excludes(1.0)
    flat = geometric_mean([np.exp(rng.normal(0.0, 0.2, 200)) for _ in range(3)])
    assert not flat.excludes(1.0)
    one_seed = geometric_mean([np.exp(rng.normal(0.0, 0.2, 200))])
    assert one_seed.seeds == 1 and one_seed.low < one_seed.high
    tau = ratio_of_sums([np.array([[10, 2], [20, 3]]), np.array([[6, 1]])])
    assert tau.value == pytest.approx(36 / 6)


def test_new_seed_interval():
    for df in (1, 2, 5, 14, 60):
        assert t_quantile(0.975, df) == pytest.approx(scipy.stats.t.ppf(0.975, df), rel=1e-6)
    e = new_seed_interval([0.0, 0.2], (0.08, 4))  # s² = 0.02, two seeds
    half = scipy.stats.t.ppf(0.975, 4) * np.sqrt(0.02 * 1.5)
    assert (e["value"], e["seeds"], e["df"]) == (pytest.approx(np.exp(0.1), abs=1e-4), 2, 4)
    assert (e["low"], e["high"]) == (
        pytest.approx(np.exp(0.1 - half), abs=1e-4),
        pytest.approx(np.exp(0.1 + half), abs=1e-4),
    )
    assert new_seed_interval([0.1], (0.0, 0)) is None  # no spread measured anywhere: no interval


def _fake_group(seed: int, speedups: dict[str, np.ndarray]) -> GroupResult:
    """A benched pair whose methods' latencies are ``ar``'s over the given speedups, request by request."""
    ar = 100 + 10 * np.arange(len(next(iter(speedups.values()))))
    requests = {"ar": {u: {"latency_ms": float(x)} for u, x in enumerate(ar)}}
    for method, speedup in speedups.items():
        requests[method] = {u: {"latency_ms": float(x)} for u, x in enumerate(ar / speedup)}
    return GroupResult(Group("D", seed=seed, steps=6, depth=3, variants=PAIR), {}, requests)


def test_budget_and_depth_cells_leave_out_what_only_repeats_the_ablation():
    from modeling_padrec.study.report import _cells

    def result(dataset, steps=6, variants=tuple(VARIANTS)):
        return GroupResult(Group(dataset, seed=0, steps=steps, depth=3, variants=variants), {}, {})

    results = [
        result("A"),  # the ablation alone: its budget and depth "cells" would be the ablation's cell again
        result("B"),
        result("B", steps=12, variants=PAIR),  # a second budget: B's budget factor has two levels
        result("C", variants=PAIR),  # a pair at the base level but no ablation: its own cell
    ]
    assert list(_cells(results, "budget", (6, 3))) == [("B", "ref", 6), ("B", "ref", 12), ("C", "ref", 6)]
    assert list(_cells(results, "depth", (6, 3))) == [("C", "ref", 3)]
    assert list(_cells(results, "ablation", (6, 3))) == [("A", "ref"), ("B", "ref")]


def test_leave_one_seed_out():
    rng = np.random.default_rng(3)
    noise = lambda: np.exp(rng.normal(0, 0.01, 60))  # noqa: E731
    members = [_fake_group(s, {"pad-rec": 2.0 * noise(), "no-position": 2.1 * noise()}) for s in (0, 1)]
    members.append(
        _fake_group(2, {"pad-rec": 2.6 * noise(), "no-position": 2.1 * noise()})
    )  # an outlier seed
    other = [
        _fake_group(s, {"pad-rec": (2.0 + s / 100) * noise(), "no-position": 2.1 * noise()})
        for s in (0, 1, 2)
    ]
    for g in other:  # another cell: its own groups
        g.group = Group("E", seed=g.group.seed, steps=6, depth=3, variants=PAIR)
    spreads = seed_spreads([members, other, members])  # a cell shown under two factors counts once
    assert {k: len(v) for k, v in spreads.items()} == {  # per cell and variant, the two cells' only
        ("greedy", "chain", "speedup_vs_ar"): 4,
        ("greedy", "chain", "vs_no_position"): 2,
    }
    entries = held_out_seeds(members, spreads)
    assert sorted((e["seed"], e["variant"], e["metric"]) for e in entries) == sorted(
        [(s, "pad-rec", m) for s in (0, 1, 2) for m in ("speedup_vs_ar", "vs_no_position")]
        + [(s, "no-position", "speedup_vs_ar") for s in (0, 1, 2)]
    )
    for e in entries:
        g = members[e["seed"]]
        base = "ar" if e["metric"] == "speedup_vs_ar" else "no-position"
        ratios = [
            g.requests[base][u]["latency_ms"] / g.requests[e["variant"]][u]["latency_ms"] for u in range(60)
        ]
        assert e["value"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))), abs=1e-4)
        rest = [m for m in members if m is not g]
        others = geometric_mean(
            [
                np.array(
                    [
                        m.requests[base][u]["latency_ms"] / m.requests[e["variant"]][u]["latency_ms"]
                        for u in range(60)
                    ]
                )
                for m in rest
            ]
        )
        assert (e["others"]["low"], e["others"]["high"]) == (others.low, others.high)
        assert e["inside"] == (others.low <= e["value"] <= others.high)
        assert e["inside_new_seed"] == (e["new_seed"]["low"] <= e["value"] <= e["new_seed"]["high"])
        assert e["new_seed"]["low"] <= e["others"]["low"] and e["new_seed"]["high"] >= e["others"]["high"]
    outlier = [e for e in entries if e["seed"] == 2 and e["variant"] == "pad-rec"]
    assert outlier and not any(e["inside"] or e["inside_new_seed"] for e in outlier)
    figures = new_seed_figures(members, spreads)
    assert (
        set(figures) == {"pad-rec", "no-position"} and "vs_no_position" not in figures["no-position"]["chain"]
    )
    tally = held_out_tally({"factors": {"a": [{"held_out": entries}], "b": [{"held_out": entries}]}})
    assert tally["others"]["vs_no_position"][1] == 3 and tally["new_seed"]["vs_no_position"][0] <= 2


def test_groups_are_told_apart_by_the_training_of_their_target():
    def result(dataset, seed, forwards, weights=None, temperature=0.0):
        requests = {"ar-jf": {f"u{k}": {"target_forwards": n} for k, n in enumerate(forwards)}}
        summary = {"target": {"weights": weights}} if weights else {}
        group = Group(dataset, seed=seed, steps=6, depth=3, variants=PAIR, temperature=temperature)
        return GroupResult(group, summary, requests)

    results = [
        result("A", 0, [5, 6, 7]),  # recorded nothing: known by its greedy lists' forwards
        result("A", 1, [5, 6, 7]),  # the same lists: the same training
        result("A", 2, [5, 6, 7], weights="w1"),  # recorded its weights, and has the same lists: the same
        result("A", 3, [5, 6, 7], weights="w2"),  # other weights are another training, whatever the lists
        result("A", 4, [5, 6, 8]),  # recorded nothing, and one user's list differs: another training
        result("A", 5, [9, 9, 9], temperature=1.0),  # sampled, recorded nothing: not identified
        result("B", 0, [5, 6, 7], weights="w1"),  # another dataset: its own target
        result("B", 1, [4, 4, 4], weights="w1"),  # same weights, whatever its lists (here not greedy-equal)
    ]
    found = target_instances(results)
    assert [(i["weights"], i["identified"], i["seeds"]) for i in found["A/ref"]] == [
        ("w1", True, [0, 1, 2]),
        ("w2", True, [3]),
        (None, True, [4]),
        (None, False, [5]),
    ]
    assert [(i["weights"], i["seeds"]) for i in found["B/ref"]] == [("w1", [0, 1])]
    (line,) = pooled_over_trainings(found)  # B benched one training; A's unidentified group is not counted
    assert line.startswith("A/ref: the groups benched 3 trainings") and "seed(s) 4 on an unrecorded" in line


def test_a_group_benched_on_a_retrained_target_is_said_so(tmp_path, capsys):
    from modeling_padrec.study.run import _say_other_trainings
    from modeling_padrec.target import weights_digest

    paths = StudyPaths(tmp_path / "runs", tmp_path / "data", tmp_path / "results")
    group = Group("D", seed=1, steps=6, depth=3, variants=PAIR)
    target = paths.target(group)
    (target / "base").mkdir(parents=True)
    (target / "padrec_target.json").write_text("{}")
    (target / "adapter_model.safetensors").write_bytes(b"adapter")
    (target / "base" / "model.safetensors").write_bytes(b"base")
    ours = weights_digest(target)
    (target / "base" / "model.safetensors").write_bytes(b"base, trained again")
    assert weights_digest(target) != ours  # every weights file counts, the base's too

    def done(name, dataset, weights):
        folder = paths.results / "groups" / name
        folder.mkdir(parents=True)
        record = {
            "group": {"name": name, "dataset": dataset, "target": "ref"},
            "target": {"weights": weights},
        }
        (folder / "group.json").write_text(json.dumps(record))

    done("D-seed0", "D", ours)
    done("E-seed0", "E", "elsewhere")  # another dataset's target is not ours
    _say_other_trainings(group, paths)
    err = capsys.readouterr().err
    assert f"(weights {weights_digest(target)}) is not the training D-seed0 benched (weights {ours})" in err
    assert "E-seed0" not in err
    (target / "base" / "model.safetensors").write_bytes(b"base")  # the same training again: nothing to say
    _say_other_trainings(group, paths)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_group_is_trained_benched_reported_and_not_run_twice(tiny_target, synthetic_dir, tmp_path):
    from modeling_padrec.target import weights_digest

    runs = tmp_path / "runs"
    (runs / "ref" / synthetic_dir.name).mkdir(parents=True)
    (runs / "ref" / synthetic_dir.name / "target").symlink_to(tiny_target)
    paths = StudyPaths(runs, synthetic_dir.parent, tmp_path / "results")
    group = Group(synthetic_dir.name, seed=0, steps=6, depth=3, variants=PAIR)
    settings = RunSettings(users=4, draft_users=40, progress=False)
    assert run_groups([group], paths, settings) == [group]
    folder = paths.group_dir(group)
    summary = json.loads((folder / "group.json").read_text())
    assert summary["group"]["name"] == group.name
    assert summary["target"]["weights"] == weights_digest(
        tiny_target
    )  # which training of the target it benched
    assert set(summary["drafts"]) == set(PAIR)
    assert (
        len(summary["bench"]["config"]["drafts"]) == 2
    )  # the drafts benched, though only through the engine
    assert all(d["steps"] == 6 and d["train_seconds"] > 0 for d in summary["drafts"].values())
    lines = [json.loads(x) for x in (folder / "requests.jsonl").read_text().splitlines()]
    methods = {"ar", "ar-jf", *PAIR, *(f"tree:{v}" for v in PAIR)}
    assert {r["method"] for r in lines} == methods and len(lines) == 4 * len(methods)
    for r in lines:
        assert r["latency_ms"] > 0 and r["target_forwards"] >= 1 and r["tokens"] > 0
        if r["method"] in PAIR:  # a chain drafts: its steps were reached and some accepted or not
            assert r["by_step"] and all(0 <= a <= n for n, a in r["by_step"])
            assert sum(n for n, _ in r["by_step"]) == sum(n for n, _ in r["by_slot"])
    # the CPU a group not run yet would take, at the done group's rates (another depth scaled in proportion)
    todo = Group(synthetic_dir.name, seed=1, steps=12, depth=6, variants=PAIR)
    cost = estimate_cpu([group, todo], paths)
    per_step = sorted(d["train_seconds"] / d["steps"] for d in summary["drafts"].values())[1]
    per_request = summary["bench"]["wall_s"] / (len(summary["bench"]["methods"]) * 4)
    assert cost["groups"] == 1 and cost["train_s"] == pytest.approx(2 * 12 * per_step * 6 / 3, abs=1)
    assert cost["bench_s"] == pytest.approx(per_request * len(methods) * RunSettings.users, abs=1)
    assert estimate_cpu([todo], paths) is None  # nothing measured yet
    # resuming: a done group is not run again; its drafts are not retrained
    stamp = (paths.draft(group, "pad-rec") / "model.safetensors").stat().st_mtime_ns
    assert is_done(group, paths) and run_groups([group], paths, settings) == []
    assert (paths.draft(group, "pad-rec") / "model.safetensors").stat().st_mtime_ns == stamp
    # the report is recomputed from the files alone, and agrees with them
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- study:start -->\nold\n<!-- study:end -->\ntail\n")
    report = write_report(paths.results, readme=readme, base_steps=6, base_depth=3)
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- study:end -->\ntail\n")
    assert all(line in text for line in report["conclusion"]) and report["conclusion"]
    assert json.loads((paths.results / "report.json").read_text()) == report
    assert (paths.results / "depth.png").stat().st_size > 0 and not (paths.results / "ablation.png").exists()
    (cell,) = report["factors"]["depth"]
    chain = cell["variants"]["pad-rec"]["chain"]
    by_user = {}
    for r in lines:
        by_user.setdefault(r["method"], {})[r["user"]] = r
    ratios = [by_user["ar"][u]["latency_ms"] / by_user["pad-rec"][u]["latency_ms"] for u in by_user["ar"]]
    assert chain["speedup_vs_ar"]["value"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))), rel=1e-3)
    assert chain["speedup_vs_ar"]["seeds"] == 1 and chain["speedup_vs_ar"]["requests"] == 4
    chain_rows = list(by_user["pad-rec"].values())
    per_step = sum(r["draft_ms"] for r in chain_rows) / sum(r["draft_steps"] for r in chain_rows)
    assert chain["draft_ms_per_step"]["value"] == pytest.approx(per_step, rel=1e-3)
    assert cell["draft_ms_per_step_by_seed"]["pad-rec"]["0"]["value"] == pytest.approx(per_step, rel=1e-3)
    for k, alpha in enumerate(chain["alpha_by_slot"]):  # acceptance by item slot, pooled over the requests
        reached, accepted = (sum(r["by_slot"][k][i] for r in chain_rows) for i in (0, 1))
        assert (alpha is None) == (reached == 0) and (
            not reached or alpha["value"] == pytest.approx(accepted / reached, abs=1e-4)
        )
    assert "vs_no_position" in chain and "vs_no_position" not in cell["variants"]["no-position"]["chain"]
    assert report["factors"]["ablation"] == []  # a group of two is not the four-way ablation
    assert len(load_results(paths.results)) == 1
    assert "## depth" in (paths.results / "report.md").read_text() == report_markdown(report)
    check = padrec(
        "study", "report", "--results", paths.results, "--check"
    )  # recomputed, compared, not written
    assert check.returncode == 0 and "are what the per-group results give" in check.stdout, check.stderr
    published = (paths.results / "report.json").read_text()
    tampered = json.loads(published)
    tampered["factors"]["depth"][0]["variants"]["pad-rec"]["chain"]["speedup_vs_ar"]["high"] += 0.01
    (paths.results / "report.json").write_text(json.dumps(tampered, indent=2) + "\n")
    check = padrec("study", "report", "--results", paths.results, "--check")
    assert (
        check.returncode == 1 and "/factors/depth/0/variants/pad-rec/chain/speedup_vs_ar/high" in check.stderr
    )
    (paths.results / "report.json").write_text(published)
    # the sampling factor: the same drafts benched sampled at temperature 1 beside the greedy group
    twin = Group(synthetic_dir.name, seed=0, steps=6, depth=3, variants=PAIR, temperature=1.0)
    assert run_groups([twin], paths, settings) == [twin]
    assert (paths.draft(group, "pad-rec") / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    sampled = json.loads((paths.group_dir(twin) / "group.json").read_text())
    assert sampled["bench"]["config"]["temperature"] == 1.0 and sampled["group"]["temperature"] == 1.0
    report = write_report(paths.results, base_steps=6, base_depth=3)
    cells = {tuple(c["cell"][2:]): c for c in report["factors"]["sampling"]}
    assert set(cells) == {(6, "greedy"), (6, "T=1")}
    assert report["factors"]["depth"] == [cell]  # the sampled group counts for the sampling factor only
    assert any(
        line.startswith("sampling ") and "/T=1, chain: pad-rec" in line for line in report["conclusion"]
    )
    # the gate factor: an ungated PAD-Rec draft trained beside the same two, all three benched together
    gate = Group(synthetic_dir.name, seed=0, steps=6, depth=3, variants=GATE_VARIANTS)
    assert run_groups([gate], paths, settings) == [gate]
    assert (paths.draft(group, "pad-rec") / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    config = json.loads((paths.draft(gate, UNGATED) / "config.json").read_text())
    assert config["step_gate"] == "none" and config["use_step_position"] and config["use_item_position"]
    report = write_report(paths.results, base_steps=6, base_depth=3)
    (gate_cell,) = report["factors"]["gate"]
    assert list(gate_cell["variants"]) == ["pad-rec", "no-position", UNGATED]
    assert "vs_pad_rec" in gate_cell["variants"][UNGATED]["chain"]
    verdict = rf"^gate .*, chain: {UNGATED} is (faster than|slower than|not distinguishable from) pad-rec\b"
    assert any(re.match(verdict, line) for line in report["conclusion"])  # whichever way the timing went
    assert report["factors"]["depth"] == [cell]  # the gate group counts for the gate factor only
    distinct = {}  # the CPU time: each draft once, though three groups bench the seed-0 pair
    for path in (paths.results / "groups").glob("*/group.json"):
        g = json.loads(path.read_text())
        for v, d in g["drafts"].items():
            distinct[(g["group"]["target"], g["group"]["seed"], g["group"]["steps"], v)] = d["train_seconds"]
    assert len(distinct) == 3 and report["cpu"]["train_s"] == pytest.approx(sum(distinct.values()), abs=0.1)
    assert report["factors"]["target"] == []  # one target so far: nothing to compare
    # the target factor: the same pair distilled from a second target (the tiny target again, under runs/deep),
    # with its own drafts and distillation cache; its quality is read from its published evaluation
    deep = Group(synthetic_dir.name, seed=0, steps=6, depth=3, target="deep", variants=PAIR)
    with pytest.raises(PadrecError, match="make deep-target"):
        run_groups([deep], paths, settings)
    (runs / "deep" / synthetic_dir.name).mkdir(parents=True)
    (runs / "deep" / synthetic_dir.name / "target").symlink_to(tiny_target)
    assert run_groups([deep], paths, settings) == [deep]
    assert paths.draft(deep, "pad-rec").parent.name == "deep" and paths.cache(deep).is_relative_to(
        runs / "deep"
    )
    published = paths.results / "targets" / f"{synthetic_dir.name}-deep" / "eval-all.json"
    evaluated = padrec("evaluate", "--target", tiny_target, "--data", synthetic_dir, "--users", "4", "--json",
                       "--out", published)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = write_report(paths.results, base_steps=6, base_depth=3)
    cells = {c["cell"][1]: c for c in report["factors"]["target"]}
    assert set(cells) == {"ref", "deep"} and cells["ref"]["seeds"] == [0]
    assert cells["ref"]["quality"] is None  # not published for this dataset
    quality = json.loads(published.read_text())
    assert cells["deep"]["quality"]["recall@10"] == quality["recall@10"]
    assert (
        cells["deep"]["quality"]["mostpop"] == quality["mostpop"] and cells["deep"]["quality"]["users"] == 4
    )
    published.rename(
        published.with_name("eval-500.json")
    )  # only the first users evaluated: still cited, as such
    fallback = write_report(paths.results, base_steps=6, base_depth=3)["factors"]["target"]
    assert [c["quality"]["source"].endswith("eval-500.json") for c in fallback if c["cell"][1] == "deep"] == [
        True
    ]
    # both published, the reference target for its first users only: both cited on those users
    published.write_text(published.with_name("eval-500.json").read_text())
    ref_eval = paths.results.parent / synthetic_dir.name / "target" / "eval-500.json"
    ref_eval.parent.mkdir(parents=True)
    ref_eval.write_text(published.read_text())
    shared = write_report(paths.results, base_steps=6, base_depth=3)["factors"]["target"]
    assert {c["cell"][1]: Path(c["quality"]["source"]).name for c in shared} == {
        "ref": "eval-500.json",
        "deep": "eval-500.json",
    }
    deep_rows = [json.loads(x) for x in (paths.group_dir(deep) / "requests.jsonl").read_text().splitlines()]
    ar_rows = [r for r in deep_rows if r["method"] == "ar"]
    per_token = sum(r["latency_ms"] for r in ar_rows) / sum(r["tokens"] for r in ar_rows)
    assert cells["deep"]["ar_ms_per_token"]["value"] == pytest.approx(per_token, rel=1e-3)
    assert report["factors"]["depth"] == [cell]  # the deep group counts for the target factor only
    assert any(line.startswith(f"target {synthetic_dir.name}/deep/6, chain: pad-rec is ") for line in
               report["conclusion"])  # fmt: skip
    assert (paths.results / "target.png").stat().st_size > 0
    assert "| ar ms/token |" in (paths.results / "report.md").read_text()


@pytest.mark.slow
def test_drafts_trained_in_processes_equal_drafts_trained_in_turn(tiny_target, synthetic_dir, tmp_path):
    from safetensors.torch import load_file

    group = Group(synthetic_dir.name, seed=1, steps=4, depth=3, variants=PAIR)
    drafts = {}
    for jobs in (1, 2):
        runs = tmp_path / f"runs-{jobs}"
        (runs / "ref" / synthetic_dir.name).mkdir(parents=True)
        (runs / "ref" / synthetic_dir.name / "target").symlink_to(tiny_target)
        paths = StudyPaths(runs, synthetic_dir.parent, tmp_path / "results")
        records = train_missing(group, paths, RunSettings(users=4, draft_users=40, progress=False, jobs=jobs))
        assert set(records) == set(PAIR) and all(
            r["steps"] == 4 and r["train_seconds"] > 0 for r in records.values()
        )
        assert (paths.cache(group) / "features.safetensors").is_file()  # one cache, both drafts
        drafts[jobs] = {v: load_file(paths.draft(group, v) / "model.safetensors") for v in PAIR}
    for variant in PAIR:
        in_turn, in_processes = drafts[1][variant], drafts[2][variant]
        assert in_turn.keys() == in_processes.keys()
        for name, tensor in in_turn.items():
            torch.testing.assert_close(in_processes[name], tensor, msg=f"{variant}: {name}")
    first, second = (drafts[1][v] for v in PAIR)  # and the two variants are two different drafts
    assert any(not torch.equal(first[k], second[k]) for k in first.keys() & second.keys())


def test_study_refusals(tmp_path):
    assert_clean_error(padrec("study", "plan", "--seeds", "x"), "--seeds")
    assert_clean_error(padrec("study", "plan", "--factors", "speed", "--data-root", tmp_path,
                              "--datasets", "."), "--factors")  # fmt: skip
    assert_clean_error(padrec("study", "plan", "--datasets", "nowhere", "--data-root", tmp_path), "nowhere")
    assert_clean_error(padrec("study", "report", "--results", tmp_path / "none"), "groups/")
    (tmp_path / "groups").mkdir()
    assert_clean_error(
        padrec("study", "report", "--results", tmp_path, "--readme", tmp_path / "no.md"), "--readme"
    )
    assert_clean_error(
        padrec("study", "report", "--results", tmp_path, "--check", "--readme", tmp_path / "x.md"), "--check"
    )
    (tmp_path / "plain.md").write_text("no markers\n")
    assert_clean_error(
        padrec("study", "report", "--results", tmp_path, "--readme", tmp_path / "plain.md"), "study:start"
    )
    assert (tmp_path / "plain.md").read_text() == "no markers\n"
    assert_clean_error(
        padrec("study", "run", "--data-root", tmp_path, "--datasets", ".", "--only", "x-y"), "--only"
    )


def test_a_resumed_training_counts_every_run(tmp_path):
    """A log whose clock restarted on resume (checkpoints from before they kept their time): the cost is every
    run's last figure, summed; a log whose clock carried on counts its last figure once."""
    lines = [
        (10, 30.0),
        (20, 60.0),
        (30, 40.0),
        (40, 110.5),
    ]  # killed after its step-20 checkpoint (the lines after it cut on resume), resumed from there
    (tmp_path / "train_log.jsonl").write_text(
        "".join(json.dumps({"stage": "draft", "step": s, "elapsed_s": e}) + "\n" for s, e in lines)
    )
    (tmp_path / "padrec_draft.json").write_text(
        json.dumps({"args": {"max_steps": 40}, "final": {"acc_0": 0.5}})
    )
    assert training_record(tmp_path) == {"train_seconds": 170.5, "steps": 40, "final": {"acc_0": 0.5}}
    continued = [(10, 30.0), (20, 60.0), (30, 100.0), (40, 130.5)]  # a resume that carries the clock on
    (tmp_path / "train_log.jsonl").write_text(
        "".join(json.dumps({"stage": "draft", "step": s, "elapsed_s": e}) + "\n" for s, e in continued)
    )
    assert training_record(tmp_path)["train_seconds"] == 130.5
