"""Image augmentations as batched torch ops, on whatever device the batch is on (no torchvision).

Every op draws one setting per image from torch's RNG (or the ``generator`` given, for repeatable
views), so a batch is augmented in a few kernel calls. The geometric ops (random resized crop,
rotation, translation, flip) are composed into one affine map and sampled once with
``F.grid_sample``. Inputs are normalised images (B, C, H, W); brightness, noise and the erasing fill
are in those normalised units (0 is the data's mean, 1 one standard deviation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from headstart.config.schema import ImageAugmentConfig
from headstart.errors import ConfigError


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype, generator=generator)


def random_affine_theta(x: torch.Tensor, crop_scale: Sequence[float] | None, crop_ratio: Sequence[float],
                        rotation: float, translate: float, hflip_prob: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image 2x3 maps from output to input coordinates (``F.affine_grid``'s convention, [-1, 1]):
    flip, rotate and shift the output grid, then place it in a random crop of the input.

    The crop covers a share of the image area drawn from ``crop_scale`` with an aspect ratio drawn
    log-uniformly from ``crop_ratio`` (as torchvision's RandomResizedCrop), at a random position inside
    the image; ``rotation`` is the largest angle in degrees, ``translate`` the largest shift as a share
    of the image size.
    """
    n = x.size(0)
    if crop_scale:
        area = _uniform(n, crop_scale[0], crop_scale[1], x, generator)
        log_ratio = _uniform(n, math.log(crop_ratio[0]), math.log(crop_ratio[1]), x, generator)
        width = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)   # shares of the image's width/height
        height = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
        center_x = (1 - width) * _uniform(n, -1, 1, x, generator)  # keeps the crop inside the image
        center_y = (1 - height) * _uniform(n, -1, 1, x, generator)
    else:
        width = height = torch.ones(n, device=x.device, dtype=x.dtype)
        center_x = center_y = torch.zeros_like(width)
    angle = _uniform(n, -rotation, rotation, x, generator) * (math.pi / 180)
    shift_x, shift_y = (_uniform(n, -2 * translate, 2 * translate, x, generator) for _ in range(2))
    flip = torch.where(torch.rand(n, device=x.device, generator=generator) < hflip_prob, -1.0, 1.0).to(x.dtype)
    cos, sin = angle.cos(), angle.sin()
    # input = crop_scale * (rotation @ (flip * output) + shift) + crop_center
    theta = torch.stack([
        torch.stack([width * cos * flip, -width * sin, width * shift_x + center_x], dim=-1),
        torch.stack([height * sin * flip, height * cos, height * shift_y + center_y], dim=-1),
    ], dim=1)
    return theta


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` through per-image affine maps; points outside the image repeat its border."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each image around its own mean by a factor in [1 - contrast, 1 + contrast], then shift it
    by up to ``brightness``."""
    n = x.size(0)
    factor = _uniform(n, 1 - contrast, 1 + contrast, x, generator).view(n, 1, 1, 1)
    shift = _uniform(n, -brightness, brightness, x, generator).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean + shift


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + std * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def random_erasing(x: torch.Tensor, prob: float, scale: Sequence[float], ratio: Sequence[float] = (0.3, 3.3),
                   value: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``prob`` per image, fill a rectangle covering a share of the image drawn from
    ``scale`` (aspect ratio log-uniform in ``ratio``) with ``value``."""
    n, _, h, w = x.shape
    area = _uniform(n, scale[0], scale[1], x, generator) * h * w
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), x, generator)
    eh = torch.sqrt(area * log_ratio.exp()).round().clamp(1, h)
    ew = torch.sqrt(area / log_ratio.exp()).round().clamp(1, w)
    top = ((h - eh + 1) * torch.rand(n, device=x.device, dtype=x.dtype, generator=generator)).floor()
    left = ((w - ew + 1) * torch.rand(n, device=x.device, dtype=x.dtype, generator=generator)).floor()
    erase = torch.rand(n, device=x.device, generator=generator) < prob
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    top, eh, left, ew = (t.view(n, 1, 1) for t in (top, eh, left, ew))  # per image, against the pixel grid
    mask = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew) & erase.view(n, 1, 1)
    return x.masked_fill(mask.unsqueeze(1), value)


class ImageAugment:
    """The augmentation pipeline for a batch: crop/rotate/translate/flip, colour jitter, noise, erasing.

    Each part is switched off by its zero (``crop_scale: null``, ``rotation: 0``, ``brightness: 0``, ...).
    """

    def __init__(self, crop_scale: Sequence[float] | None = ImageAugmentConfig.crop_scale,
                 crop_ratio: Sequence[float] = ImageAugmentConfig.crop_ratio,
                 rotation: float = ImageAugmentConfig.rotation,
                 translate: float = ImageAugmentConfig.translate,
                 hflip_prob: float = ImageAugmentConfig.hflip_prob,
                 brightness: float = ImageAugmentConfig.brightness,
                 contrast: float = ImageAugmentConfig.contrast,
                 noise_std: float = ImageAugmentConfig.noise_std,
                 erase_prob: float = ImageAugmentConfig.erase_prob,
                 erase_scale: Sequence[float] = ImageAugmentConfig.erase_scale) -> None:
        for name, pair in (("crop_scale", crop_scale), ("crop_ratio", crop_ratio), ("erase_scale", erase_scale)):
            if pair is not None and (len(pair) != 2 or not 0 < pair[0] <= pair[1]):
                raise ConfigError(f"task.augment.{name}={list(pair)} must be [low, high] with 0 < low <= high.")
        if crop_scale is not None and crop_scale[1] > 1:
            raise ConfigError(f"task.augment.crop_scale={list(crop_scale)}: a crop covers at most the whole image (1.0).")
        for name, p in (("hflip_prob", hflip_prob), ("erase_prob", erase_prob)):
            if not 0 <= p <= 1:
                raise ConfigError(f"task.augment.{name}={p} is a probability: between 0 and 1.")
        for name, value in (("rotation", rotation), ("translate", translate), ("brightness", brightness),
                            ("contrast", contrast), ("noise_std", noise_std)):
            if value < 0:
                raise ConfigError(f"task.augment.{name}={value} must be >= 0 (0 switches it off).")
        if contrast > 1:
            raise ConfigError(f"task.augment.contrast={contrast} must be at most 1 (a factor in [1 - c, 1 + c]).")
        self.crop_scale = tuple(crop_scale) if crop_scale else None
        self.crop_ratio = tuple(crop_ratio)
        self.rotation, self.translate, self.hflip_prob = rotation, translate, hflip_prob
        self.brightness, self.contrast, self.noise_std = brightness, contrast, noise_std
        self.erase_prob, self.erase_scale = erase_prob, tuple(erase_scale)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_scale or self.rotation or self.translate or self.hflip_prob:
            theta = random_affine_theta(x, self.crop_scale, self.crop_ratio, self.rotation, self.translate,
                                        self.hflip_prob, generator)
            x = apply_affine(x, theta)
        if self.brightness or self.contrast:
            x = color_jitter(x, self.brightness, self.contrast, generator)
        if self.noise_std:
            x = gaussian_noise(x, self.noise_std, generator)
        if self.erase_prob:
            x = random_erasing(x, self.erase_prob, self.erase_scale, generator=generator)
        return x


class TwoViews:
    """Two independently augmented views of a batch, the input of the contrastive objectives."""

    def __init__(self, augment: ImageAugment) -> None:
        self.augment = augment

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(x, generator), self.augment(x, generator)
