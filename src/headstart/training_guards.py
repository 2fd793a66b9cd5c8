"""Callbacks that keep a run's work when training goes wrong: a non-finite loss stops it at once with
the last good checkpoint named, and a SIGTERM (preemption) saves a checkpoint to resume from."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from headstart.errors import ConfigError, TrainingError
from headstart.pipeline.resume import latest_checkpoint

log = logging.getLogger(__name__)

_ACTIONS = ("stop", "warn")


def _checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    return [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]


class NonFiniteLossGuard(pl.Callback):
    """Check every training loss. ``action=stop``: raise at the first NaN/inf, before a checkpoint of
    the broken weights can be written (checkpoint callbacks run after this one), naming the step and
    the last good checkpoint; ``action=warn``: log it and go on."""

    def __init__(self, action: str = "stop") -> None:
        if action not in _ACTIONS:
            raise ConfigError(f"callbacks.nan_guard.action={action!r} is not one of {', '.join(_ACTIONS)}.")
        self.action = action

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or math.isfinite(float(loss)):
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        if self.action == "warn":
            log.warning("The training loss is %s at %s; going on (callbacks.nan_guard.action=warn).", float(loss), where)
            return
        found = [c for c in (latest_checkpoint(d.parent) for d in _checkpoint_dirs(trainer)) if c is not None]
        last = f"the last good checkpoint is {found[0]} (resume it with ckpt_path={found[0]})" if found else \
            "no checkpoint was written before it"
        raise TrainingError(
            f"The training loss became {float(loss)} at {where}; {last}. Lower task.optimizer.lr, set "
            "trainer.gradient_clip_val=1.0 or check the data for extreme values; callbacks.nan_guard.action=warn "
            "trains on regardless."
        )


class CheckpointOnSigterm(pl.Callback):
    """On SIGTERM (a scheduler preempting the job), write ``checkpoints/last.ckpt`` before the process
    exits, so ``resume=auto`` with the same command continues from the step it was stopped at.

    Lightning notices the signal between batches and raises ``SIGTERMException``; its checkpoint
    callbacks save on an exception only with ``save_on_exception``, which would also keep the weights
    of a run that failed for other reasons (a NaN loss). Only SIGTERM saves here.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        dirs = _checkpoint_dirs(trainer)
        if not dirs:
            log.warning("SIGTERM: no checkpoint callback, so no checkpoint to resume from was written.")
            return
        path = dirs[0] / "last.ckpt"
        trainer.save_checkpoint(path)
        log.info("SIGTERM at step %d: saved %s; resume with resume=auto.", trainer.global_step, path)
