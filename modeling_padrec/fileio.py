"""Writing outputs so that nothing is ever half-written: stage beside the destination, then move into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import PadrecError


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a file opened in ``mode`` beside ``path``; when the block ends it is synced and moved into place as
    ``path`` (``os.replace``), on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise PadrecError(f"{path}: is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file in the same folder and ``os.replace``."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return Path(path)


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it replaces ``out`` whole, on error it is removed."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_dir(out: str | Path, marker: str, flag: str = "--out") -> Path:
    """Refuse an output folder whose replacement would destroy something else: the working directory or a
    folder above it, a file, or a non-empty folder that is not an earlier output of the same command (it has no
    ``marker`` file). Such an earlier output is replaced whole when the new one is complete."""
    out = Path(out).absolute()
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise PadrecError(f"{flag} {out}: is the working directory or contains it; choose a new folder")
    if out.exists():
        if not out.is_dir():
            raise PadrecError(f"{flag} {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / marker).exists():
            raise PadrecError(
                f"{flag} {out}: exists, is not empty and is not an earlier output of this command (no {marker}); "
                "choose an empty or new folder"
            )
    return out
