"""SimCLR (Chen et al., 2020): two augmented views of every image; each view's projected features
must pick its partner among all 2N views of the batch (NT-Xent), the other 2N - 2 being negatives.
With ``gather_negatives`` the batch is the global one: every process's views are negatives."""

from __future__ import annotations

import torch

from headstart.config.schema import SimCLRConfig
from headstart.objectives.embedding_metrics import top1_retrieval_accuracy
from headstart.objectives.image_contrastive import ImageContrastiveObjective
from headstart.objectives.losses import nt_xent


class SimCLR(ImageContrastiveObjective):
    def __init__(self, backbone, optimizer, scheduler=None, temperature: float = SimCLRConfig.temperature,
                 gather_negatives: bool = SimCLRConfig.gather_negatives, **kwargs) -> None:
        super().__init__(backbone, optimizer, scheduler, temperature=temperature, **kwargs)
        self.gather_negatives = gather_negatives

    def contrastive_step(self, view1: torch.Tensor, view2: torch.Tensor):
        # Both views in one pass: batch norm normalises over all 2N views, as in SimCLR.
        features = self.encode(torch.cat([view1, view2]))
        z1, z2 = self.projection(features).chunk(2)
        loss = nt_xent(z1, z2, self.temperature, gather=self.gather_negatives)
        return loss, {"acc": top1_retrieval_accuracy(z1, z2)}, features[: view1.size(0)]
