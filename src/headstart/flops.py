"""Analytic model FLOPs of a training step, for FLOPs/s and model FLOPs utilisation (MFU).

A transformer's training step costs, per token, 6 FLOPs per weight of its matrix multiplies (2 in the
forward pass, 4 in the backward) plus 12·L·d·T for attention's scores and weighted sums (L layers, d
the model width, T the sequence length): PaLM's "model FLOPs" (Chowdhery et al. 2022, appendix B),
which leave out recomputation, softmax and norms, so MFU is comparable across implementations. Input
embeddings are lookups, not multiplies; an output projection tied to them is a multiply and counts.
"""

from __future__ import annotations

import torch
from torch import nn


def matmul_parameters(net: nn.Module) -> int:
    """Weights that enter matrix multiplies: all but the embedding tables, plus a tied output projection."""
    embeddings = {id(m.weight) for m in net.modules() if isinstance(m, nn.Embedding)}
    total = sum(p.numel() for p in net.parameters() if id(p) not in embeddings)
    output = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if output is not None and id(output.weight) in embeddings:  # tied to the input embeddings
        total += output.weight.numel()
    return total


def transformer_training_flops(matmul_params: int, num_layers: int, width: int, batch: int, length: int) -> float:
    """Model FLOPs of one training step on a (batch, length) block of tokens."""
    tokens = batch * length
    return float(6 * matmul_params * tokens + 12 * num_layers * width * length * tokens)


def output_parameters(net: nn.Module) -> int:
    """Weights of the output projection (to the vocabulary), 0 for a network without one."""
    output = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    return output.weight.numel() if output is not None else 0


def text_batch_flops(net: nn.Module, batch, cache: dict, output_tokens: int | None = None) -> float | None:
    """Model FLOPs of a training step of the text transformer ``net`` on ``batch`` (padding included:
    it is computed too), with the output projection applied at ``output_tokens`` positions (None: at
    every token); None for a network or batch this does not describe."""
    config = getattr(net, "config", None)
    ids = batch.get("input_ids") if hasattr(batch, "get") else None
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or not hasattr(config, "num_hidden_layers"):
        return None
    if "params" not in cache:
        cache["params"], cache["output"] = matmul_parameters(net), output_parameters(net)
    batch_size, length = ids.shape
    body = transformer_training_flops(cache["params"] - cache["output"], config.num_hidden_layers,
                                      config.hidden_size, batch_size, length)
    return body + 6.0 * cache["output"] * (batch_size * length if output_tokens is None else output_tokens)
