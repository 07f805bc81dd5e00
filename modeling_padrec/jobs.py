"""Whole-split jobs: one JSON line per user, in user order, resumable, sharded over processes.

``padrec recommend --all --out FILE.jsonl`` decodes every user of a split with the batched engine and writes
``{"user", "items", "output_ids", "target_forwards"}`` per line (no timings: a rerun writes the same bytes).
Lines are written in user order as soon as every earlier user is done, and flushed, so the file is always a
prefix of the finished job. An interrupted job is resumed by running the same command again: complete lines are
checked against the users they should hold and kept, a partial last line is dropped, decoding goes on from there.
``FILE.jsonl.job.json`` records what the job is (target, draft, dataset, split, list length, users); a rerun
with other settings is refused instead of mixing two jobs in one file.

Under ``accelerate launch`` (or ``torchrun``) the users are split into contiguous shards, one per process
(:meth:`accelerate.Accelerator.split_between_processes`); each process writes ``FILE.jsonl.partR-of-W`` the same
way, and once all are done the first process joins them in user order into ``FILE.jsonl`` (staged, then moved
into place) and removes the parts.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PadrecError
from .fileio import atomic_file, write_json_atomic


@dataclass
class JobResult:
    users: int  # users in this process's shard
    resumed: int  # lines found complete at the start
    decoded: int
    seconds: float
    path: Path  # the file this process wrote (FILE.jsonl, or its part)

    @property
    def users_per_second(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0


def job_line(rec) -> str:
    """One user's line: everything about the list, nothing about the time it took."""
    return json.dumps(
        {
            "user": rec.user,
            "items": rec.items,
            "output_ids": rec.output_ids,
            "target_forwards": rec.target_forwards,
        }
    )


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".job.json")


def part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}-of-{world}")


def check_manifest(out: Path, manifest: dict, write: bool) -> None:
    """Refuse a job file begun with other settings; record the settings of a new one (``write``)."""
    path = manifest_path(out)
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PadrecError(
                f"{path}: unreadable job record ({e}); delete it and {out} to start over"
            ) from None
        if found != manifest:
            diff = sorted(k for k in set(found) | set(manifest) if found.get(k) != manifest.get(k))
            raise PadrecError(
                f"--out {out}: begun by another job (different {', '.join(diff)}); delete {out} and {path} or "
                "choose another --out"
            )
        return
    if out.exists() and out.stat().st_size:
        raise PadrecError(
            f"--out {out}: exists and was not written by a padrec job (no {path.name}); choose another"
        )
    if write:
        write_json_atomic(path, manifest, indent=2)


def resume(path: Path, users: list[str]) -> int:
    """The number of complete lines of ``path`` that hold ``users`` in order; a partial last line is cut off.
    A line for the wrong user is refused."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    if len(lines) > len(users):
        raise PadrecError(f"{path}: holds {len(lines)} lines for a shard of {len(users)} users")
    for i, line in enumerate(lines):
        try:
            user = json.loads(line)["user"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PadrecError(
                f"{path}: line {i + 1} is not a job line; delete the file to start over"
            ) from None
        if user != users[i]:
            raise PadrecError(
                f"{path}: line {i + 1} holds user {user!r}, expected {users[i]!r}; not this job's file"
            )
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return len(lines)


def read_job(out: Path, data: Path, split_users: list[str], split: str) -> tuple[dict, dict[str, list]]:
    """A finished job's record and lists (user -> items), for ``padrec evaluate --lists``. Refused unless the job
    is complete, decoded the dataset ``data`` (by its folder name) and holds the first users of ``split_users``
    (that dataset's users of ``split``), in order."""
    path = manifest_path(out)
    if not out.is_file():
        raise PadrecError(
            f"--lists {out}: no such file (a job sharded over processes writes it when all are done)"
        )
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PadrecError(
            f"--lists {out}: no {path.name} beside it; not a `padrec recommend --all` job"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise PadrecError(f"--lists {out}: unreadable job record {path} ({e})") from None
    keys = ("target", "data", "split", "list_len", "users", "last_user")
    if not isinstance(manifest, dict) or not all(k in manifest for k in keys):
        raise PadrecError(f"--lists {out}: {path.name} is not a `padrec recommend --all` job record")
    if Path(manifest["data"]).name != Path(data).name:
        raise PadrecError(f"--lists {out}: the job decoded {manifest['data']}, not --data {data}")
    if manifest.get("split") != split:
        raise PadrecError(f"--lists {out}: a job on the {manifest.get('split')} split, not --split {split}")
    users = split_users[: manifest["users"]]
    if len(users) < manifest["users"] or users[-1] != manifest["last_user"]:
        raise PadrecError(
            f"--lists {out}: its users are not the first {manifest['users']} {split} users of this dataset "
            f"(the job decoded {manifest['data']})"
        )
    raw = out.read_bytes()
    done = resume(out, users) if raw.endswith(b"\n") else -1
    if done != len(users):
        raise PadrecError(
            f"--lists {out}: unfinished ({max(done, 0)} of {len(users)} users); rerun its recommend --all command "
            "to finish it"
        )
    lines = [json.loads(line) for line in raw.splitlines()]
    return manifest, {line["user"]: line["items"] for line in lines}


def run_shard(rec, users: list[str], split: str, path: Path, engine, batch_size: int, progress: bool,
              desc: str = "recommend") -> JobResult:  # fmt: skip
    """Decode ``users`` into ``path``, resuming after its complete lines."""
    from tqdm.auto import tqdm

    done = resume(path, users)
    todo = users[done:]
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ready: dict[int, str] = {}
    next_line = 0
    with open(path, "a", encoding="utf-8") as f, tqdm(
        total=len(users), initial=done, unit="user", desc=desc, disable=not progress, dynamic_ncols=True
    ) as bar:  # fmt: skip
        for i, r in rec.recommend_many(todo, split, engine=engine, batch_size=batch_size):
            ready[i] = job_line(r)
            while next_line in ready:  # write in user order as soon as every earlier user is done
                f.write(ready.pop(next_line) + "\n")
                next_line += 1
            f.flush()
            bar.update(1)
    return JobResult(len(users), done, len(todo), time.perf_counter() - t0, path)


def merge_parts(out: Path, world: int) -> None:
    """Join the processes' parts in rank (= user) order into ``out`` (staged beside it, moved into place)."""
    with atomic_file(out, "wb") as dst:
        for rank in range(world):
            dst.write(part_path(out, rank, world).read_bytes())
    for rank in range(world):
        part_path(out, rank, world).unlink()


def run_job(rec, users: list[str], split: str, out: str | Path, engine, batch_size: int, manifest: dict,
            accelerator=None, progress: bool | None = None) -> JobResult:  # fmt: skip
    """A whole-split job into ``out`` (see the module docstring); with an ``accelerate.Accelerator`` of several
    processes, this process's shard only, the parts joined at the end."""
    out = Path(out)
    if out.is_dir():
        raise PadrecError(f"--out {out}: is a folder; give a .jsonl file name")
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "users": len(users), "first_user": users[0], "last_user": users[-1]}
    if world > 1 and out.exists() and not any(part_path(out, r, world).exists() for r in range(world)):
        check_manifest(out, manifest, write=False)  # a finished sharded job: nothing to redo
        n = resume(out, users)
        if n == len(users):
            return JobResult(len(users), n, 0, 0.0, out)
        raise PadrecError(
            f"--out {out}: an unfinished single-process job; resume it with one process, or delete it"
        )
    if rank == 0:
        check_manifest(out, manifest, write=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if rank != 0:
        check_manifest(out, manifest, write=False)
    if progress is None:
        progress = sys.stderr.isatty()
    if world == 1:
        return run_shard(rec, users, split, out, engine, batch_size, progress)
    with accelerator.split_between_processes(users) as shard:
        result = run_shard(rec, list(shard), split, part_path(out, rank, world), engine, batch_size,
                           progress and rank == 0, desc=f"recommend (process 0 of {world})")  # fmt: skip
    accelerator.wait_for_everyone()
    if rank == 0:
        merge_parts(out, world)
    accelerator.wait_for_everyone()
    return result
