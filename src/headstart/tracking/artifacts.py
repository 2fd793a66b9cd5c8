"""W&B artifacts and lineage: each export and the best checkpoint logged as ``model`` artifacts
before the run is finished, and a stage's use of an earlier stage's export declared.

W&B refuses ``use_artifact`` in offline mode, so an offline run records what it used in its config
(``headstart/used_artifacts``) and in ``<run dir>/wandb_lineage.json``; ``declare_lineage`` (run by
the command a run prints at its end, after ``wandb sync``) declares those uses through the W&B API.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LINEAGE_FILE = "wandb_lineage.json"


def artifact_name(text: str) -> str:
    """A W&B artifact name (letters, digits, dashes, underscores and dots) from a run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:128] or "headstart"


def wandb_run(loggers) -> Any | None:
    """The live W&B run of a stage's loggers, or None (no W&B logger, or W&B disabled)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            return run if getattr(run, "log_artifact", None) and not _disabled(run) else None
    return None


def _disabled(run) -> bool:
    settings = getattr(run, "settings", None)
    return getattr(settings, "mode", None) == "disabled"


def _offline(run) -> bool:
    settings = getattr(run, "settings", None)
    return bool(getattr(settings, "_offline", False)) or getattr(settings, "mode", None) in ("offline", "dryrun")


def exported_artifact(export_dir: Path) -> str | None:
    """The W&B artifact an export was logged as (recorded in its headstart_export.json), if any."""
    from headstart.transfer.export import read_metadata

    return read_metadata(Path(export_dir)).get("wandb_artifact")


def log_model_artifacts(run, name: str, exports: dict[str, Path], best_checkpoint: Path | None,
                        metadata: dict[str, Any]) -> list[str]:
    """Log each export directory (``{task: dir}``; the task "" for a single export) and the best
    checkpoint as ``model`` artifacts of ``run``; return the artifact names. Each export records its
    artifact's name in its headstart_export.json, where a later stage starting from it reads it."""
    import wandb

    from headstart.transfer.export import EXPORT_METADATA

    logged = []
    for task, directory in exports.items():
        artifact = wandb.Artifact(artifact_name(f"{name}-{task}-export" if task else f"{name}-export"), type="model",
                                  metadata={**metadata, "kind": "export", "task": task or None})
        meta_path = Path(directory) / EXPORT_METADATA
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "wandb_artifact": artifact.name}, indent=2, default=str))
        artifact.add_dir(str(directory))
        run.log_artifact(artifact, aliases=["latest"])
        logged.append(artifact.name)
    if best_checkpoint is not None and Path(best_checkpoint).is_file():
        artifact = wandb.Artifact(artifact_name(f"{name}-checkpoint"), type="model",
                                  metadata={**metadata, "kind": "checkpoint", "file": Path(best_checkpoint).name})
        artifact.add_file(str(best_checkpoint), name="model.ckpt")
        run.log_artifact(artifact, aliases=["best"])
        logged.append(artifact.name)
    return logged


def declare_use(run, used_artifact: str | None, output_dir: Path) -> None:
    """Declare that ``run`` starts from the export artifact ``used_artifact`` (pretrain -> finetune
    lineage). Online through ``use_artifact``; offline recorded for :func:`declare_lineage`."""
    if not used_artifact:
        return
    reference = f"{used_artifact}:latest"
    run.config.update({"headstart/used_artifacts": [reference]}, allow_val_change=True)
    if not _offline(run):
        run.use_artifact(reference, type="model")
        return
    (Path(output_dir) / LINEAGE_FILE).write_text(json.dumps(
        {"run_id": run.id, "project": run.project, "entity": getattr(run, "entity", None), "uses": [reference]},
        indent=2))


def declare_lineage(root: Path) -> int:
    """After ``wandb sync``: declare every use recorded by the offline runs under ``root`` through
    the W&B API; returns how many were declared."""
    import wandb

    api, declared = wandb.Api(), 0
    for path in sorted(Path(root).rglob(LINEAGE_FILE)):
        record = json.loads(path.read_text())
        run_path = "/".join(p for p in (record.get("entity"), record["project"], record["run_id"]) if p)
        run = api.run(run_path)
        for reference in record["uses"]:
            run.use_artifact(api.artifact(f"{'/'.join(run_path.split('/')[:-1])}/{reference}"))
            declared += 1
    return declared


def offline_run_dirs(root: Path) -> list[Path]:
    """The offline W&B run directories under ``root`` (what ``wandb sync`` uploads)."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and p.parent.name == "wandb")


def sync_command(root: Path) -> str | None:
    """One shell line that uploads every offline W&B run under ``root`` and then declares their
    lineage; None when there is none."""
    if not offline_run_dirs(root):
        return None
    return (f"find {root} -type d -name 'offline-run-*' -exec wandb sync --include-offline {{}} + "
            f"&& python -m headstart.tracking.artifacts {root}")


if __name__ == "__main__":  # python -m headstart.tracking.artifacts <run or pipeline dir>
    import sys

    count = declare_lineage(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"declared {count} artifact use(s)")
