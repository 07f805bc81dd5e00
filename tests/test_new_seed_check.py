"""scripts/new_seed_check.py: a new seed's figures against what a published report gave its cell."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "new_seed_check.py"
spec = importlib.util.spec_from_file_location("new_seed_check", SCRIPT)
new_seed_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(new_seed_check)


def _interval(value, low, high):
    return {"value": value, "low": low, "high": high}


def _cell(seeds, held_out=(), mean=(1.0, 0.95, 1.05), new_seed=(1.0, 0.9, 1.1)):
    return {
        "cell": ["Instruments", "ref"],
        "seeds": seeds,
        "variants": {"pad-rec": {"chain": {"vs_no_position": _interval(*mean)}}},
        "new_seed": {"pad-rec": {"chain": {"vs_no_position": _interval(*new_seed)}}},
        "held_out": list(held_out),
    }


def _held_out(seed, value):
    return {"group": f"g-seed{seed}", "seed": seed, "variant": "pad-rec", "kind": "chain",
            "metric": "vs_no_position", "value": value}  # fmt: skip


def test_only_new_seeds_are_judged_once_against_both_published_intervals(tmp_path, capsys):
    published = {"factors": {"ablation": [_cell([0, 1])], "budget": [_cell([0, 1])]}}
    held = [_held_out(0, 1.2), _held_out(1, 1.0), _held_out(2, 1.07)]
    current = {"factors": {"ablation": [_cell([0, 1, 2], held)], "budget": [_cell([0, 1, 2], held)]}}
    records = new_seed_check.compare(published, current)
    assert [(r["seed"], r["inside_mean_interval"], r["inside_new_seed_interval"]) for r in records] == [
        (2, False, True)
    ]
    paths = [tmp_path / "published.json", tmp_path / "current.json"]
    for path, report in zip(paths, (published, current), strict=True):
        path.write_text(json.dumps(report))
    assert new_seed_check.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "mean interval: 0 of 1" in out and "new-seed interval: 1 of 1" in out


def test_an_unreadable_report_is_one_line_and_exit_2(tmp_path, capsys):
    assert new_seed_check.main([str(tmp_path / "missing.json"), str(tmp_path / "also.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
