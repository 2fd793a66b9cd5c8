"""Contrastive losses shared by the objectives (SimCLR, SimCSE, MoCo), with optional gathering of
embeddings across processes so that every rank's negatives include the other ranks' batches."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the gradient path to each rank's
    own part (``torch.distributed.nn.functional.all_gather`` sums gradients back in its backward)."""
    rank, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """One-directional InfoNCE: row i of ``query`` must pick row i of ``key`` among all keys
    (the keys of every process when ``gather``). Cosine similarity over ``temperature``."""
    query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    rank, world = _world()
    keys = gather_with_grad(key) if gather else key
    offset = rank * query.size(0) if gather and world > 1 else 0
    logits = query @ keys.T / temperature
    targets = torch.arange(query.size(0), device=query.device) + offset
    return F.cross_entropy(logits.float(), targets)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N views must pick its partner among the other 2N - 1 views
    (N = the global batch when ``gather``). Cosine similarity over ``temperature``."""
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    rank, world = _world()
    local = z1.size(0)
    if gather and world > 1:
        all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
        offset = rank * local
    else:
        all1, all2, offset = z1, z2, 0
    total = all1.size(0)
    candidates = torch.cat([all1, all2])                       # (2N, D): global view index
    queries = torch.cat([z1, z2])                              # (2B, D): local rows
    logits = queries @ candidates.T / temperature
    rows = torch.arange(local, device=z1.device) + offset
    self_index = torch.cat([rows, rows + total])               # each query's own column
    partner = torch.cat([rows + total, rows])                  # its positive's column
    logits = logits.float().masked_fill(
        F.one_hot(self_index, num_classes=2 * total).bool(), float("-inf"))
    return F.cross_entropy(logits, partner)
