"""MoCo v2 (He et al., 2020; Chen et al., 2020): a query encoder (backbone + projection) learns to
pick the key of the other view of its image among the keys of many earlier batches.

The key encoder is a momentum (exponential moving average) copy of the query encoder, never trained
by gradient; its keys of past batches wait in a queue of ``queue_size`` negatives. The queue is a
buffer, so checkpoints carry it and a resumed run goes on with the same negatives; under DDP every
process adds the keys of all processes, so the queues stay identical.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from headstart.config.schema import MoCoConfig
from headstart.errors import ConfigError
from headstart.objectives.image_contrastive import ImageContrastiveObjective
from headstart.objectives.losses import gather_with_grad


def queue_contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each query over [its own key, every queued key] (cosine similarities over
    ``temperature``; the positive is class 0). Returns the loss and the logits."""
    queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    positive = (queries * keys).sum(-1, keepdim=True)
    negatives = queries @ F.normalize(queue, dim=-1).T
    logits = torch.cat([positive, negatives], dim=1).float() / temperature
    targets = torch.zeros(queries.size(0), dtype=torch.long, device=queries.device)
    return F.cross_entropy(logits, targets), logits


class MoCo(ImageContrastiveObjective):
    def __init__(self, backbone, optimizer, scheduler=None, momentum: float = MoCoConfig.momentum,
                 queue_size: int = MoCoConfig.queue_size, projection_dim: int = MoCoConfig.projection_dim,
                 **kwargs) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"task.momentum={momentum} must be in [0, 1): the key encoder keeps this share of its "
                              "weights at each step (0.99 to 0.999 is usual).")
        if queue_size < 1:
            raise ConfigError(f"task.queue_size={queue_size} must be at least 1 (the number of queued negatives).")
        super().__init__(backbone, optimizer, scheduler, projection_dim=projection_dim, **kwargs)
        self.momentum = momentum
        # The key encoder starts as a copy of the query encoder; its parameters take no gradient (and so
        # are left out of the optimizer and of DDP's gradient sync).
        self.key_encoder = copy.deepcopy(self.net).requires_grad_(False)
        self.key_projection = copy.deepcopy(self.projection).requires_grad_(False)
        # Random unit vectors until real keys replace them, as in MoCo.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = momentum * key + (1 - momentum) * query, for every parameter of encoder and projection."""
        for online, target in ((self.net, self.key_encoder), (self.projection, self.key_projection)):
            for query_param, key_param in zip(online.parameters(), target.parameters(), strict=True):
                key_param.lerp_(query_param.detach(), 1.0 - self.momentum)

    @torch.no_grad()
    def keys(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.image_features(self.key_encoder(pixel_values=pixel_values))
        return F.normalize(self.key_projection(features), dim=-1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Put the keys of this step (of every process) into the queue, replacing the oldest ones."""
        keys = gather_with_grad(keys.detach()).to(self.queue.dtype)
        size = self.queue.size(0)
        keys = keys[-size:]  # a global batch larger than the queue keeps its last keys
        slots = (self.queue_ptr + torch.arange(keys.size(0), device=keys.device)) % size
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.size(0)) % size)

    def contrastive_step(self, view1: torch.Tensor, view2: torch.Tensor):
        if self.training:
            self.momentum_update()  # before the keys, as in MoCo
        keys = self.keys(view2)
        features = self.encode(view1)
        # A snapshot of the queue: the enqueue below changes it in place before the backward pass.
        loss, logits = queue_contrastive_loss(self.projection(features), keys, self.queue.clone(), self.temperature)
        if self.training:
            self.enqueue(keys)
        return loss, {"acc": (logits.argmax(-1) == 0).float().mean()}, features
