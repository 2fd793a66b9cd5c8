"""What the contrastive image objectives (SimCLR, MoCo) share: two augmented views of every image,
backbone features -> MLP projection, and the loss of a batch of view pairs. The online evaluation
(linear probe, kNN) and the export of the bare backbone come from
:class:`~headstart.objectives.image_pretraining.ImagePretrainingObjective`; the projection, like the
objective, stays behind.
"""

from __future__ import annotations

import torch
from torch import nn

from headstart.config.schema import ImageContrastiveConfig
from headstart.data.augment import ImageAugment, TwoViews
from headstart.errors import ConfigError
from headstart.objectives.image_pretraining import ImagePretrainingObjective


class ImageContrastiveObjective(ImagePretrainingObjective):
    def __init__(self, backbone, optimizer, scheduler=None,
                 temperature: float = ImageContrastiveConfig.temperature,
                 projection_dim: int = ImageContrastiveConfig.projection_dim,
                 projection_hidden_dim: int | None = None, augment: dict | None = None, **kwargs) -> None:
        if temperature <= 0:
            raise ConfigError(f"task.temperature={temperature} must be positive (0.1 to 0.5 is usual).")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.temperature = temperature
        hidden = projection_hidden_dim or backbone.hidden_size
        # The MLP head of SimCLR and MoCo v2: the loss acts on its output, the hand-off takes the features below it.
        self.projection = nn.Sequential(nn.Linear(backbone.hidden_size, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, projection_dim))
        self.views = TwoViews(ImageAugment(**(augment or {})))

    def project(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encode(pixel_values))

    def contrastive_step(self, view1: torch.Tensor, view2: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The loss of a batch of view pairs, other values to log (e.g. ``acc``), and the backbone
        features of the first views."""
        raise NotImplementedError

    def objective_step(self, pixel_values: torch.Tensor):
        return self.contrastive_step(*self.views(pixel_values))
