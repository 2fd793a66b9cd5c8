"""One vector per sequence from a backbone's token states; shared by the heads that read a sequence
summary (sequence classification) and the objectives that train one (SimCSE)."""

from __future__ import annotations

import torch

from headstart.errors import ConfigError

POOLINGS = ("cls", "mean", "last")


def check_pooling(how: str, key: str = "task.pooling") -> None:
    if how not in POOLINGS:
        raise ConfigError(f"{key}={how!r} is unknown; use one of {', '.join(POOLINGS)}.")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per sequence: the first token, the mean of real tokens, or the last real token."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    last = attention_mask.sum(1).long() - 1  # right padding: the last real token
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
