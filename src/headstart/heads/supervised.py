"""What every downstream head shares: a loss on labelled batches, validation and test metrics (one
torchmetrics collection, cloned per split, so DDP syncs their states), and their logging.

A head writes :meth:`SupervisedHead.step` (loss, predictions and targets of a batch) and passes its
metrics to :meth:`SupervisedHead.init_metrics`. Its export (:meth:`SupervisedHead.export`) is the
whole model for the task's transformers auto class (:func:`headstart.transfer.export.export_head`):
``hf_task`` names the task, ``hf_settings`` the config entries of its labels and pooling, and
``hf_outputs`` what the exported model's outputs must equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection

from headstart.module import HeadstartModule


class SupervisedHead(HeadstartModule):
    hf_head = "base"
    exports_head = True
    #: The export's task (see ``headstart.transfer.export.HF_TASKS``): "sequence", "image", "token" or "span".
    hf_task = "sequence"
    #: Whether the export may be transformers' own class for the task (where it computes the same).
    hf_stock = False
    #: Tokenizer outputs the head reads besides input_ids and attention_mask; the exported tokenizer
    #: returns them by default.
    model_inputs: tuple[str, ...] = ()
    #: Test metrics that are computed from one prediction and one target per example (see
    #: ``headstart.pipeline.intervals``): for these the test pass keeps every example's prediction, so a
    #: pipeline can resample the test examples for the gain's interval. Empty: not kept.
    per_example_metrics: tuple[str, ...] = ()

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

    def _eval_step(self, batch, split: str, metrics: MetricCollection):
        loss, predictions, targets, size = self.step(batch)
        self.log_split(split, {"loss": loss}, batch_size=size)
        metrics.update(predictions, targets)
        return predictions, targets

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_metrics)

    def on_test_epoch_start(self):
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def test_step(self, batch, batch_idx):
        predictions, targets = self._eval_step(batch, "test", self.test_metrics)
        if self.per_example_metrics:
            self.test_outputs.append((predictions.detach().float().cpu(), targets.detach().float().cpu()))

    def per_example_test_outputs(self) -> dict[str, Any] | None:
        """The last test pass's prediction and target of every example, in the test split's order, as
        arrays (None: the head keeps none, or the pass was split across processes)."""
        outputs = getattr(self, "test_outputs", None)
        if not self.per_example_metrics or not outputs or self.trainer.world_size > 1:
            return None
        predictions, targets = (torch.cat(parts).numpy() for parts in zip(*outputs, strict=True))
        return {"predictions": predictions, "targets": targets}

    def predict_step(self, batch, batch_idx):
        """mode=predict: the batch's predictions, one record per example (:meth:`predictions`)."""
        return self.predictions(batch)

    def predictions(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Each example's prediction as plain values (label names, probabilities, spans, numbers in the
        data's units), in the batch's order: what ``predictions.jsonl`` holds."""
        raise NotImplementedError

    def on_validation_epoch_end(self):
        self.log_dict(self.metric_values(self.val_metrics.compute()), sync_dist=True, prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_end(self):
        self.log_dict(self.metric_values(self.test_metrics.compute()), sync_dist=True)
        self.test_metrics.reset()

    # -- export --------------------------------------------------------------------------------------
    def hf_settings(self) -> dict[str, Any]:
        """Config entries of the export beyond its backbone's: the labels, and ``pooling`` (how a sequence
        becomes one vector; None for a head on every token)."""
        names = getattr(self, "label_names", None)
        settings: dict[str, Any] = {"pooling": getattr(self, "pooling", None)}
        if names:
            settings.update(id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})
        return settings

    def hf_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """What the exported model's outputs (logits, or QA's start and end logits) equal on ``batch``."""
        return (self(batch),)

    def export(self, directory: str, processor, metadata: dict[str, Any]) -> None:
        """Write the backbone with this head as an HF model directory its task's auto class loads."""
        from headstart.transfer.export import export_head

        export_head(self, directory, processor, {"objective": type(self).__name__, "export_kind": "head", **metadata})
