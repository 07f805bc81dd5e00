"""An offline Hugging Face cache holding exported repos, laid out the way a download leaves it."""

from __future__ import annotations

import shutil
from pathlib import Path


def fake_hub_cache(exported: Path, home: Path, repos: dict[str, str]) -> Path:
    """Lay the exported folders out as a download leaves them in ``HF_HOME/hub``: ``refs/main`` → commit,
    ``snapshots/<commit>/<files>``, and a ``.no_exist/<commit>/config.json`` marker for the adapter repo (online,
    ``AutoTokenizer`` asks for a config.json the adapter repo does not have, and huggingface_hub records that
    answer so offline loads know the file is absent rather than missing from the cache)."""
    hub = home / "hub"
    for i, (folder, repo) in enumerate(repos.items()):
        commit = f"{i + 1:040x}"
        root = hub / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commit)
        shutil.copytree(exported / folder, root / "snapshots" / commit)
        if not (exported / folder / "config.json").exists():
            (root / ".no_exist" / commit).mkdir(parents=True)
            (root / ".no_exist" / commit / "config.json").touch()
    return home
