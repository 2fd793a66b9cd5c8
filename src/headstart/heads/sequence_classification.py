"""Sequence classification: backbone + a linear head on a pooled representation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from headstart.errors import ConfigError
from headstart.module import HeadstartModule

POOLINGS = ("cls", "mean", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per sequence: the first token, the mean of real tokens, or the last real token."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    last = attention_mask.sum(1).long() - 1  # right padding: the last real token
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class SequenceClassifier(HeadstartModule):
    hf_head = "base"

    def __init__(self, backbone, optimizer, num_labels: int, scheduler=None, label_names: list[str] | None = None,
                 pooling: str = "cls", classifier_dropout: float = 0.1, **kwargs) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"task.pooling={pooling!r} is unknown; use one of {', '.join(POOLINGS)}.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.pooling = pooling
        self.label_names = label_names
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, num_labels))
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        hidden = self.net(**inputs).last_hidden_state
        return self.head(pool(hidden, batch["attention_mask"], self.pooling))

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
