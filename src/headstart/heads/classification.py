"""What every classification head shares: a linear layer on one feature vector per example,
cross-entropy, and accuracy / macro-F1 on the validation and test splits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from headstart.module import HeadstartModule


class Classifier(HeadstartModule):
    """Backbone features -> dropout -> linear. Subclasses say how a batch becomes one vector per
    example (:meth:`features`)."""

    hf_head = "base"

    def __init__(self, backbone, optimizer, num_labels: int, scheduler=None, label_names: list[str] | None = None,
                 classifier_dropout: float = 0.1, **kwargs) -> None:
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.label_names = label_names
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, num_labels))
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, hidden_size): what the linear head classifies."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch), batch["labels"])
        self.log_split("train", {"loss": loss}, batch_size=batch["labels"].size(0), prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str, metrics: MetricCollection) -> None:
        logits = self(batch)
        self.log_split(split, {"loss": F.cross_entropy(logits, batch["labels"])}, batch_size=batch["labels"].size(0))
        metrics.update(logits.argmax(-1), batch["labels"])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", self.test_metrics)

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute(), sync_dist=True, prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_end(self):
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()
