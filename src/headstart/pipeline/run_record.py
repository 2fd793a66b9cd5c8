"""run_info.json: what it takes to reproduce a run besides its config.yaml (code version, package
versions, command line, host). A resumed run adds its own record under ``resumes``."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RUN_INFO = "run_info.json"
PACKAGES = ("headstart", "torch", "lightning", "transformers", "tokenizers", "datasets", "hydra-core",
            "omegaconf", "torchmetrics", "safetensors", "wandb", "numpy")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(source: Path) -> dict[str, Any]:
    """The commit of the repository holding headstart's code, and whether its tree has changes
    (``commit`` None when the code is not in a git checkout, e.g. installed from a wheel)."""
    commit = _git(["rev-parse", "HEAD"], source)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_record(resumed_from: str | None) -> dict[str, Any]:
    import headstart

    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "cwd": str(Path.cwd()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "git": git_state(Path(headstart.__file__).resolve().parent),
        "packages": package_versions(),
        "resumed_from": resumed_from,
    }


def write_run_record(output_dir: Path, resumed_from: str | None, changes: dict | None = None) -> None:
    """The record of this start; a resumed run's goes under ``resumes`` of the first start's record,
    with the settings it changed (``config_changes``: key -> [before, after])."""
    path = output_dir / RUN_INFO
    record = run_record(resumed_from)
    if changes:
        record["config_changes"] = {key: list(values) for key, values in changes.items()}
    if path.is_file():
        first = json.loads(path.read_text())
        first.setdefault("resumes", []).append(record)
        record = first
    path.write_text(json.dumps(record, indent=2))
