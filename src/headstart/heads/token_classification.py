"""Token classification (NER-style tagging): the backbone's state of every token -> dropout -> linear.

Labels are -100 wherever there is nothing to predict (special tokens, padding and, unless
``data.label_all_tokens``, a word's later sub-tokens); the loss and every metric skip those positions,
so with the defaults the metrics are per word. Besides token accuracy it reports entity-level
micro F1 / precision / recall (:class:`~headstart.heads.span_f1.SpanF1`), the number NER is judged by.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from headstart.errors import ConfigError
from headstart.heads.span_f1 import SpanF1
from headstart.module import HeadstartModule

IGNORE_INDEX = -100


class TokenClassifier(HeadstartModule):
    hf_head = "base"

    def __init__(self, backbone, optimizer, num_labels: int, label_names: list[str], scheduler=None,
                 classifier_dropout: float = 0.1, **kwargs) -> None:
        if len(label_names) != num_labels:
            raise ConfigError(f"token classification got {num_labels} labels but {len(label_names)} label names; "
                              "both come from the data module and must agree.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.label_names = list(label_names)
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, num_labels))
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro", ignore_index=IGNORE_INDEX),
            "entities": SpanF1(self.label_names, ignore_index=IGNORE_INDEX),  # logged as f1/precision/recall
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def build_collator(self, processor):
        """Pads the inputs as usual and the label rows with -100, so padding is never scored."""
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(processor, label_pad_token_id=IGNORE_INDEX)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, num_labels) logits."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.head(self.net(**inputs).last_hidden_state)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    @staticmethod
    def _num_labelled(labels: torch.Tensor) -> int:
        """The batch size the epoch means weigh by: labelled positions, not sequences."""
        return max(int((labels != IGNORE_INDEX).sum()), 1)

    def training_step(self, batch, batch_idx):
        loss = self._loss(self(batch), batch["labels"])
        self.log_split("train", {"loss": loss}, batch_size=self._num_labelled(batch["labels"]), prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str, metrics: MetricCollection) -> None:
        logits, labels = self(batch), batch["labels"]
        self.log_split(split, {"loss": self._loss(logits, labels)}, batch_size=self._num_labelled(labels))
        metrics.update(logits.argmax(-1), labels)

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
