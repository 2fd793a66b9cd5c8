"""Online evaluation of a pretraining objective's features, with the data's labels and nothing else
(a mixin for objectives on labelled data: the image objectives always, SimCSE on labelled text):

- ``val/probe_acc``: a linear classifier (batch norm without affine parameters, then linear, as in
  MAE's linear probing) on *detached* backbone features, trained beside the objective on the
  training batches. Its gradient never reaches the backbone, and its random init does not shift the
  objective's random stream, so a run trains the same backbone with it on or off. It is a
  submodule: checkpoints carry it and its optimizer state, DDP averages its gradients, a resumed run
  goes on with it, and the export leaves it behind. It learns at ``online_probe_lr_scale`` times the
  objective's learning rate.
- ``val/knn_acc``: the leave-one-out k-nearest-neighbour accuracy of the validation features,
  gathered from every process so each scores the whole split.

Both are logged for the test split too. Without labels (``num_labels`` unset) both are off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from headstart.errors import ConfigError

# Temperature of the similarity-weighted votes of the kNN monitor (as in Wu et al., 2018).
_KNN_TEMPERATURE = 0.07


class OnlineEvaluation:
    """Mixed into a HeadstartModule, which calls :meth:`init_online_evaluation` in its ``__init__``,
    adds :meth:`online_probe_loss` to its training loss and feeds :meth:`update_online_evaluation`
    the features of its evaluation batches. (No class-level defaults: a class attribute named
    ``online_probe`` would hide the submodule that nn.Module keeps in ``_modules``.)"""

    def init_online_evaluation(self, hidden_size: int, num_labels: int | None, knn_k: int = 20,
                               online_probe: bool = True, online_probe_lr_scale: float = 10.0) -> None:
        if knn_k < 0:
            raise ConfigError(f"task.knn_k={knn_k} must be >= 0 (0 switches the kNN monitor off).")
        if online_probe_lr_scale <= 0:
            raise ConfigError(f"task.online_probe_lr_scale={online_probe_lr_scale} must be positive: the probe's "
                              "learning rate as a multiple of the objective's.")
        self.knn_k = knn_k if num_labels else 0
        self.online_probe_lr_scale = online_probe_lr_scale
        self.online_probe = None
        if online_probe and num_labels:
            with torch.random.fork_rng(devices=[]):
                self.online_probe = nn.Sequential(nn.BatchNorm1d(hidden_size, affine=False),
                                                  nn.Linear(hidden_size, num_labels))
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

    def online_probe_loss(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The probe's cross-entropy on detached ``features`` of a training batch (None without a probe)."""
        if self.online_probe is None or "labels" not in batch:
            return None
        return F.cross_entropy(self.online_probe(features.detach().float()), batch["labels"])

    def update_online_evaluation(self, split: str, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Score the probe on, and bank for the kNN monitor, the features of an evaluation batch."""
        if "labels" not in batch:
            return
        features = features.float()
        if self.online_probe is not None:
            getattr(self, f"{split}_probe_acc").update(self.online_probe(features).argmax(-1), batch["labels"])
        if self.knn_k:
            self._knn_bank.append((F.normalize(features, dim=-1), batch["labels"]))

    @property
    def evaluates_online(self) -> bool:
        return self.online_probe is not None or self.knn_k > 0

    def on_validation_epoch_end(self):
        self.log_online_evaluation("val")

    def on_test_epoch_end(self):
        self.log_online_evaluation("test")

    def log_online_evaluation(self, split: str) -> None:
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
