"""Transfer modes: which backbone weights a downstream run trains, and at what learning rate.

- ``finetune``: everything trains.
- ``linear_probe``: the backbone is frozen (no gradients, and kept in eval mode so dropout and norm
  statistics do not move); only the head trains.
- ``partial``: the embeddings and the first ``freeze_layers`` layers are frozen, plus any parameter
  whose name (relative to the backbone) matches one of ``freeze_patterns``. An embeddings-only backbone
  (word2vec) has no layers: ``freeze_layers=1`` freezes its embeddings.
- ``scratch``: the same architecture from random weights (``model.init_from`` still supplies the
  tokenizer, so the baseline sees the same inputs).
``layer_lr_decay`` < 1 gives layer-wise learning-rate decay: the head trains at the base rate, the
top layer at ``lr * decay``, the one below at ``lr * decay**2``, ..., the embeddings lowest.
Layers and embeddings are found from the backbone's modules (:func:`parameter_levels`), not names.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from headstart.errors import ConfigError

MODES = ("finetune", "linear_probe", "partial", "scratch")


def _stack(backbone: nn.Module) -> nn.ModuleList | None:
    """The backbone's stack of layers: its first ``nn.ModuleList`` whose entries all hold parameters
    (BERT/ViT ``layer``/``layers``, GPT-2 ``h``, ResNet's and headstart's CNN ``encoder.stages``), or
    None when it has none (word2vec: embeddings only). Found from the modules, not their names."""
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
                any(True for _ in block.parameters()) for block in module):
            return module
    return None


def num_layers(backbone: nn.Module) -> int:
    stack = _stack(backbone)
    return len(stack) if stack is not None else 0


def parameter_levels(backbone: nn.Module) -> dict[str, int]:
    """Where each backbone parameter sits: -1 for the embeddings, ``i`` for layer ``i`` of the stack,
    ``num_layers`` for what comes after the stack (final norms, a pooler).

    The embeddings are what turns the inputs into the first layer's input: the parameters outside
    the stack that are registered before it (token and position tables and their norm, GPT-2's
    ``wte``/``wpe``, ViT's patch projection, CLS token and positions, a conv stem such as ResNet's
    ``embedder``), plus any other ``nn.Embedding`` outside the stack. transformers models build
    their embeddings before their layers, so registration order tells them apart without names.
    """
    stack = _stack(backbone)
    blocks = list(stack) if stack is not None else []
    layer = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    tables = {id(p) for m in backbone.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    levels, past_stack = {}, False
    for name, param in backbone.named_parameters():
        if id(param) in layer:
            levels[name], past_stack = layer[id(param)], True
        else:
            levels[name] = -1 if id(param) in tables or not past_stack else len(blocks)
    return levels


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
    if freeze_layers > max(total, 1):
        raise ConfigError(
            f"transfer.freeze_layers={freeze_layers} but the backbone has {total} layers; use at most {total}."
            if total else f"transfer.freeze_layers={freeze_layers} but the backbone is embeddings only (no layers); "
            "use 1 to freeze its embeddings (transfer=linear_probe does the same)."
        )
    levels = parameter_levels(backbone)
    patterns = [re.compile(p) for p in freeze_patterns]
    # freeze_layers=N: the embeddings (level -1) and layers 0..N-1; what follows the stack stays trainable.
    frozen = {name for name in names if freeze_layers > 0 and levels[name] < freeze_layers
              or any(p.search(name) for p in patterns)}
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
        # Lightning's fit never calls train(): it keeps each submodule's mode as it finds it, so eval from here.
        backbone.eval()
    module.layer_lr_decay = layer_lr_decay
    total = sum(1 for _ in backbone.parameters())
    return {"mode": mode, "frozen_parameters": len(frozen), "trainable_backbone_parameters": total - len(frozen),
            "layer_lr_decay": layer_lr_decay}


def layerwise_lr_scales(module) -> dict[str, float]:
    """Learning-rate scale of every trainable parameter of ``module`` under layer-wise decay."""
    decay = getattr(module, "layer_lr_decay", 1.0)
    backbone = module.backbone
    depth = num_layers(backbone)
    levels = parameter_levels(backbone)
    in_backbone = {id(p): n for n, p in backbone.named_parameters()}
    scales = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) not in in_backbone:
            scales[name] = 1.0  # the task head
            continue
        # Embeddings (-1) sit below layer 0; parameters after the stack (final norms) go with the top layer.
        scales[name] = decay ** (depth - min(levels[in_backbone[id(param)]], depth - 1))
    return scales
