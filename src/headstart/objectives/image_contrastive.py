"""What the contrastive image objectives (SimCLR, MoCo) share: two augmented views of every image,
backbone features -> MLP projection, the steps and their logging, and a measure of the features
that needs no classifier training: the leave-one-out k-nearest-neighbour accuracy of the validation
(and test) images' backbone features, ``val/knn_acc`` (labels are used for that alone).

The export is the bare backbone; the projection, like the objective, stays behind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.data.augment import ImageAugment, TwoViews
from headstart.errors import ConfigError
from headstart.module import HeadstartModule

# Temperature of the similarity-weighted votes of the kNN monitor (as in Wu et al., 2018).
_KNN_TEMPERATURE = 0.07


class ImageContrastiveObjective(HeadstartModule):
    hf_head = "base"
    exports_backbone = True

    def __init__(self, backbone, optimizer, scheduler=None, temperature: float = 0.2, projection_dim: int = 64,
                 projection_hidden_dim: int | None = None, augment: dict | None = None, knn_k: int = 20,
                 num_labels: int | None = None, label_names: list[str] | None = None, **kwargs) -> None:
        # num_labels/label_names come with labelled image data; the objective trains without them and
        # uses the validation labels only for the kNN monitor.
        if temperature <= 0:
            raise ConfigError(f"task.temperature={temperature} must be positive (0.1 to 0.5 is usual).")
        if knn_k < 0:
            raise ConfigError(f"task.knn_k={knn_k} must be >= 0 (0 switches the kNN monitor off).")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.image_features = backbone.features
        self.temperature = temperature
        self.knn_k = knn_k
        hidden = projection_hidden_dim or backbone.hidden_size
        # The MLP head of SimCLR and MoCo v2: the loss acts on its output, the hand-off takes the features below it.
        self.projection = nn.Sequential(nn.Linear(backbone.hidden_size, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, projection_dim))
        self.views = TwoViews(ImageAugment(**(augment or {})))
        self._knn_bank: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features, one vector per image (what a downstream head sees)."""
        return self.image_features(self.net(pixel_values=pixel_values))

    def project(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encode(pixel_values))

    def contrastive_step(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a batch of view pairs, and other values to log (e.g. ``acc``)."""
        raise NotImplementedError

    def _step(self, split: str, batch) -> torch.Tensor:
        view1, view2 = self.views(batch["pixel_values"])
        loss, values = self.contrastive_step(view1, view2)
        self.log_split(split, {"loss": loss, **values}, batch_size=view1.size(0), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def _eval_step(self, split: str, batch, batch_idx: int) -> None:
        # The same augmentations every epoch, so the loss moves only with the model.
        with self.seeded(batch_idx):
            self._step(split, batch)
        if self.knn_k and "labels" in batch:
            self._knn_bank.append((F.normalize(self.encode(batch["pixel_values"]).float(), dim=-1), batch["labels"]))

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)

    def on_validation_epoch_end(self):
        self._log_knn_accuracy("val")

    def on_test_epoch_end(self):
        self._log_knn_accuracy("test")

    def _log_knn_accuracy(self, split: str) -> None:
        if not self._knn_bank:
            return
        features = torch.cat([f for f, _ in self._knn_bank])
        labels = torch.cat([y for _, y in self._knn_bank])
        self._knn_bank.clear()
        if self.trainer.world_size > 1:  # every rank scores the whole split
            features = self.all_gather(features).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        # Every rank computed the same value; sync_dist only averages identical numbers.
        self.log(f"{split}/knn_acc", knn_accuracy(features, labels, self.knn_k), prog_bar=split == "val",
                 sync_dist=True)


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out accuracy of a k-nearest-neighbour classifier on L2-normalised ``features``: each
    example is labelled by its ``k`` most cosine-similar others, votes weighted by exp(similarity / 0.07)."""
    n = features.size(0)
    if n < 2:
        return torch.tensor(float("nan"), device=features.device)
    sim = features @ features.T
    sim.fill_diagonal_(float("-inf"))  # an example is not its own neighbour
    top_sim, top_index = sim.topk(min(k, n - 1), dim=-1)
    votes = torch.zeros(n, int(labels.max()) + 1, device=features.device, dtype=features.dtype)
    votes.scatter_add_(1, labels[top_index], (top_sim / _KNN_TEMPERATURE).exp())
    return (votes.argmax(-1) == labels).float().mean()
