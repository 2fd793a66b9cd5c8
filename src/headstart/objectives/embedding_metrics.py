"""Diagnostics of embeddings trained contrastively (SimCSE, SimCLR): how close the two views of an
example are, how evenly the embeddings spread, and how often a view retrieves its partner."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the normalised views of each example (Wang & Isola, 2020);
    lower is better, 0 when the views coincide."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    return (z1 - z2).pow(2).sum(-1).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E[exp(-t ||zi - zj||^2)] over distinct pairs of normalised embeddings (Wang & Isola, 2020);
    lower (more negative) means more evenly spread on the sphere."""
    z = F.normalize(z.float(), dim=-1)
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log()


def top1_retrieval_accuracy(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Share of rows of ``query`` whose most cosine-similar row of ``key`` is their own partner (the
    in-batch accuracy of the contrastive task; 1 / batch size is chance)."""
    sim = F.normalize(query.float(), dim=-1) @ F.normalize(key.float(), dim=-1).T
    return (sim.argmax(-1) == torch.arange(query.size(0), device=query.device)).float().mean()
