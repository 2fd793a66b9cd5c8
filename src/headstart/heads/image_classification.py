"""Image classification: a vision backbone's features -> dropout -> linear."""

from __future__ import annotations

import torch

from headstart.config.schema import ImageClassificationConfig
from headstart.heads.classification import Classifier


class ImageClassifier(Classifier):
    hf_task = "image"
    hf_stock = True  # ViTForImageClassification (CLS token), ResNetForImageClassification (pooled map)

    def __init__(self, backbone, optimizer, num_labels: int, scheduler=None,
                 label_names: list[str] | None = None,
                 classifier_dropout: float = ImageClassificationConfig.classifier_dropout, **kwargs) -> None:
        super().__init__(backbone, optimizer, num_labels, scheduler, label_names=label_names,
                         classifier_dropout=classifier_dropout, **kwargs)
        self.image_features = backbone.features

    def hf_settings(self):
        from headstart.hf_models import IMAGE_POOLING

        return {**super().hf_settings(), "pooling": IMAGE_POOLING}

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_features(self.net(pixel_values=batch["pixel_values"]))
