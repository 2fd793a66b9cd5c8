"""What every downstream head shares: a loss on labelled batches, validation and test metrics (one
torchmetrics collection, cloned per split, so DDP syncs their states), and their logging.

A head writes :meth:`SupervisedHead.step` (loss, predictions and targets of a batch) and passes its
metrics to :meth:`SupervisedHead.init_metrics`.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection

from headstart.module import HeadstartModule


class SupervisedHead(HeadstartModule):
    hf_head = "base"

    def init_metrics(self, metrics: MetricCollection) -> None:
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The batch's loss, the predictions and targets its metrics take, and the number of labelled
        examples (what epoch means weigh the loss by)."""
        raise NotImplementedError

    def metric_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The computed metrics as logged; a hook for heads whose metrics are not scalars."""
        return values

    def training_step(self, batch, batch_idx):
        loss, _, _, size = self.step(batch)
        self.log_split("train", {"loss": loss}, batch_size=size, prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str, metrics: MetricCollection) -> None:
        loss, predictions, targets, size = self.step(batch)
        self.log_split(split, {"loss": loss}, batch_size=size)
        metrics.update(predictions, targets)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", self.test_metrics)

    def on_validation_epoch_end(self):
        self.log_dict(self.metric_values(self.val_metrics.compute()), sync_dist=True, prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_end(self):
        self.log_dict(self.metric_values(self.test_metrics.compute()), sync_dist=True)
        self.test_metrics.reset()
