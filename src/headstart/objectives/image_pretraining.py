"""What every image pretraining objective shares (SimCLR, MoCo, the autoencoders): backbone features
of an image, the steps and their logging, export of the bare backbone, and online evaluation of the
features while they train (a detached linear probe and a kNN monitor on the labelled images; see
:mod:`headstart.objectives.online_evaluation`).
"""

from __future__ import annotations

import torch

from headstart.config.schema import ImagePretrainingConfig
from headstart.module import HeadstartModule
from headstart.objectives.online_evaluation import OnlineEvaluation


class ImagePretrainingObjective(OnlineEvaluation, HeadstartModule):
    hf_head = "base"
    exports_backbone = True

    def __init__(self, backbone, optimizer, scheduler=None, knn_k: int = ImagePretrainingConfig.knn_k,
                 online_probe: bool = ImagePretrainingConfig.online_probe,
                 online_probe_lr_scale: float = ImagePretrainingConfig.online_probe_lr_scale,
                 num_labels: int | None = None, label_names: list[str] | None = None, **kwargs) -> None:
        # num_labels/label_names come with labelled image data; the objective trains without them.
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.image_features = backbone.features
        self.init_online_evaluation(backbone.hidden_size, num_labels, knn_k, online_probe, online_probe_lr_scale)

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
        probe_loss = self.online_probe_loss(features, batch)
        if probe_loss is not None:
            values = {**values, "probe_loss": probe_loss}
        self.log_split("train", {"loss": loss, **values}, batch_size=batch["pixel_values"].size(0), prog_bar=True)
        return loss if probe_loss is None else loss + probe_loss

    def _eval_step(self, split: str, batch, batch_idx: int) -> None:
        # The same random views/masks/noise every epoch, so the loss moves only with the model.
        with self.seeded(batch_idx):
            loss, values, _ = self.objective_step(batch["pixel_values"])
        self.log_split(split, {"loss": loss, **values}, batch_size=batch["pixel_values"].size(0), prog_bar=True)
        if self.evaluates_online:
            self.update_online_evaluation(split, self.encode(batch["pixel_values"]), batch)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)
