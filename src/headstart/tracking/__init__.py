"""Experiment tracking: a W&B logger that goes offline by itself when it cannot reach W&B, the run's
loggers (built, resumed, mended) and the W&B run's end."""

from headstart.tracking.loggers import adopt_csv_columns, build_loggers
from headstart.tracking.wandb import finish_wandb, resolve_wandb_mode, wandb_logger

__all__ = ["adopt_csv_columns", "build_loggers", "finish_wandb", "resolve_wandb_mode", "wandb_logger"]
