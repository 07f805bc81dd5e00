"""``padrec bench`` on tiny models: report structure, plots, identical = 1.0, the mismatch refusal, and the
acceptance bookkeeping. No timing is asserted anywhere: speed is what the benchmark reports, not a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from modeling_padrec import bench as bench_module
from modeling_padrec.bench import (
    REPORT_KEYS,
    BenchConfig,
    BenchMismatch,
    Measurement,
    Method,
    TreeSpec,
    run_bench,
    summarize,
    tree_markdown,
)
from modeling_padrec.cli import main
from modeling_padrec.data import load_dataset
from modeling_padrec.decoding import Recommender
from modeling_padrec.draft import new_draft
from modeling_padrec.plots import PLOTS
from modeling_padrec.target import load_target

pytestmark = pytest.mark.slow
USERS = 8
STOCK_DRAFTS = ["generate:pad-rec", "generate:no-position"]
ENGINE_DRAFTS = ["pad-rec", "no-position"]


def bench_cli(target, data, *options) -> int:
    """``padrec bench --target TARGET --data DATA OPTIONS...`` in this process; its exit code."""
    return main(["bench", "--target", str(target), "--data", str(data), *map(str, options)])


@pytest.fixture(scope="module")
def drafts(tmp_path_factory, tiny_target, synthetic_dir):
    """Two untrained drafts with different position signals: lossless must hold for any draft."""
    target = load_target(tiny_target)
    tm = target.check_dataset(load_dataset(synthetic_dir))
    root = tmp_path_factory.mktemp("bench-drafts")
    out = []
    for name, item, step in (("both", True, True), ("none", False, False)):
        new_draft(target, tm, depth=3, use_item_position=item, use_step_position=step).save_pretrained(
            root / name
        )
        out.append(str(root / name))
    return out


@pytest.fixture(scope="module")
def assistant(tmp_path_factory, tiny_target, synthetic_dir):
    from modeling_padrec.assistant import train_assistant

    out = tmp_path_factory.mktemp("bench-assistant") / "small"
    return str(train_assistant(tiny_target, synthetic_dir, out, depth=3, max_steps=10, max_users=60))


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, tiny_target, synthetic_dir, drafts, assistant):
    out = tmp_path_factory.mktemp("bench") / "report"
    code = bench_cli(tiny_target, synthetic_dir, "--users", USERS, "--warmup", 1, "--assistant", assistant,
                     "--draft", drafts[0], "--draft", drafts[1], "--out", out)  # fmt: skip
    assert code == 0
    return out


def test_report_has_every_method_and_key_and_is_lossless(bench_out):
    report = json.loads((bench_out / "report.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["ar", "prompt_lookup", "small_lm", *STOCK_DRAFTS, "ar-jf", *ENGINE_DRAFTS]
    for name, m in methods.items():
        assert set(REPORT_KEYS) <= set(m), name
        assert m["identical"] == 1.0, name
        assert m["requests"] == USERS
        assert isinstance(m["alpha_by_step"], list) and isinstance(m["alpha_by_slot"], dict)
        assert all(0.0 <= a <= 1.0 for a in [*m["alpha_by_step"], *m["alpha_by_slot"].values()])
        assert m["profile_ms_per_request"]["verify"] > 0 and m["latency_ms_median"] > 0
    ar = methods["ar"]
    assert ar["tau"] == 1.0 and ar["alpha_by_step"] == [] and ar["draft_ms_per_step"] is None
    small = methods["small_lm"]  # the same tokens, fewer forwards
    assert ar["target_forwards_mean"] == pytest.approx(small["tau"] * small["target_forwards_mean"], rel=1e-3)
    for name in ("small_lm", *STOCK_DRAFTS, *ENGINE_DRAFTS):
        assert methods[name]["tau"] > 1.0, name  # drafts of any quality accept something on a list
        assert len(methods[name]["alpha_by_step"]) == 3  # depth 3 (engine: 3 choices per round)
        assert methods[name]["draft_ms_per_step"] > 0
    # the same outputs give the same quality, and the same choices and forced tokens
    assert len({(m["recall@10"], m["ndcg@10"], m["choices_per_list"]) for m in methods.values()}) == 1
    for name in STOCK_DRAFTS + ENGINE_DRAFTS:
        assert methods[name]["use_item_position"] == name.endswith("pad-rec")
    # jump-forward alone: one target forward per position where the catalog leaves a choice
    jf = methods["ar-jf"]
    assert jf["target_forwards_mean"] == jf["choices_per_list"] == jf["perfect_draft_forwards_mean"]
    assert jf["tau"] > 1.0 and jf["forced_share"] > 0 and jf["alpha_by_step"] == []
    for name in ENGINE_DRAFTS:  # a draft never needs fewer forwards than a perfect one
        assert methods[name]["target_forwards_mean"] >= methods[name]["perfect_draft_forwards_mean"] > 0
    hw = report["hardware"]
    wanted = {"cpu", "cpu_isa", "torch_threads", "torch", "transformers", "peft", "accelerate", "device"}
    assert wanted <= set(hw)
    cfg = report["config"]  # paths relative to where the bench ran, never machine-local absolute ones
    for path in [cfg["target"], cfg["data"], *cfg["drafts"]]:
        assert not path.startswith("/") and (Path.cwd() / path).exists(), path


def test_report_files_plots_and_markdown(bench_out):
    for name in PLOTS:
        assert (bench_out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (bench_out / "report.md").read_text()
    names = ["ar", "prompt_lookup", "small_lm", *STOCK_DRAFTS, "ar-jf", *ENGINE_DRAFTS]
    for name in names:
        assert f"| {name} |" in md
    rows = [json.loads(line) for line in (bench_out / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == len(names) * USERS  # warm-up requests are not in the figures
    for row in rows:
        if row["method"] in ("ar", "prompt_lookup", "small_lm", *STOCK_DRAFTS):
            # stock path: each target forward yields one token plus the draft tokens it kept
            assert row["target_forwards"] + sum(r[3] for r in row["rounds"]) == len(row["output_ids"])
        for start, drafted, accepted, kept, *choices in row["rounds"]:
            assert kept <= accepted <= drafted and start + accepted <= len(row["output_ids"])
            assert all(0 <= o < drafted for o in (choices[0] if choices else []))
    assert not list(bench_out.parent.glob(".*tmp-*"))


class BanBest(LogitsProcessor):
    """A lossy 'method': forbids the best allowed token at the first generated position."""

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.prompt_len:
            scores = scores.clone()
            scores[0, scores[0].argmax()] = -float("inf")
        return scores


class LossyMethod(Method):
    def run(self, rec, user, split, recorder, seed=0):
        prompt_len = len(rec.prompt(user, split))
        with recorder:
            return rec.recommend(user, split, logits_processor=[BanBest(prompt_len)])


def test_a_lossy_method_stops_the_bench_and_nothing_is_written(
    monkeypatch, tmp_path, tiny_target, synthetic_dir, capsys
):
    real = bench_module.build_methods
    monkeypatch.setattr(
        bench_module, "build_methods", lambda *a, **k: [*real(*a, **k), LossyMethod("lossy", "x")]
    )
    out = tmp_path / "report"
    with pytest.raises(BenchMismatch, match=r"method lossy is not lossless: warm-up request 0 \(user "):
        run_bench(
            BenchConfig(str(tiny_target), str(synthetic_dir), users=2, warmup=1), out=out, progress=False
        )
    assert not out.exists()
    code = bench_cli(tiny_target, synthetic_dir, "--users", 2, "--warmup", 0, "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "padrec: error: method lossy is not lossless: request 0" in err
    assert "differs from ar at generated token 0" in err and "Traceback" not in err
    assert not out.exists()


def test_bad_draft_folder_is_one_line(tmp_path, tiny_target, synthetic_dir, capsys):
    code = bench_cli(tiny_target, synthetic_dir, "--draft", tmp_path / "missing", "--out", tmp_path / "r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("padrec: error:") and "missing" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_acceptance_bookkeeping_by_step_and_slot(tiny_target, synthetic_dir):
    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir), engine="generate")
    tm = rec.token_map
    user = rec.dataset.eval_users("test")[0]
    items = rec.encoder.item_tokens
    out = [*items[0], tm.sep_id, *items[1], tm.eos_id]  # slots a b c sep a b c other
    ar = Measurement("ar", user, out, [0, 1], 10.0, len(out), 8.0, 0.0, [])
    # round 1 at 0: 3 drafted, 1 accepted (step 0 accepted at slot a, step 1 rejected at slot b);
    # round 2 at 2: 4 drafted, all accepted (slots c sep a b), round 3 at 7: 1 drafted, 0 accepted (other)
    rounds = [(0, 3, 1, 1), (2, 4, 4, 4), (7, 1, 0, 0)]
    spec = Measurement("x", user, out, [0, 1], 5.0, 3, 4.0, 0.5, rounds, draft_steps=8)
    s = summarize("x", [spec], [ar], rec, "test")
    assert s["alpha_by_step"] == [0.6667, 0.5, 1.0, 1.0]
    assert s["alpha_by_slot"] == {"a": 1.0, "b": 0.5, "c": 1.0, "sep": 1.0, "other": 0.0}
    assert s["speedup"] == 2.0 and s["identical"] == 1.0
    assert s["tau"] == round(len(out) / 3, 4) and s["draft_ms_per_step"] == round(0.5 / 8, 4)
    assert s["profile_ms_per_request"] == {"draft": 0.5, "verify": 4.0, "other": 0.5, "total": 5.0}
    # engine rounds count drafted choices only: round at 0 drafts choices at offsets 0 and 2 (the token at
    # offset 1 forced), keeps 2 tokens: choice 0 accepted, choice 1 (offset 2) reached and rejected
    engine = Measurement("e", user, out, [0, 1], 5.0, 2, 4.0, 0.5, [(0, 3, 2, 2, [0, 2])], draft_steps=3)
    e = summarize("e", [engine], [ar], rec, "test", engine_depth=2)
    assert e["alpha_by_step"] == [1.0, 0.0] and e["alpha_by_slot"] == {"a": 1.0, "c": 0.0}
    assert e["forced_draft_steps_mean"] == 0 and e["speedup_if_forced_steps_free"] is None
    # 2 of its 4 draft steps over forced tokens, 1 ms of drafting: free, they would leave 5.0 - 0.5 ms of 10.0
    engine = Measurement("e", user, out, [0, 1], 5.0, 2, 4.0, 1.0, [(0, 3, 2, 2, [0, 2])], 4, 2)
    e = summarize("e", [engine], [ar], rec, "test", engine_depth=2)
    assert e["forced_draft_steps_mean"] == 2 and e["speedup_if_forced_steps_free"] == round(10.0 / 4.5, 4)
    assert e["choices_per_list"] == sum(rec.trie.walk(out[:i]).num_allowed() > 1 for i in range(len(out)))


def test_rotation_and_warmup_do_not_change_outputs(tiny_target, synthetic_dir, drafts, assistant):
    """Interleaving methods must not leak state between them (a draft's hooks are only on while it runs)."""
    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir), engine="generate")
    user = rec.dataset.eval_users("test")[1]
    target = rec.target.model
    hooks_before = len(target.get_base_model().model._forward_hooks)
    methods = bench_module.build_methods(rec, drafts, assistant)
    assert any(m.draft is not None for m in methods)
    recorder = bench_module.RoundRecorder(target)
    first = [bench_module.measure(m, rec, user, "test", recorder).output_ids for m in methods]
    second = [bench_module.measure(m, rec, user, "test", recorder).output_ids for m in reversed(methods)]
    assert first == second[::-1] and len(set(map(tuple, first))) == 1
    assert len(target.get_base_model().model._forward_hooks) == hooks_before
    assert "_get_candidate_generator" not in target.get_base_model().__dict__
    assert torch.equal(torch.tensor(first[0]), torch.tensor(second[0]))


def test_depth_override_reaches_every_drafting_method(tiny_target, synthetic_dir, drafts, assistant):
    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir), engine="generate")
    trained = {m.name: m for m in bench_module.build_methods(rec, drafts, assistant)}
    assert trained["prompt_lookup"].generate_kwargs["prompt_lookup_num_tokens"] == 5
    assert trained["generate:pad-rec"].info["depth"] == trained["generate:pad-rec"].info["trained_depth"] == 3
    assert trained["pad-rec"].engine.depth == 3
    deep = {m.name: m for m in bench_module.build_methods(rec, drafts, assistant, depth=7)}
    assert deep["prompt_lookup"].generate_kwargs["prompt_lookup_num_tokens"] == 7
    for name in ("small_lm", *STOCK_DRAFTS):
        model = deep[name].generate_kwargs["assistant_model"]
        assert model.generation_config.num_assistant_tokens == 7, name
        assert deep[name].info["depth"] == 7 and deep[name].info["trained_depth"] == 3, name
    for name in ENGINE_DRAFTS:
        assert deep[name].engine.depth == deep[name].info["depth"] == 7, name


def test_recorder_agrees_with_the_drafts_own_statistics(tiny_target, synthetic_dir, drafts):
    """Two independent bookkeepers of the same rounds: the bench's wrapper around transformers' candidate
    generator, and the PAD-Rec draft's own stats (which count its blind first round apart)."""
    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir), engine="generate")
    method = next(m for m in bench_module.build_methods(rec, drafts[:1]) if m.draft is not None)
    recorder = bench_module.RoundRecorder(rec.target.model)
    for user in rec.dataset.eval_users("test")[:4]:
        method.draft.stats.reset()
        m = bench_module.measure(method, rec, user, "test", recorder)
        ours = [accepted for _, drafted, accepted, _ in m.rounds if drafted]
        assert ours == method.draft.stats.accepted_per_round()
        assert m.rounds[0][1] == 1  # the blind first round drafts one token


def test_out_that_is_not_an_earlier_report_is_refused(tmp_path, tiny_target, synthetic_dir, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code = bench_cli(tiny_target, synthetic_dir, "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "is not an earlier output of this command" in err
    assert (out / "mine.txt").read_text() == "keep"


def test_named_drafts_and_folders_with_equals_signs(tmp_path, tiny_target, synthetic_dir, drafts):
    import shutil

    odd = tmp_path / "lr=0.1"
    shutil.copytree(drafts[0], odd)
    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir), engine="generate")
    names = [m.name for m in bench_module.build_methods(rec, [f"mine={drafts[1]}", str(odd)])]
    assert names == ["ar", "prompt_lookup", "generate:mine", "generate:pad-rec", "ar-jf", "mine", "pad-rec"]


def test_draft_trees_in_the_bench_with_a_calibrated_shape(tmp_path, tiny_target, synthetic_dir, drafts):
    out = tmp_path / "tree"
    code = bench_cli(tiny_target, synthetic_dir, "--users", 4, "--warmup", 1, "--draft", drafts[0], "--engine-depth",
                     2, "--tree", "auto", "--tree-width", 2, "--tree-depth", 3, "--only", "pad-rec,tree:pad-rec",
                     "--out", out)  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["ar", "pad-rec", "tree:pad-rec"]
    tree = report["methods"]["tree:pad-rec"]
    cal = tree["calibration"]
    assert tree["identical"] == 1.0 and tree["kind"] == "engine" and tree["width"] == cal["width"]
    assert cal["width"] == (1 if cal["rank"] == "chain" else 2)
    assert cal["split"] == "valid" and (tree["depth"], tree["budget"]) == (cal["depth"], cal["budget"])
    ranks = {"draft", "acceptance", "sibling", "chain"}  # the chain is a candidate: no tree at all
    assert tree["rank"] == cal["rank"] and {g["rank"] for g in cal["grid"]} == ranks
    assert {g["budget"] for g in cal["grid"] if g["rank"] == "chain"} == {None}
    first, later = cal["acceptance_by_sibling"]
    assert first[0][0] == 0.0 and [r for _, r in first] == sorted(r for _, r in first)
    shape = (tree["rank"], tree["depth"], tree["budget"])
    chosen = [g for g in cal["grid"] if (g["rank"], g["depth"], g["budget"]) == shape]
    assert chosen[0]["choices_per_ms"] == max(g["choices_per_ms"] for g in cal["grid"])
    assert all(g["draft_ms"] >= 0 for g in cal["grid"]) and min(cal["draft_ms_model"].values()) >= 0
    chain_model = cal["chain_draft_ms_model"]  # chain shapes are charged at the chain's own fitted cost
    assert chain_model["rounds"] > 0 and min(chain_model.values()) >= 0
    for g in cal["grid"]:
        if g["rank"] == "chain":
            assert g["draft_ms"] >= chain_model["per_round"]
    curve = cal["acceptance"]
    assert curve[0][0] == 0.0 and [r for _, r in curve] == sorted(r for _, r in curve)
    assert {g["depth"] for g in cal["grid"]} <= {1, 2, 3} and cal["rounds"] > 0
    assert all(v > 0 for v in cal["target_ms"].values()) and len(cal["draft_ms_by_level"]) <= 3
    assert abs(sum(b["share"] for b in cal["branching"]) - 1) < 0.01 and cal["branching"]
    for level in cal["confidence"]:
        assert 0 <= level["accepted"] <= 1 and 0 < level["confidence"] <= 1 and level["drafted"] > 0
    assert report["config"]["tree"] == {
        "budget": "auto", "width": 2, "depth": 3, "calibration_users": 16, "rank": "auto",
    }  # fmt: skip
    assert tree["tau_vs_chain"] > 0 and tree["speedup_vs_chain"] > 0
    text = (out / "report.md").read_text()
    assert "rounds of a width-2 tree" in text  # the traced tree's width, whatever shape was chosen
    assert (
        "## Draft trees" in text and "tree_confidence.png" in text and (out / "tree_confidence.png").is_file()
    )


def test_a_calibration_that_finds_no_tree_faster_gives_the_chain(
    monkeypatch, tiny_target, synthetic_dir, drafts
):
    """When every draft forward costs a thousand seconds and every verified position one, nothing beats drafting
    one choice a round (no forward beyond the catch-up every shape pays) and verifying only it: the chain one
    choice deep, tied with the one-node tree. The calibration chooses the chain, and the bench's tree method is
    the engine's plain chain."""
    from modeling_padrec import calibration
    from modeling_padrec.engine.proposers import DraftProposer
    from modeling_padrec.engine.tree import TreeProposer

    monkeypatch.setattr(
        calibration, "target_cost", lambda engine, prompt, sizes, repeats=5: {n: 1000.0 * n for n in sizes}
    )
    monkeypatch.setattr(calibration, "draft_cost_model", lambda rounds: (0.0, 1e6, 0.0))
    rec = Recommender(load_target(tiny_target), load_dataset(synthetic_dir))
    stock = next(m for m in bench_module.build_methods(rec, [drafts[0]]) if m.name == "pad-rec")
    method = TreeSpec(budget="auto", width=2, depth=3).method(rec, "tree:pad-rec", stock)
    info = method.info
    assert (info["rank"], info["width"], info["budget"], info["depth"]) == ("chain", 1, None, 1)
    assert info["calibration"]["rank"] == "chain" and info["calibration"]["width"] == 1
    proposer = method.engine.proposer
    assert isinstance(proposer, DraftProposer) and not isinstance(proposer, TreeProposer)
    assert method.engine is rec.engine(stock.draft, 1)
    report = {"methods": {"tree:pad-rec": {**info, "calibration": None, "drafted_per_round": 2.0}}}
    assert "no tree, calibration chose the draft's chain, depth 1" in "\n".join(tree_markdown(report))


@pytest.mark.parametrize("rank", ["acceptance", "sibling"])
def test_a_fixed_tree_budget_ranked_by_a_calibrated_acceptance_curve(
    tmp_path, tiny_target, synthetic_dir, drafts, rank
):
    out = tmp_path / "ranked"
    code = bench_cli(tiny_target, synthetic_dir, "--users", 3, "--warmup", 1, "--draft", drafts[0], "--tree", 4,
                     "--tree-depth", 2, "--tree-rank", rank, "--only", "tree:pad-rec", "--out", out)  # fmt: skip
    assert code == 0
    tree = json.loads((out / "report.json").read_text())["methods"]["tree:pad-rec"]
    assert (tree["budget"], tree["depth"], tree["rank"], tree["identical"]) == (4, 2, rank, 1.0)
    cal = tree["calibration"]
    assert cal["rank"] == rank and {g["budget"] for g in cal["grid"]} == {4}
    assert {g["rank"] for g in cal["grid"]} == {rank}  # a fixed valuation: no chain among the candidates
    text = (out / "report.md").read_text()
    assert f"valued by {bench_module.RANK_WORDS[rank]}" in text and "for the draft's first pick" in text


def test_tree_rank_without_a_tree_is_one_line(tmp_path, tiny_target, synthetic_dir, drafts, capsys):
    code = bench_cli(tiny_target, synthetic_dir, "--users", 2, "--draft", drafts[0], "--tree-rank", "draft")
    err = capsys.readouterr().err
    assert code == 2 and "--tree-rank" in err and "add --tree" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "many", "-3"])
def test_bad_tree_budget_is_one_line(tmp_path, tiny_target, synthetic_dir, drafts, value, capsys):
    code = bench_cli(tiny_target, synthetic_dir, "--users", 2, "--draft", drafts[0], f"--tree={value}")
    err = capsys.readouterr().err
    assert code == 2 and "--tree" in err and "Traceback" not in err


def test_sampled_bench_is_reproducible_and_checks_every_list(
    monkeypatch, tmp_path, tiny_target, synthetic_dir, drafts, capsys
):
    from modeling_padrec.bench import TreeSpec, bench_run

    def run(temperature):
        cfg = BenchConfig(str(tiny_target), str(synthetic_dir), drafts=drafts, users=6, warmup=1,
                          only=["ar-jf", *ENGINE_DRAFTS, "tree:pad-rec"], tree=TreeSpec(budget=4, depth=2),
                          temperature=temperature)  # fmt: skip
        return bench_run(cfg, progress=False)

    greedy, sampled, again = run(None), run(2.0), run(2.0)
    assert sampled.report["config"]["temperature"] == 2.0
    for name, measurements in sampled.runs.items():
        assert [m.output_ids for m in measurements] == [m.output_ids for m in again.runs[name]], name
        assert all(len(set(m.items)) == len(m.items) == sampled.rec.list_len for m in measurements)
    # it really samples: stock generate and the engine drew lists other than the greedy ones
    outputs = lambda r, name: [m.output_ids for m in r.runs[name]]  # noqa: E731
    assert outputs(sampled, "ar") != outputs(greedy, "ar")
    assert outputs(sampled, "pad-rec") != outputs(greedy, "pad-rec")
    assert sampled.report["methods"]["pad-rec"]["identical"] < 1.0
    assert "sampled at temperature 2.0" in bench_module.report_markdown(sampled.report)

    # a sampled list that is not a complete list of distinct items stops the run
    class Broken(Method):
        def run(self, rec, user, split, recorder, seed=0):
            r = Method.run(self, rec, user, split, recorder, seed)
            r.items[-1] = None
            return r

    real = bench_module.build_methods
    monkeypatch.setattr(
        bench_module, "build_methods", lambda *a, **k: [*real(*a, **k), Broken("broken", "ar")]
    )
    out = tmp_path / "report"
    code = bench_cli(tiny_target, synthetic_dir, "--users", 2, "--temperature", 1, "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "padrec: error: method broken sampled an invalid list: warm-up request 0" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as stop:
        bench_cli(tiny_target, synthetic_dir, "--temperature", 0)
    assert stop.value.code == 2 and "expected a positive number, got 0" in capsys.readouterr().err
