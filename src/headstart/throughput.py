"""Training throughput for every logger: Lightning's ``ThroughputMonitor`` told how to count headstart
batches. It logs ``train/device/samples_per_sec`` (examples) and ``train/device/items_per_sec``
(tokens of text batches, not counting padding; images of image batches) over a sliding window of
batches, with validation time left out. The module's ``flops_per_batch`` adds FLOPs per second and,
on accelerators whose peak Lightning knows, model FLOPs utilisation (``train/device/mfu``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor as _LightningThroughputMonitor

log = logging.getLogger(__name__)


def _task_batches(batch: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The per-task batches of a multi-task step (``{task: batch or None}``), else None."""
    values = list(batch.values())
    if values and all(v is None or isinstance(v, Mapping) for v in values):
        return [v for v in values if v is not None]
    return None


def examples_in_batch(batch: dict[str, Any]) -> int:
    """The number of examples (rows) of a batch: the first dimension of its input tensor."""
    tasks = _task_batches(batch)
    if tasks is not None:
        return sum(examples_in_batch(b) for b in tasks)
    for key in ("input_ids", "pixel_values", "labels"):
        if key in batch:
            return int(batch[key].shape[0])
    return int(next(iter(batch.values())).shape[0])


def items_in_batch(batch: dict[str, Any]) -> int:
    """Tokens of a text batch that are not padding, else the examples of the batch."""
    tasks = _task_batches(batch)
    if tasks is not None:
        return sum(items_in_batch(b) for b in tasks)
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    return examples_in_batch(batch)


def process_age() -> float:
    """Seconds since this process started (Linux), else since headstart was imported."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED


_IMPORTED = time.time()


class ThroughputMonitor(_LightningThroughputMonitor):
    """Also times the first optimizer step, from the process's start and from the stage's, the wait a
    user has before training runs (imports, tokenization, model build): ``time_to_first_step``; and,
    once ``expect_after`` more steps are timed, logs the training's expected time (``expected_training``)
    when it is a minute or more."""

    def __init__(self, window_size: int = 20, expect_after: int = 50, **kwargs) -> None:
        super().__init__(batch_size_fn=examples_in_batch, length_fn=items_in_batch, window_size=window_size, **kwargs)
        self._stage_started = time.time()
        self.time_to_first_step: dict[str, float] | None = None
        self.expect_after = expect_after
        self.expected_training: dict[str, float] | None = None
        self._timing_from: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        if not trainer.is_global_zero:
            return
        if self.time_to_first_step is None:
            self.time_to_first_step = {"since_process_start_s": round(process_age(), 3),
                                       "since_stage_start_s": round(time.time() - self._stage_started, 3)}
            log.info("First optimizer step %.1f s after the process started (%.1f s after this stage started)",
                     *self.time_to_first_step.values())
        if self._timing_from is None:  # timed from the first step on: it carries one-off costs
            self._timing_from = (trainer.global_step, time.perf_counter())
        elif self.expected_training is None and trainer.global_step - self._timing_from[0] >= self.expect_after:
            self._expect(trainer)

    def _expect(self, trainer) -> None:
        """The steps still to run at the rate of those timed (validation included, as it comes)."""
        steps, since = trainer.global_step - self._timing_from[0], time.perf_counter() - self._timing_from[1]
        total = trainer.estimated_stepping_batches
        rate = steps / since if since > 0 else 0.0
        if not rate or total == float("inf"):
            return
        remaining = max(total - trainer.global_step, 0) / rate
        self.expected_training = {"steps": int(total), "steps_per_s": round(rate, 2), "remaining_s": round(remaining, 1)}
        if remaining >= 60:
            log.info("Expected training time: %.1f min more for the remaining %d of %d optimizer steps (%.1f steps/s so "
                     "far; trainer.max_steps and trainer.max_epochs bound them)", remaining / 60,
                     total - trainer.global_step, total, rate)
