"""What every image pretraining objective shares (SimCLR, MoCo, the autoencoders): backbone features
of an image, the steps and their logging, export of the bare backbone, and online evaluation of the
features while they train.

Online evaluation uses the labels of the image data for two monitors and nothing else:

- ``val/probe_acc``: a linear classifier on *detached* backbone features, trained beside the
  objective on the training batches (its gradient never reaches the backbone), scored on the
  validation images. It is a submodule, so checkpoints carry it and its optimizer state, DDP
  averages its gradients, and a resumed run goes on with it; the export leaves it behind.
- ``val/knn_acc``: the leave-one-out k-nearest-neighbour accuracy of the validation images' features
  (gathered from every process, so each scores the whole split).

Both are logged on the test split too (``test/probe_acc``, ``test/knn_acc``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from headstart.errors import ConfigError
from headstart.module import HeadstartModule

# Temperature of the similarity-weighted votes of the kNN monitor (as in Wu et al., 2018).
_KNN_TEMPERATURE = 0.07


class ImagePretrainingObjective(HeadstartModule):
    hf_head = "base"
    exports_backbone = True

    def __init__(self, backbone, optimizer, scheduler=None, knn_k: int = 20, online_probe: bool = True,
                 online_probe_lr_scale: float = 10.0, num_labels: int | None = None,
                 label_names: list[str] | None = None, **kwargs) -> None:
        # num_labels/label_names come with labelled image data; the objective trains without them.
        if knn_k < 0:
            raise ConfigError(f"task.knn_k={knn_k} must be >= 0 (0 switches the kNN monitor off).")
        if online_probe_lr_scale <= 0:
            raise ConfigError(f"task.online_probe_lr_scale={online_probe_lr_scale} must be positive: the probe's "
                              "learning rate as a multiple of the objective's.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.image_features = backbone.features
        self.knn_k = knn_k
        self.online_probe_lr_scale = online_probe_lr_scale
        self.online_probe = None
        if online_probe and num_labels:
            # Its random init must not shift the random stream the objective's own layers draw from:
            # a run trains the same with the monitor on or off.
            with torch.random.fork_rng(devices=[]):
                # Batch norm without affine parameters first, as in MAE's linear probing: the probe
                # then learns at one learning rate whatever the scale of the features.
                self.online_probe = nn.Sequential(nn.BatchNorm1d(backbone.hidden_size, affine=False),
                                                  nn.Linear(backbone.hidden_size, num_labels))
        if self.online_probe is not None:
            self.val_probe_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
            self.test_probe_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self._knn_bank: list[tuple[torch.Tensor, torch.Tensor]] = []

    def lr_scales(self) -> dict[str, float]:
        # A linear classifier on fixed features learns faster than the network beneath it may.
        scales = super().lr_scales()
        if self.online_probe is not None:
            scales.update({f"online_probe.{name}": self.online_probe_lr_scale * scales.get(f"online_probe.{name}", 1.0)
                           for name, _ in self.online_probe.named_parameters()})
        return scales

    # -- what an objective writes -------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features of whole images, one vector per image (what a downstream head sees)."""
        return self.image_features(self.net(pixel_values=pixel_values))

    def objective_step(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The objective's loss on a batch of images, other values to log, and the backbone features
        of the batch's images (or of one view of them) that the online probe learns from."""
        raise NotImplementedError

    # -- steps --------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss, values, features = self.objective_step(batch["pixel_values"])
        if self.online_probe is not None and "labels" in batch:
            probe_loss = F.cross_entropy(self.online_probe(features.detach().float()), batch["labels"])
            values = {**values, "probe_loss": probe_loss}
            total = loss + probe_loss  # the probe's gradient stays in the probe: its input is detached
        else:
            total = loss
        self.log_split("train", {"loss": loss, **values}, batch_size=batch["pixel_values"].size(0), prog_bar=True)
        return total

    def _eval_step(self, split: str, batch, batch_idx: int) -> None:
        # The same random views/masks/noise every epoch, so the loss moves only with the model.
        with self.seeded(batch_idx):
            loss, values, _ = self.objective_step(batch["pixel_values"])
        self.log_split(split, {"loss": loss, **values}, batch_size=batch["pixel_values"].size(0), prog_bar=True)
        if "labels" not in batch or not (self.knn_k or self.online_probe is not None):
            return
        features = self.encode(batch["pixel_values"]).float()
        if self.online_probe is not None:
            getattr(self, f"{split}_probe_acc").update(self.online_probe(features).argmax(-1), batch["labels"])
        if self.knn_k:
            self._knn_bank.append((F.normalize(features, dim=-1), batch["labels"]))

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)

    def on_validation_epoch_end(self):
        self._log_online_evaluation("val")

    def on_test_epoch_end(self):
        self._log_online_evaluation("test")

    def _log_online_evaluation(self, split: str) -> None:
        if self.online_probe is not None:
            metric = getattr(self, f"{split}_probe_acc")
            if metric.update_called:
                self.log(f"{split}/probe_acc", metric.compute(), prog_bar=split == "val", sync_dist=True)
            metric.reset()
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
