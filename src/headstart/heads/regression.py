"""Text regression: a pooled representation -> dropout -> linear to ``num_targets`` numbers.

With ``standardize_targets`` the head learns the targets scaled to mean 0 / std 1 by the training
split's statistics (so a target in the thousands trains with the same learning rate as one near 1)
and undoes it for the predictions, so val/test MSE, MAE, Pearson and Spearman are in the data's
units. The loss (and ``val/loss``) is in the scale the head learns in.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from headstart.backbones.pooling import check_pooling, pool
from headstart.backbones.text import encoder_inputs
from headstart.config.schema import RegressionConfig
from headstart.errors import ConfigError
from headstart.heads.supervised import SupervisedHead

LOSSES = ("mse", "mae", "huber")


class Regressor(SupervisedHead):
    per_example_metrics = ("mse", "mae")

    def __init__(self, backbone, optimizer, scheduler=None, num_targets: int = 1,
                 pooling: str = RegressionConfig.pooling,
                 classifier_dropout: float = RegressionConfig.classifier_dropout,
                 loss: str = RegressionConfig.loss, huber_delta: float = RegressionConfig.huber_delta,
                 standardize_targets: bool = RegressionConfig.standardize_targets,
                 target_mean: list[float] | None = None, target_std: list[float] | None = None,
                 **kwargs) -> None:
        check_pooling(pooling)
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss!r} is unknown; use one of {', '.join(LOSSES)}.")
        if huber_delta <= 0:
            raise ConfigError(f"task.huber_delta={huber_delta} must be positive: where the Huber loss turns linear.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.pooling, self.loss_name, self.huber_delta = pooling, loss, huber_delta
        self.num_targets = num_targets
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, num_targets))
        # Buffers, so that a checkpoint carries the scaling it was trained with.
        scale = standardize_targets and target_mean is not None and target_std is not None
        self.register_buffer("target_mean", torch.tensor(target_mean if scale else [0.0] * num_targets))
        self.register_buffer("target_std", torch.tensor(target_std if scale else [1.0] * num_targets))
        with warnings.catch_warnings():  # that Spearman keeps every prediction: it must, to rank them
            warnings.filterwarnings("ignore", message=".*will save all targets and predictions.*")
            spearman = SpearmanCorrCoef(num_outputs=num_targets)
        self.init_metrics(MetricCollection({
            "mse": MeanSquaredError(),
            "mae": MeanAbsoluteError(),
            "pearson": PearsonCorrCoef(num_outputs=num_targets),
            "spearman": spearman,
        }))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, num_targets) predictions in the standardised scale the head learns in."""
        inputs = encoder_inputs(batch)
        hidden = self.net(**inputs).last_hidden_state
        return self.head(pool(hidden, batch["attention_mask"], self.pooling))

    def unscale(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs of :meth:`forward` in the data's units."""
        return outputs.float() * self.target_std + self.target_mean

    def hf_settings(self):
        """The export predicts in the data's units: its config carries the targets' scaling."""
        return {**super().hf_settings(), "problem_type": "regression", "target_mean": self.target_mean.tolist(),
                "target_std": self.target_std.tolist()}

    def hf_outputs(self, batch):
        return (self.unscale(self(batch)),)

    def predictions(self, batch):
        """The value, or the list of values, in the data's units."""
        return [{"prediction": v[0] if self.num_targets == 1 else v} for v in self.unscale(self(batch)).tolist()]

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scaled = (targets - self.target_mean) / self.target_std
        outputs = outputs.float()
        if self.loss_name == "mae":
            return F.l1_loss(outputs, scaled)
        if self.loss_name == "huber":
            return F.huber_loss(outputs, scaled, delta=self.huber_delta)
        return F.mse_loss(outputs, scaled)

    def step(self, batch):
        targets, outputs = batch["labels"].float().view(-1, self.num_targets), self(batch)
        loss, predictions = self._loss(outputs, targets), self.unscale(outputs)
        if self.num_targets == 1:  # the correlation metrics want (N,) for a single output
            predictions, targets = predictions.squeeze(-1), targets.squeeze(-1)
        return loss, predictions, targets, predictions.size(0)

    def metric_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Correlations of several targets come per target; log their mean."""
        return {k: v.float().mean() for k, v in values.items()}
