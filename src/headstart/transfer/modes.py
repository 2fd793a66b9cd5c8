"""Transfer modes: which backbone weights a downstream run trains, and at what learning rate.

- ``finetune``: everything trains.
- ``linear_probe``: the backbone is frozen (no gradients, and kept in eval mode so dropout and norm
  statistics do not move); only the head trains.
- ``partial``: the embeddings and the first ``freeze_layers`` layers are frozen, plus any parameter
  whose name (relative to the backbone) matches one of ``freeze_patterns``.
- ``scratch``: the same architecture from random weights (``model.init_from`` still supplies the
  tokenizer, so the baseline sees the same inputs).
``layer_lr_decay`` < 1 gives layer-wise learning-rate decay: the head trains at the base rate, the
top layer at ``lr * decay``, the one below at ``lr * decay**2``, ..., the embeddings lowest.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from headstart.errors import ConfigError

MODES = ("finetune", "linear_probe", "partial", "scratch")

# How the layers of a stack are named in transformers models (BERT/ViT: layer.N, GPT-2: h.N,
# Llama: layers.N, ResNet: stages.N) and in headstart's CNN (blocks.N).
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|stages)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The layer index of a backbone parameter name, or None for parameters outside the stack."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def num_layers(backbone: nn.Module) -> int:
    indices = [i for i in (layer_of(n) for n, _ in backbone.named_parameters()) if i is not None]
    return max(indices) + 1 if indices else 0


def frozen_names(backbone: nn.Module, mode: str, freeze_layers: int = 0,
                 freeze_patterns: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The backbone parameters a transfer mode freezes (names relative to the backbone)."""
    if mode not in MODES:
        raise ConfigError(f"transfer.mode={mode!r} is unknown; use one of {', '.join(MODES)}.")
    names = [n for n, _ in backbone.named_parameters()]
    if mode == "linear_probe":
        return set(names)
    if mode != "partial":
        return set()
    total = num_layers(backbone)
    if freeze_layers > total:
        raise ConfigError(f"transfer.freeze_layers={freeze_layers} but the backbone has {total} layers; "
                          f"use at most {total}.")
    patterns = [re.compile(p) for p in freeze_patterns]
    frozen = set()
    for name in names:
        layer = layer_of(name)
        below = freeze_layers > 0 and (layer is None and "embed" in name or layer is not None and layer < freeze_layers)
        if below or any(p.search(name) for p in patterns):
            frozen.add(name)
    if not frozen:
        raise ConfigError("transfer.mode=partial froze nothing: set transfer.freeze_layers=N or "
                          "transfer.freeze_patterns=[regex, ...] matching backbone parameter names.")
    return frozen


def apply_transfer(module, mode: str = "finetune", freeze_layers: int = 0,
                   freeze_patterns: list[str] | tuple[str, ...] = (), layer_lr_decay: float = 1.0) -> dict[str, Any]:
    """Freeze what ``mode`` says in ``module.backbone``; return a summary for the run's records."""
    if not 0.0 < layer_lr_decay <= 1.0:
        raise ConfigError(f"transfer.layer_lr_decay={layer_lr_decay} must be in (0, 1]; 1 turns the decay off.")
    backbone = module.backbone
    frozen = frozen_names(backbone, mode, freeze_layers, freeze_patterns)
    for name, param in backbone.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    if mode == "linear_probe":
        module.frozen_modules = [backbone]  # HeadstartModule.train keeps these in eval mode
    module.layer_lr_decay = layer_lr_decay
    total = sum(1 for _ in backbone.parameters())
    return {"mode": mode, "frozen_parameters": len(frozen), "trainable_backbone_parameters": total - len(frozen),
            "layer_lr_decay": layer_lr_decay}


def layerwise_lr_scales(module) -> dict[str, float]:
    """Learning-rate scale of every trainable parameter of ``module`` under layer-wise decay."""
    decay = getattr(module, "layer_lr_decay", 1.0)
    backbone = module.backbone
    depth = num_layers(backbone)
    in_backbone = {id(p): n for n, p in backbone.named_parameters()}
    scales = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) not in in_backbone:
            scales[name] = 1.0  # the task head
            continue
        layer = layer_of(in_backbone[id(param)])
        # Embeddings sit below layer 0; parameters after the stack (final norms) with the top layer.
        level = -1 if layer is None and "embed" in in_backbone[id(param)] else (depth - 1 if layer is None else layer)
        scales[name] = decay ** (depth - level)
    return scales
