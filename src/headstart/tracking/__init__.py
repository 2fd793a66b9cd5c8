"""Experiment tracking: a W&B logger that goes offline by itself when it cannot reach W&B."""

from headstart.tracking.wandb import resolve_wandb_mode, wandb_logger

__all__ = ["resolve_wandb_mode", "wandb_logger"]
