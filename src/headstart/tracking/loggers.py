"""The run's Lightning loggers: built from the ``logger`` group (a resumed run continues its W&B run
and keeps its CSV rows), and the CSV logger mended where Lightning would lose or refuse rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from headstart.tracking.wandb import resume_settings


def build_loggers(node: Any, checkpoint: dict[str, Any] | None, keep_history: bool = True) -> list[Any]:
    """Every ``_target_`` entry of the ``logger`` group (a DictConfig; empty: no loggers). Resuming from
    ``checkpoint`` (read as data), a W&B logger continues the run the checkpoint recorded and, where
    ``keep_history`` (the rank that writes the CSV), metrics.csv keeps the rows up to its step."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    if not node:
        return []
    resume = resume_settings(checkpoint)
    loggers = [instantiate(conf, **(resume if "wandb" in conf._target_ else {})) for conf in node.values()
               if isinstance(conf, DictConfig) and "_target_" in conf]
    if checkpoint is not None and keep_history:
        keep_csv_history(loggers, checkpoint["global_step"])
    return loggers


def keep_csv_history(loggers: list[Any], resumed_step: int) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv when it starts; a resumed run keeps the
    rows its earlier attempt logged up to the checkpoint it continues (later ones are logged again)."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if path is None or not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], [r for r in reader if not r.get("step") or
                                                     int(float(r["step"])) < resumed_step]
        logger.experiment  # noqa: B018 - creating the writer is what deletes the file
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
    adopt_csv_columns(loggers)


def adopt_csv_columns(loggers: list[Any]) -> None:
    """Under ddp_spawn the fit ran in child processes, so this process's CSV logger has not seen the
    columns they wrote to metrics.csv; Lightning would then rewrite the file with its own, shorter
    header when the test metrics come, and fail. Take the columns over from the file."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if isinstance(logger, CSVLogger) and Path(logger.experiment.metrics_file_path).is_file():
            with open(logger.experiment.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            keys = logger.experiment.metrics_keys
            keys.extend(k for k in header if k not in keys)
            keys.sort()
