"""Where a run resumes from: ``resume=auto`` (this run directory, if it holds a checkpoint),
``resume=<run dir or .ckpt>``, or the older ``ckpt_path=<.ckpt>``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of a run directory (written with every checkpoint), else its newest
    ``*.ckpt``, else None."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    last = directory / "last.ckpt"
    if last.is_file():
        return last
    found = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@dataclass
class ResumePlan:
    """The checkpoint to continue (None: start fresh), the directory the run writes to, and, for a
    run that had already finished, its results (nothing is trained or written again)."""

    ckpt_path: str | None
    output_dir: Path
    finished: dict[str, Any] | None = None

    @property
    def resuming(self) -> bool:
        return self.ckpt_path is not None


def plan_resume(resume: str | None, ckpt_path: str | None, output_dir: Path) -> ResumePlan:
    """What ``resume``/``ckpt_path`` ask for, given the directory this run was started in."""
    if resume is None:
        return ResumePlan(ckpt_path, output_dir)
    if ckpt_path is not None:
        raise ConfigError(f"resume={resume!r} and ckpt_path={ckpt_path!r} both say where to resume from; set one "
                          "(resume=auto, resume=<run dir or .ckpt>, or ckpt_path=<.ckpt>).")
    if resume == "auto":
        run_dir = output_dir
    else:
        target = Path(resume)
        if target.is_file():  # a checkpoint: continue it, in this run's own directory
            return ResumePlan(str(target), output_dir)
        if not target.is_dir():
            raise ConfigError(f"resume={resume!r} does not exist. Set it to auto (with hydra.run.dir=<the run's "
                              "directory>), to a run directory, or to a .ckpt file.")
        run_dir = target
    finished = _finished_results(run_dir)
    if finished is not None:
        log.info("%s already finished (results.json); nothing to resume.", run_dir)
        return ResumePlan(None, run_dir, finished)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        if resume != "auto":
            raise ConfigError(f"resume={resume!r}: {run_dir / CHECKPOINT_DIR} holds no checkpoint (*.ckpt) to resume "
                              "from. Use resume=auto to start such a run afresh in its directory.")
        log.info("resume=auto: no checkpoint in %s; starting the run there.", run_dir / CHECKPOINT_DIR)
        return ResumePlan(None, run_dir)
    log.info("Resuming %s from %s", run_dir, checkpoint)
    return ResumePlan(str(checkpoint), run_dir)


def _finished_results(run_dir: Path) -> dict[str, Any] | None:
    results = run_dir / "results.json"
    if not results.is_file():
        return None
    stored = json.loads(results.read_text())
    return stored if stored.get("completed", True) else None
