"""The progress bar: Lightning's TQDM bar, counting steps at every step but reading the training values
it shows (a read waits for the device) at logging steps only."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Shows the training values a module names in ``progress_bar_keys`` (``HeadstartModule.log_split``),
    read at each logging step (``trainer.log_every_n_steps``) and shown until the next; validation values
    as Lightning shows them; no ``v_num``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._training_values: dict[str, float] = {}

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: the run directory says which run this is
        if trainer.training and trainer._logger_connector.should_update_logs:
            logged = trainer.callback_metrics
            keys = [k for k in getattr(pl_module, "progress_bar_keys", ()) if k in logged]
            self._training_values = {k: float(logged[k]) for k in keys}
        return {**metrics, **self._training_values}
