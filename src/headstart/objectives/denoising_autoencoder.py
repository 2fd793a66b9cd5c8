"""Denoising autoencoder (Vincent et al., 2008): corrupt an image, encode it with the backbone, and
decode the clean image from the feature vector (mean squared error over pixels). The corruption is
``noise`` at ``noise_level``:

- ``gaussian``: add N(0, level^2) to every (normalised) pixel;
- ``masking``: set each pixel, with probability ``level``, to 0 (the data's mean);
- ``salt_pepper``: set each pixel, with probability ``level``, to the image's minimum or maximum.

The export is the bare backbone; the decoder stays behind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from headstart.config.schema import DenoisingAutoencoderConfig
from headstart.data.augment import gaussian_noise
from headstart.errors import ConfigError
from headstart.objectives.image_decoder import ImageDecoder
from headstart.objectives.image_pretraining import ImagePretrainingObjective

NOISE_TYPES = ("gaussian", "masking", "salt_pepper")


def corrupt(images: torch.Tensor, noise: str, level: float) -> torch.Tensor:
    """``images`` (B, C, H, W) with ``noise`` of strength ``level`` (see the module docstring)."""
    if noise == "gaussian":
        return gaussian_noise(images, level)
    hit = torch.rand(images.shape, device=images.device) < level
    if noise == "masking":
        return images.masked_fill(hit, 0.0)
    low = images.amin(dim=(1, 2, 3), keepdim=True).expand_as(images)
    high = images.amax(dim=(1, 2, 3), keepdim=True).expand_as(images)
    salt = torch.rand(images.shape, device=images.device) < 0.5
    return torch.where(hit, torch.where(salt, high, low), images)


class DenoisingAutoencoder(ImagePretrainingObjective):
    def __init__(self, backbone, optimizer, scheduler=None, noise: str = DenoisingAutoencoderConfig.noise,
                 noise_level: float = DenoisingAutoencoderConfig.noise_level,
                 decoder_widths: Sequence[int] = DenoisingAutoencoderConfig.decoder_widths, **kwargs) -> None:
        if noise not in NOISE_TYPES:
            raise ConfigError(f"task.noise={noise!r} is not a noise type; use one of {', '.join(NOISE_TYPES)}.")
        if noise_level < 0 or (noise != "gaussian" and noise_level > 1):
            raise ConfigError(f"task.noise_level={noise_level} is out of range: the std of gaussian noise (>= 0), or "
                              "the share of pixels hit by masking/salt_pepper noise (0 to 1).")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.noise, self.noise_level = noise, noise_level
        self.decoder = ImageDecoder(backbone.hidden_size, backbone.image_size, backbone.num_channels,
                                    list(decoder_widths))

    def objective_step(self, pixel_values: torch.Tensor):
        features = self.encode(corrupt(pixel_values, self.noise, self.noise_level))
        reconstruction = self.decoder(features)
        return F.mse_loss(reconstruction.float(), pixel_values.float()), {}, features
