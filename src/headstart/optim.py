"""Learning-rate schedules: transformers' schedulers, with warmup given as a fraction of training."""

from __future__ import annotations

from torch.optim import Optimizer


def warmup_schedule(optimizer: Optimizer, num_training_steps: int, name: str = "linear", warmup_ratio: float = 0.0):
    """``transformers.get_scheduler`` with ``num_warmup_steps = warmup_ratio * num_training_steps``."""
    from transformers import get_scheduler

    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=int(warmup_ratio * num_training_steps),
        num_training_steps=num_training_steps,
    )
