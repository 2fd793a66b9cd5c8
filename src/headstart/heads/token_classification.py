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

from headstart.backbones.text import encoder_inputs
from headstart.config.schema import TokenClassificationConfig
from headstart.errors import ConfigError
from headstart.heads.span_f1 import SpanF1
from headstart.heads.supervised import SupervisedHead

IGNORE_INDEX = -100


class TokenClassifier(SupervisedHead):
    hf_task = "token"
    hf_stock = True  # BertForTokenClassification, GPT2ForTokenClassification, ...: dropout + linear on every token

    def __init__(self, backbone, optimizer, num_labels: int, label_names: list[str], scheduler=None,
                 classifier_dropout: float = TokenClassificationConfig.classifier_dropout, **kwargs) -> None:
        if len(label_names) != num_labels:
            raise ConfigError(f"token classification got {num_labels} labels but {len(label_names)} label names; "
                              "both come from the data module and must agree.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.label_names = list(label_names)
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, num_labels))
        self.init_metrics(MetricCollection({
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro", ignore_index=IGNORE_INDEX),
            "entities": SpanF1(self.label_names, ignore_index=IGNORE_INDEX),  # logged as f1/precision/recall
        }))

    def build_collator(self, processor):
        """Pads the inputs as usual and the label rows with -100, so padding is never scored."""
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(processor, label_pad_token_id=IGNORE_INDEX)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, num_labels) logits."""
        inputs = encoder_inputs(batch)
        return self.head(self.net(**inputs).last_hidden_state)

    def predictions(self, batch):
        """Each word's tag and its probability, read at the positions ``labels`` marks (a word's first
        sub-token; see :func:`headstart.data.token_classification.align_labels`)."""
        probabilities = self(batch).float().softmax(-1)
        out = []
        for row, marked in zip(probabilities, batch["labels"] != IGNORE_INDEX, strict=True):
            scores, ids = row[marked].max(-1)
            out.append({"tags": [self.label_names[i] for i in ids.tolist()], "scores": scores.tolist()})
        return out

    def step(self, batch):
        logits, labels = self(batch), batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        # Epoch means weigh by labelled positions, not sequences.
        return loss, logits.argmax(-1), labels, max(int((labels != IGNORE_INDEX).sum()), 1)
