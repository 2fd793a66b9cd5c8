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
    try:
        stored = json.loads(results.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{results} is damaged ({err}), so whether that run finished is unknown. If it did not, move the file "
            "away and resume again (training continues from the last checkpoint); if it did, its checkpoints "
            "and export are its results."
        ) from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{results} is not a results record (a JSON object). Move it away and resume again.")
    return stored if stored.get("completed", True) else None


# Settings a resumed run may change: how long it trains and what it prints, not what it trains.
SAFE_TO_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs",
                  "trainer.min_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                  "trainer.log_every_n_steps", "trainer.profiler", "trainer.detect_anomaly",
                  "trainer.num_sanity_val_steps", "data.num_workers", "data.num_proc", "test_after_fit",
                  "export_backbone", "optimized_metric")
# Where a run writes and how it is logged, which differ between a run and its resumption by nature.
_NOT_COMPARED = ("paths", "hydra", "run_name", "run_group", "run_job_type", "run_tags", "logger", "callbacks", "resume",
                 "ckpt_path")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def config_changes(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded value, current value)}`` for every compared key that differs."""
    old, new = _flat(recorded), _flat(current)
    changes = {}
    for key in sorted(set(old) | set(new)):
        leaf = key.rsplit(".", 1)[-1]
        if key.split(".")[0] in _NOT_COMPARED or leaf.endswith("_dir") or leaf in ("dirpath", "save_dir"):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changes[key] = (old.get(key, "<absent>"), new.get(key, "<absent>"))
    return changes


def check_resumed_config(cfg, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """A resumed run's config against the one its directory recorded (``config.yaml``), before anything
    is written: a change to what is trained is refused, naming the keys; the safe changes (longer
    training, logging) are returned, to be recorded beside the original."""
    import yaml
    from omegaconf import OmegaConf

    recorded_path = run_dir / "config.yaml"
    if not recorded_path.is_file():
        return {}
    try:
        recorded = yaml.safe_load(recorded_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{recorded_path} is damaged ({err}); this run's config cannot be checked against it. "
                          "Restore it, or start a new run without resume.") from None
    changes = config_changes(recorded, OmegaConf.to_container(cfg, resolve=True))
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_TO_CHANGE}
    if unsafe:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(unsafe.items())[:8])
        more = f" (and {len(unsafe) - 8} more)" if len(unsafe) > 8 else ""
        raise ConfigError(
            f"{run_dir} was trained with another config than this command's: {listed}{more}. A checkpoint continues "
            "only the config that wrote it. Resume with the command recorded in its config.yaml (drop those "
            "overrides), or leave out resume to train the new config in a new directory. Only "
            f"{', '.join(SAFE_TO_CHANGE[:3])} and the logging settings may change on resume."
        )
    return changes
