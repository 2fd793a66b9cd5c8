"""Unsupervised SimCSE (Gao et al., 2021): each text is encoded twice with dropout on, and each of
the two embeddings must pick the other among the batch's texts (InfoNCE, in-batch negatives).
Dropout is the only augmentation, so any text data module works (``data.packing=lines``). On
labelled text (e.g. ``data=pydoc_topics_cls``) the labels feed the online evaluation alone (a
detached linear probe and a kNN monitor of the pooled encoder output, ``val/probe_acc`` and
``val/knn_acc``; :mod:`headstart.objectives.online_evaluation`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from headstart.backbones.pooling import check_pooling, pool
from headstart.backbones.text import encoder_inputs
from headstart.config.schema import SimCSEConfig
from headstart.errors import ConfigError
from headstart.module import HeadstartModule
from headstart.objectives.embedding_metrics import alignment, top1_retrieval_accuracy, uniformity
from headstart.objectives.losses import info_nce
from headstart.objectives.online_evaluation import OnlineEvaluation


class SimCSE(OnlineEvaluation, HeadstartModule):
    hf_head = "base"  # the export is the bare encoder; the projection is not part of it
    exports_backbone = True

    def __init__(self, backbone, optimizer, scheduler=None, temperature: float = SimCSEConfig.temperature,
                 pooling: str = SimCSEConfig.pooling, projection: bool = SimCSEConfig.projection,
                 gather_negatives: bool = SimCSEConfig.gather_negatives, knn_k: int = SimCSEConfig.knn_k,
                 online_probe: bool = SimCSEConfig.online_probe,
                 online_probe_lr_scale: float = SimCSEConfig.online_probe_lr_scale,
                 num_labels: int | None = None, label_names: list[str] | None = None, **kwargs) -> None:
        check_pooling(pooling)
        if temperature <= 0:
            raise ConfigError(f"task.temperature={temperature} must be positive (SimCSE uses 0.05).")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.temperature = temperature
        self.pooling = pooling
        self.gather_negatives = gather_negatives
        hidden = backbone.hidden_size
        # SimCSE's MLP over the pooled vector, for the contrastive loss only (as its "mlp_only_train").
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh()) if projection else nn.Identity()
        self.init_online_evaluation(hidden, num_labels, knn_k, online_probe, online_probe_lr_scale)

    @staticmethod
    def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = encoder_inputs(batch)
        inputs.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
        return inputs

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pooled encoder output of every text (what a hand-off reads)."""
        inputs = self._inputs(batch)
        return pool(self.net(**inputs).last_hidden_state, inputs["attention_mask"], self.pooling)

    def embed_twice(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled encoder output of two views of every text: the batch goes through the encoder
        doubled, in one pass, so that each copy gets its own dropout masks."""
        inputs = self._inputs(batch)
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
        hidden = self.net(**doubled).last_hidden_state
        return pool(hidden, doubled["attention_mask"], self.pooling).chunk(2)

    def _step(self, split: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a batch, and the pooled output of its first view."""
        view1, view2 = self.embed_twice(batch)
        z1, z2 = self.projection(view1), self.projection(view2)
        loss = info_nce(z1, z2, self.temperature, gather=self.gather_negatives)
        size = view1.size(0)
        self.log_split(split, {"loss": loss, "acc": top1_retrieval_accuracy(z1, z2)}, batch_size=size, prog_bar=True)
        if split != "train" and size > 1:  # diagnostics of the pooled output (what a hand-off reads)
            self.log_split(split, {"alignment": alignment(view1, view2), "uniformity": uniformity(view1)},
                           batch_size=size)
        return loss, view1

    def training_step(self, batch, batch_idx):
        loss, features = self._step("train", batch)
        probe_loss = self.online_probe_loss(features, batch)
        if probe_loss is None:
            return loss
        self.log_split("train", {"probe_loss": probe_loss}, batch_size=features.size(0))
        return loss + probe_loss

    def _eval_step(self, split: str, batch, batch_idx: int) -> None:
        # Dropout is the augmentation: without it both views are the same and the loss says nothing.
        # Fixed dropout masks per batch make the validation loss comparable from epoch to epoch.
        with dropout_on(self.net), self.seeded(batch_idx):
            self._step(split, batch)
        if self.evaluates_online:  # the features a downstream model gets: dropout off
            self.update_online_evaluation(split, self.embed(batch), batch)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)


@contextmanager
def dropout_on(module: nn.Module):
    """Put ``module`` in training mode (dropout active) for the block, then back to its mode."""
    was_training = module.training
    module.train()
    try:
        yield module
    finally:
        module.train(was_training)
