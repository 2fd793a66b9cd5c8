"""Sequence classification: backbone + a linear head on a pooled representation."""

from __future__ import annotations

import torch

from headstart.backbones.pooling import check_pooling, pool
from headstart.backbones.text import encoder_inputs
from headstart.config.schema import SequenceClassificationConfig
from headstart.heads.classification import Classifier


class SequenceClassifier(Classifier):
    def __init__(self, backbone, optimizer, num_labels: int, scheduler=None,
                 label_names: list[str] | None = None, pooling: str = SequenceClassificationConfig.pooling,
                 classifier_dropout: float = SequenceClassificationConfig.classifier_dropout,
                 **kwargs) -> None:
        check_pooling(pooling)
        super().__init__(backbone, optimizer, num_labels, scheduler, label_names=label_names,
                         classifier_dropout=classifier_dropout, **kwargs)
        self.pooling = pooling

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = encoder_inputs(batch)
        hidden = self.net(**inputs).last_hidden_state
        return pool(hidden, batch["attention_mask"], self.pooling)
