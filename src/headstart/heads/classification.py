"""What every classification head shares: a linear layer on one feature vector per example,
cross-entropy, and accuracy / macro-F1 on the validation and test splits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from headstart.config.schema import HeadConfig
from headstart.heads.supervised import SupervisedHead


class Classifier(SupervisedHead):
    """Backbone features -> dropout -> linear. Subclasses say how a batch becomes one vector per
    example (:meth:`features`)."""

    per_example_metrics = ("acc", "f1")

    def __init__(self, backbone, optimizer, num_labels: int, scheduler=None,
                 label_names: list[str] | None = None,
                 classifier_dropout: float = HeadConfig.classifier_dropout, **kwargs) -> None:
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.label_names = label_names
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, num_labels))
        self.init_metrics(MetricCollection({
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
        }))

    @property
    def num_classes(self) -> int:
        """The number of classes: the width of the last layer (what macro-F1 averages over)."""
        return self.head[-1].out_features

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, hidden_size): what the linear head classifies."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch))

    def predictions(self, batch):
        """The most probable label and every label's probability."""
        probabilities = self(batch).float().softmax(-1)
        names = list(self.label_names or [str(i) for i in range(probabilities.size(-1))])
        return [{"label": names[int(p.argmax())], "probabilities": dict(zip(names, p.tolist(), strict=True))}
                for p in probabilities]

    def step(self, batch):
        logits, labels = self(batch), batch["labels"]
        return F.cross_entropy(logits, labels), logits.argmax(-1), labels, labels.size(0)
