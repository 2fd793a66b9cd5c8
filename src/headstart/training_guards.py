"""Callbacks that keep a run's work when training goes wrong: a non-finite loss stops it at once with
the last good checkpoint named, and SIGTERM (preemption) or Ctrl-C saves a checkpoint to resume from."""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from headstart.errors import ConfigError, TrainingError
from headstart.pipeline.resume import latest_checkpoint
from headstart.throughput import reading_waits

log = logging.getLogger(__name__)

_ACTIONS = ("stop", "warn")


def _checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    return [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]


class NonFiniteLossGuard(pl.Callback):
    """Check every training loss. ``action=stop``: raise at the first NaN/inf, naming its step and the
    last good checkpoint; ``action=warn``: log it and go on.

    On the CPU each loss is checked at its step, before the checkpoint callbacks (which run after this
    one) could save the broken weights. On an accelerator, reading a loss waits for the device, so the
    losses are read together every ``check_every_n_steps`` (default: the logging interval) and before
    every checkpoint: a run may go on a few steps past the bad one, but never saves its weights.
    """

    def __init__(self, action: str = "stop", check_every_n_steps: int | None = None) -> None:
        if action not in _ACTIONS:
            raise ConfigError(f"callbacks.nan_guard.action={action!r} is not one of {', '.join(_ACTIONS)}.")
        self.action, self.check_every_n_steps = action, check_every_n_steps
        self._pending: list[tuple[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # manual optimization, or a skipped batch
            return
        loss = torch.as_tensor(loss).detach()
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        self._pending.append((where, loss))
        every = self.check_every_n_steps or trainer.log_every_n_steps or 1
        if not reading_waits(loss) or len(self._pending) >= every:
            self._check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([loss.float().reshape(()) for _, loss in pending]).cpu()
        bad = [(where, value) for (where, _), value in zip(pending, values.tolist(), strict=True)
               if not math.isfinite(value)]
        if not bad:
            return
        where, value = bad[0]
        if self.action == "warn":
            log.warning("The training loss is %s at %s; going on (callbacks.nan_guard.action=warn).", value, where)
            return
        found = [c for c in (latest_checkpoint(d.parent) for d in _checkpoint_dirs(trainer)) if c is not None]
        last = f"the last good checkpoint is {found[0]} (resume it with ckpt_path={found[0]})" if found else \
            "no checkpoint was written before it"
        raise TrainingError(
            f"The training loss became {value} at {where}; {last}. Lower task.optimizer.lr, set "
            "trainer.gradient_clip_val=1.0 or check the data for extreme values; callbacks.nan_guard.action=warn "
            "trains on regardless."
        )


class CheckpointOnSigterm(pl.Callback):
    """On SIGTERM (a scheduler preempting the job) or SIGINT (Ctrl-C), finish the batch, write
    ``checkpoints/last.ckpt`` and stop, so ``resume=auto`` with the same command continues from the
    step it was stopped at. A second Ctrl-C quits at once.

    Lightning notices SIGTERM between batches and raises ``SIGTERMException``; Ctrl-C is routed the
    same way (Lightning's own Ctrl-C handling stops mid-batch and saves nothing). Its checkpoint
    callbacks save on an exception only with ``save_on_exception``, which would also keep the weights
    of a run that failed for other reasons (a NaN loss). Only these signals save here.
    """

    def __init__(self) -> None:
        self.stopped_by: str | None = None
        self._previous_sigint: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stopped_by = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stopped_by == "SIGINT":  # the second Ctrl-C: the user means it
                self._restore_sigint()
                raise KeyboardInterrupt
            self.stopped_by = "SIGINT"
            # The flag Lightning's SIGTERM handler sets; its loops stop at the next batch boundary.
            trainer._signal_connector.received_sigterm = True
            log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to quit at once).")

        self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore_sigint()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        self.stopped_by = self.stopped_by or "SIGTERM"
        dirs = _checkpoint_dirs(trainer)
        if not dirs:
            log.warning("%s: no checkpoint callback, so no checkpoint to resume from was written.", self.stopped_by)
            return
        path = dirs[0] / "last.ckpt"
        trainer.save_checkpoint(path)
        log.info("%s at step %d: saved %s; resume with resume=auto.", self.stopped_by, trainer.global_step, path)
