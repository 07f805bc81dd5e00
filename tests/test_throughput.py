"""``padrec bench --throughput``: every method at every batch size, lists checked against stock ``generate``,
a report with users per second, latency percentiles and where speculation stops paying."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_cli import assert_clean_error, padrec

from modeling_padrec.throughput import Cell, ThroughputConfig, summarize, throughput_markdown

pytestmark = pytest.mark.slow


def test_throughput_report(tiny_target, synthetic_dir, trained_draft, tmp_path):
    out = tmp_path / "tp"
    proc = padrec("bench", "--throughput", "--target", tiny_target, "--data", synthetic_dir, "--draft", trained_draft,
                  "--users", 6, "--batch-sizes", "3,1", "--tree", 3, "--tree-depth", 2, "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    methods = report["methods"]
    bound = next(n for n in methods if n.startswith("perfect:") and n != "perfect:list")
    assert list(methods) == ["generate", "ar-jf", "chain:pad-rec", "tree:pad-rec", bound, "perfect:list"]
    assert int(bound.split(":")[1]) >= 1  # the chains' depth
    assert report["config"]["batch_sizes"] == [1, 3]
    assert list(methods["tree:pad-rec"]) == ["1"]  # trees decode one request at a time
    for name, by_batch in methods.items():
        for batch, m in by_batch.items():
            assert m["identical"] == 1.0 and m["users_per_s"] > 0
            assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"]
            assert m["x_generate"] == pytest.approx(
                m["users_per_s"] / methods["generate"][batch]["users_per_s"], 1e-2
            )
            # seconds in the target's decoder and the draft, as shares of the wall-clock
            share = m["wall_share"]
            assert 0 < share["target"] < 1 and 0 <= share["draft"] < 1 and share["other"] >= 0
            assert share["target"] + share["draft"] + share["other"] == pytest.approx(1.0, abs=2e-3)
            if not name.startswith("perfect:"):  # (a bound's proposals are host work, timed as its draft's)
                assert (share["draft"] > 0) == name.startswith(("chain:", "tree:")), (name, batch)
            if name != "generate":  # jump-forward: never more target forwards than tokens
                assert m["target_forwards_per_user"] < methods["generate"][batch]["target_forwards_per_user"]
    for batch in ("1", "3"):  # a draft that is always right needs no more rounds than the real one
        assert (
            methods[bound][batch]["target_forwards_per_user"]
            <= methods["chain:pad-rec"][batch]["target_forwards_per_user"]
        )
        assert methods["perfect:list"][batch]["target_forwards_per_user"] == 2.0  # prefill + the whole list
    assert set(report["best"]) == {"1", "3"} and set(report["speculation_pays"]) == {"1", "3"}
    assert not any(n.startswith("perfect:") for n in report["best"].values())  # bounds are not ways to serve
    assert (out / "throughput.png").stat().st_size > 0
    assert "| batch |" in (out / "report.md").read_text()
    assert "Where the wall-clock goes" in (out / "report.md").read_text()


def test_where_speculation_stops_paying_is_read_from_the_figures():
    users = [str(i) for i in range(12)]

    def cell(users_per_s: float) -> Cell:
        return Cell(latency_ms=[1.0, 2.0, 3.0], forwards=24, walls=[len(users) / users_per_s])

    cfg = ThroughputConfig(target="t", data="d", batch_sizes=[16, 1, 4])
    cells = {
        "generate": {1: cell(1.0), 4: cell(3.0), 16: cell(8.0)},
        "ar-jf": {1: cell(1.5), 4: cell(3.5), 16: cell(9.0)},
        "chain:pad-rec": {1: cell(3.0), 4: cell(5.0), 16: cell(8.5)},
        "tree:pad-rec": {1: cell(4.0)},
        "perfect:5": {1: cell(9.0), 4: cell(9.0), 16: cell(20.0)},
    }
    report = summarize(cfg, cells, users, SimpleNamespace(list_len=5))
    assert report["speculation_pays"] == {"1": True, "4": True, "16": False}
    assert report["speculation_stops_paying_at"] == 16
    assert report["best"] == {"1": "tree:pad-rec", "4": "chain:pad-rec", "16": "ar-jf"}
    assert report["methods"]["chain:pad-rec"]["4"]["x_generate"] == pytest.approx(5.0 / 3.0, abs=1e-3)
    assert report["methods"]["ar-jf"]["16"]["target_forwards_per_user"] == 2.0
    report["hardware"] = {"cpu": "cpu", "torch_threads": 1, "torch": "t", "transformers": "t"}
    assert "Speculation stops paying at batch size 16" in throughput_markdown(report)
    assert "Where the wall-clock goes" not in throughput_markdown(report)  # no cell timed its parts


def test_wall_share_splits_the_cells_wall_clock_over_its_repeats():
    cell = Cell(walls=[2.0, 6.0], target_seconds=[1.0, 3.0], draft_seconds=[0.5, 1.5])
    assert cell.wall_share() == {"target": 0.5, "draft": 0.25, "other": 0.25}
    assert Cell(walls=[1.0]).wall_share() is None


def test_throughput_bad_arguments(tiny_target, synthetic_dir, tmp_path):
    base = ("bench", "--target", tiny_target, "--data", synthetic_dir, "--users", 2)
    assert_clean_error(padrec(*base, "--throughput", "--batch-sizes", "4,x"), "--batch-sizes")
    assert_clean_error(padrec(*base, "--throughput", "--batch-sizes", "0"), "--batch-sizes")
    assert_clean_error(padrec(*base, "--throughput", "--tree", "auto"), "--tree auto")
    assert_clean_error(padrec(*base, "--batch-sizes", "1,2"), "--throughput")
    assert_clean_error(padrec(*base, "--throughput", "--lookup-tokens", 3), "--lookup-tokens")
    assert_clean_error(padrec(*base, "--throughput", "--temperature", 1), "--temperature")
    assert_clean_error(padrec(*base, "--throughput", "--tree", 4, "--tree-rank", "acceptance"), "--tree-rank")
