"""Variational autoencoder (Kingma & Welling, 2014): the backbone's features give the mean and log
variance of a diagonal Gaussian over a ``latent_dim``-dimensional code; a code drawn from it with the
reparameterisation trick is decoded into the image.

The loss is the negative ELBO per image: 0.5 x the summed squared error of the pixels (a unit-variance
Gaussian likelihood of the normalised pixels) + beta x KL(q(z|x) || N(0, I)). beta rises linearly
from 0 to ``kl_weight`` over the first ``kl_anneal_steps`` optimizer steps (KL annealing, Bowman et
al., 2016, which keeps the code from collapsing early); 0 steps uses ``kl_weight`` from the start.
Logged: ``loss``, ``recon_mse`` (per pixel), ``kl`` (per image) and ``beta``.

The export is the bare backbone (the features beneath the mean and log variance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from headstart.config.schema import VariationalAutoencoderConfig
from headstart.errors import ConfigError
from headstart.objectives.image_decoder import ImageDecoder
from headstart.objectives.image_pretraining import ImagePretrainingObjective


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) of each row, summed over the code's dimensions."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


class VariationalAutoencoder(ImagePretrainingObjective):
    def __init__(self, backbone, optimizer, scheduler=None,
                 latent_dim: int = VariationalAutoencoderConfig.latent_dim,
                 kl_weight: float = VariationalAutoencoderConfig.kl_weight,
                 kl_anneal_steps: int = VariationalAutoencoderConfig.kl_anneal_steps,
                 decoder_widths: Sequence[int] = VariationalAutoencoderConfig.decoder_widths, **kwargs) -> None:
        if latent_dim < 1:
            raise ConfigError(f"task.latent_dim={latent_dim} must be at least 1.")
        if kl_weight < 0 or kl_anneal_steps < 0:
            raise ConfigError(f"task.kl_weight={kl_weight} and task.kl_anneal_steps={kl_anneal_steps} must be >= 0.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.kl_weight, self.kl_anneal_steps = kl_weight, kl_anneal_steps
        self.to_posterior = nn.Linear(backbone.hidden_size, 2 * latent_dim)  # mean and log variance
        self.decoder = ImageDecoder(latent_dim, backbone.image_size, backbone.num_channels,
                                    list(decoder_widths))

    @property
    def beta(self) -> float:
        """The KL weight at the current step (global_step is checkpointed, so resume keeps the schedule)."""
        if self.kl_anneal_steps == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, self.global_step / self.kl_anneal_steps)

    def objective_step(self, pixel_values: torch.Tensor):
        features = self.encode(pixel_values)
        mean, log_var = self.to_posterior(features).float().chunk(2, dim=-1)
        log_var = log_var.clamp(-30.0, 20.0)  # exp() stays finite in any precision
        code = mean + torch.randn_like(mean) * (0.5 * log_var).exp()  # reparameterisation
        squared_error = (self.decoder(code).float() - pixel_values.float()).pow(2).flatten(1)
        kl = gaussian_kl(mean, log_var).mean()
        beta = self.beta
        loss = 0.5 * squared_error.sum(-1).mean() + beta * kl
        return loss, {"recon_mse": squared_error.mean(), "kl": kl, "beta": torch.tensor(beta)}, features
