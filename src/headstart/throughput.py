"""Training throughput for every logger: Lightning's ``ThroughputMonitor`` told how to count headstart
batches. It logs ``train/device/samples_per_sec`` (examples) and ``train/device/items_per_sec``
(tokens of text batches, not counting padding; images of image batches) over a sliding window of
steps, with validation time left out. The module's ``flops_per_batch`` adds FLOPs per second and, on
GPUs in headstart's table of dense peaks (``headstart.peak_flops``), model FLOPs utilisation
(``train/device/mfu``).

Training steps are never waited for: the counts of a step stay on the device (a token count is a
tensor) and are added up there; they are read, and the device synchronised for the clock, at the
logging steps only (``trainer.log_every_n_steps``), as Lightning's own logging reads its values.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import ThroughputMonitor as _LightningThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

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


def items_in_batch(batch: dict[str, Any]) -> int | torch.Tensor:
    """Tokens of a text batch that are not padding (a count on the batch's device, not read here), else
    the examples of the batch."""
    tasks = _task_batches(batch)
    if tasks is not None:
        return sum(items_in_batch(b) for b in tasks)
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.sum()
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


def reading_waits(tensor: torch.Tensor) -> bool:
    """Whether reading ``tensor`` on the host waits for its device's queued work (an accelerator's): what
    is read then is read at logging steps only. (Tests make it say yes on the CPU, to check a GPU run.)"""
    return tensor.device.type != "cpu"


def _read(value) -> int | float:
    return value.item() if isinstance(value, torch.Tensor) else value


def items_read(batch: dict[str, Any]) -> int:
    """:func:`items_in_batch`, read (validation and test batches, where the monitor reads at each batch)."""
    return int(_read(items_in_batch(batch)))


class _Counts:
    """A training window's counts since they were last read: batches and examples (from shapes, on the
    host), items and FLOPs (numbers, or tensors on the device, added up there)."""

    def __init__(self) -> None:
        self.batches, self.samples, self.items, self.flops = 0, 0, 0, 0.0
        self.has_flops = False

    def add(self, batch, flops) -> None:
        self.batches += 1
        self.samples += examples_in_batch(batch)
        self.items = self.items + items_in_batch(batch)
        if flops is not None:
            self.flops, self.has_flops = self.flops + flops, True

    def take(self) -> tuple[int, int, int, float | None]:
        """The counts, read (one wait for the device where they live there), and a fresh window."""
        counts = (self.batches, self.samples, int(_read(self.items)), float(_read(self.flops)) if self.has_flops else None)
        self.__init__()
        return counts


class ThroughputMonitor(_LightningThroughputMonitor):
    """Lightning's monitor, reading training counts at logging steps only (see the module's docstring),
    with MFU against headstart's table of peaks. Also times the first optimizer step, from the process's
    start and from the stage's, the wait a user has before training runs (imports, tokenization, model
    build): ``time_to_first_step``; and, once ``expect_after`` more steps are timed, logs the training's
    expected time (``expected_training``) when it is a minute or more."""

    def __init__(self, window_size: int = 20, expect_after: int = 50, **kwargs) -> None:
        super().__init__(batch_size_fn=examples_in_batch, length_fn=items_read, window_size=window_size, **kwargs)
        self.window_size = window_size
        self._stage_started = time.time()
        self.time_to_first_step: dict[str, float] | None = None
        self.expect_after = expect_after
        self.expected_training: dict[str, float] | None = None
        self._timing_from: tuple[int, float] | None = None
        self._counts = _Counts()

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.available_flops = device_peak(trainer)
        for throughput in self._throughputs.values():
            throughput.available_flops = self.available_flops
        if stage == TrainerFn.FITTING:
            # One entry a logging interval: a window of window_size steps.
            every = max(1, trainer.log_every_n_steps)
            self._throughputs[RunningStage.TRAINING] = Throughput(
                available_flops=self.available_flops, world_size=trainer.world_size,
                window_size=max(2, self.window_size // every + 1))

    def _start(self, trainer) -> None:
        super()._start(trainer)
        if trainer.state.stage == RunningStage.TRAINING:
            self._counts = _Counts()

    def _take_counts(self, trainer) -> None:
        """Read the training counts into the throughput window, with the time the device has taken."""
        stage = RunningStage.TRAINING
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the queued steps done, so that the clock counts them
        elapsed = time.perf_counter() - self._t0s[stage]
        batches, samples, items, flops = self._counts.take()
        self._batches[stage] += batches
        self._samples[stage] += samples
        self._lengths[stage] += items
        self._throughputs[stage].update(time=elapsed, batches=self._batches[stage], samples=self._samples[stage],
                                        lengths=self._lengths[stage], flops=flops)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        if not trainer.is_global_zero:
            return
        self._count(trainer, pl_module, batch)
        self._time_steps(trainer)

    def _count(self, trainer, pl_module, batch) -> None:
        """Add the step's counts up; read and log them at logging steps (when an optimizer step ends)."""
        self._counts.add(batch, pl_module.flops_per_batch)
        if not trainer.fit_loop._should_accumulate() and trainer._logger_connector.should_update_logs:
            self._take_counts(trainer)
            self._compute(trainer)

    def _time_steps(self, trainer) -> None:
        if self.time_to_first_step is None:
            self.time_to_first_step = {"since_process_start_s": round(process_age(), 3),
                                       "since_stage_start_s": round(time.time() - self._stage_started, 3)}
            log.info("First optimizer step %.1f s after the process started (%.1f s after this stage started)",
                     *self.time_to_first_step.values())
        if self._timing_from is None:  # timed from the first step on: it carries one-off costs
            self._timing_from = (trainer.global_step, time.perf_counter())
        elif self.expected_training is None and trainer.global_step - self._timing_from[0] >= self.expect_after:
            self._expect(trainer)

    def on_validation_start(self, trainer, *args) -> None:
        # The steps since the last read end before validation starts: count them in the training window
        # before Lightning moves the training clock past the validation time.
        if trainer.is_global_zero and not trainer.sanity_checking and self._counts.batches:
            self._take_counts(trainer)
        super().on_validation_start(trainer, *args)

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


def device_peak(trainer) -> float | None:
    """The dense peak FLOP/s of the trainer's GPU at its compute precision (None off GPUs, or for a card
    not in the table: no MFU then), logged once."""
    from headstart.peak_flops import compute_dtype_of, describe, peak_flops

    device = trainer.strategy.root_device
    if device.type != "cuda":
        return None
    # From the precision setting: Lightning's own reading of the plugin says float32 for bf16-mixed.
    try:
        dtype = compute_dtype_of(trainer.precision)
    except ValueError:  # a precision plugin without one matmul dtype (e.g. transformer-engine)
        return None
    name = torch.cuda.get_device_name(device)
    if trainer.is_global_zero:
        log.info("MFU against %s", describe(name, dtype))
    return peak_flops(name, dtype)
