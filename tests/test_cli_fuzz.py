"""Every subcommand against damaged copies of every artifact padrec writes, and odd arguments: one clear line,
a non-zero exit, no traceback, and nothing written or half-written.

A table, not random bytes: each damage is one a user meets (a download cut short, a hand-edited config, a file
from another model, the leftovers of a killed run), and each runs through every command that reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modeling_padrec.cli import main
from modeling_padrec.data import load_dataset
from modeling_padrec.draft import new_draft
from modeling_padrec.target import load_target

pytestmark = pytest.mark.slow


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:200] = bytes(range(192))  # the header after its length prefix
    path.write_bytes(bytes(data))


def _not_json(path: Path) -> None:
    path.write_text('{"this is": "cut sh')


def _drop_fields(*fields):
    def damage(path: Path) -> None:
        obj = json.loads(path.read_text())
        for f in fields:
            obj.pop(f, None)
        path.write_text(json.dumps(obj))

    return damage


def _other_model_type(path: Path) -> None:
    obj = json.loads(path.read_text())
    obj["model_type"] = "bert"
    path.write_text(json.dumps(obj))


def _foreign_tokenizer(path: Path) -> None:
    """A tokenizer of another vocabulary: padrec's code tokens renamed."""
    path.write_text(path.read_text().replace("<a_", "<z_"))


TARGET_DAMAGE = {
    "adapter weights truncated": ("adapter_model.safetensors", _truncate),
    "adapter weights garbled": ("adapter_model.safetensors", _garble),
    "adapter config not JSON": ("adapter_config.json", _not_json),
    "padrec_target.json not JSON": ("padrec_target.json", _not_json),
    "padrec_target.json without fields": ("padrec_target.json", _drop_fields("levels", "list_len")),
    "base weights truncated": ("base/model.safetensors", _truncate),
    "base config not JSON": ("base/config.json", _not_json),
    "tokenizer of another vocabulary": ("tokenizer.json", _foreign_tokenizer),
    "tokenizer not JSON": ("tokenizer.json", _not_json),
}
DRAFT_DAMAGE = {
    "draft weights truncated": ("model.safetensors", _truncate),
    "draft weights garbled": ("model.safetensors", _garble),
    "draft weights missing": ("model.safetensors", lambda p: p.unlink()),
    "draft config not JSON": ("config.json", _not_json),
    "draft config without fields": (
        "config.json",
        _drop_fields("rec_token_ids", "rec_token_slots", "hidden_size"),
    ),
    "draft config of another model": ("config.json", _other_model_type),
}


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory, tiny_target, synthetic_dir) -> Path:
    target = load_target(tiny_target)
    tm = target.check_dataset(load_dataset(synthetic_dir))
    out = tmp_path_factory.mktemp("fuzz-draft") / "draft"
    new_draft(target, tm, depth=2).save_pretrained(out)
    return out


def run_clean_failure(argv: list[str], capsys, out: Path | None = None) -> str:
    """Run the CLI; assert a non-zero exit, one error line, no traceback, nothing written at ``out``."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: usage line + error, exit 2
        code = e.code
    except Exception as e:  # noqa: BLE001 - any other exception would be a traceback for the user
        pytest.fail(f"{argv}: traceback ({type(e).__name__}: {e})")
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert code not in (0, None), f"{argv}: exit {code}"
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    if out is not None:
        assert not out.exists(), f"{argv}: wrote {out}"
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
        assert not leftovers, f"{argv}: left {leftovers}"
    return errors[0]


def _commands(target, data, draft, out):
    """Every command that reads a target (and a draft), writing under ``out`` where it writes at all."""
    reads = ["--target", target, "--data", data]
    users = [*reads, "--users", 2]
    return {
        "recommend": ["recommend", *users, "--stats", out / "stats.json"],
        "recommend --draft": ["recommend", *users, "--draft", draft],
        "evaluate": ["evaluate", *users, "--out", out / "eval.json"],
        "bench": ["bench", *users, "--draft", draft, "--out", out / "bench"],
        "train-draft": ["train-draft", *reads, "--out", out / "draft", "--max-steps", 1],
        "export": [
            "export",
            "--draft",
            draft,
            "--target",
            target,
            "--repo-id",
            "org/x",
            "--out",
            out / "export",
        ],
        "stamp-catalog": ["stamp-catalog", *reads, "--draft", draft],
    }


@pytest.mark.parametrize("damage", list(TARGET_DAMAGE))
def test_damaged_target(damage, tmp_path, tiny_target, synthetic_dir, draft_dir, capsys):
    target = tmp_path / "target"
    shutil.copytree(tiny_target, target)
    name, fn = TARGET_DAMAGE[damage]
    fn(target / name)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    for command, argv in _commands(target, synthetic_dir, draft_dir, tmp_path / "out").items():
        line = run_clean_failure(argv, capsys, tmp_path / "out")
        assert line.startswith("padrec: error:"), (command, line)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before  # nothing rewritten


@pytest.mark.parametrize("damage", list(DRAFT_DAMAGE))
def test_damaged_draft(damage, tmp_path, tiny_target, synthetic_dir, draft_dir, capsys):
    draft = tmp_path / "draft"
    shutil.copytree(draft_dir, draft)
    name, fn = DRAFT_DAMAGE[damage]
    fn(draft / name)
    commands = _commands(tiny_target, synthetic_dir, draft, tmp_path / "out")
    for command in ("recommend --draft", "bench", "export", "stamp-catalog"):
        line = run_clean_failure(commands[command], capsys, tmp_path / "out")
        assert line.startswith("padrec: error:") and str(draft) in line, (command, line)


def test_swapped_and_half_written_folders(tmp_path, tiny_target, synthetic_dir, draft_dir, capsys):
    # a target's staging folder from a killed run: adapter files, no padrec_target.json
    half = tmp_path / ".target.tmp-killed"
    half.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(Path(tiny_target) / name, half / name)
    half_draft = tmp_path / ".draft.tmp-killed"
    half_draft.mkdir()
    shutil.copyfile(draft_dir / "config.json", half_draft / "config.json")
    cases = [
        (draft_dir, draft_dir),  # a draft folder given as the target
        (tiny_target, tiny_target),  # a target folder given as the draft
        (half, draft_dir),
        (tiny_target, half_draft),
    ]
    for target, draft in cases:
        for command, argv in _commands(target, synthetic_dir, draft, tmp_path / "out").items():
            if command in ("recommend", "evaluate", "train-draft") and target == tiny_target:
                continue  # these do not read the draft
            line = run_clean_failure(argv, capsys, tmp_path / "out")
            assert line.startswith("padrec: error:"), (command, line)


ODD = [
    ["recommend", "--users", 0],
    ["recommend", "--users", -3],
    ["recommend", "--list-len", 0],
    ["recommend", "--split", "nope"],
    ["recommend", "--engine", "quantum"],
    ["recommend", "--depth", 3],  # needs --draft
    ["recommend", "--tree", 4],  # needs --draft
    ["recommend", "--device", "tpu:7"],
    ["evaluate", "--batch-size", 0],
    ["bench", "--tree", "wide"],
    ["bench", "--only", "no-such-method"],
    ["bench", "--users", "many"],
    ["bench", "--warmup", -1],
    ["bench", "--draft", "does/not/exist/anywhere"],
    ["bench", "--assistant", "/no/such/folder"],
]


@pytest.mark.parametrize("argv", ODD, ids=lambda a: " ".join(map(str, a)))
def test_odd_arguments(argv, tmp_path, tiny_target, synthetic_dir, capsys):
    command, *rest = argv
    full = [command, "--target", tiny_target, "--data", synthetic_dir, *rest]
    run_clean_failure(full, capsys)


def test_out_that_is_a_file_or_a_foreign_folder(tmp_path, tiny_target, synthetic_dir, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    for out in (a_file, foreign):
        for command in ("bench", "train-draft"):
            argv = [command, "--target", tiny_target, "--data", synthetic_dir, "--out", out, "--users", 2]
            if command == "train-draft":
                argv = argv[:-2]
            run_clean_failure(argv, capsys)
    assert a_file.read_text() == "mine" and (foreign / "cat.jpg").read_bytes() == b"\xff\xd8"
