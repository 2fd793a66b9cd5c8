"""The ``speed`` switches that act on the built module and the process: torch.compile, the channels-last
layout, the precision of float32 matrix multiplies and a vocabulary padded for GPU matrix units."""

from __future__ import annotations

import torch

from headstart.errors import ConfigError

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = (None, "highest", "high", "medium")


def apply_speed(module, compile: bool = False, compile_mode: str | None = None, compile_backend: str = "inductor",
                channels_last: bool = False, matmul_precision: str | None = None,
                pad_vocab_to_multiple_of: int | None = None) -> dict:
    """Switch what ``speed`` asks for on ``module``; return what was applied, for the run's records."""
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"speed.compile_mode={compile_mode!r} is unknown; use one of "
                          f"{', '.join(str(m) for m in COMPILE_MODES)}.")
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"speed.matmul_precision={matmul_precision!r} is unknown; use one of "
                          f"{', '.join(str(m) for m in MATMUL_PRECISIONS)} (high: TF32 tensor cores on GPUs).")
    if compile and compile_backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ConfigError(f"speed.compile_backend={compile_backend!r} is not a torch.compile backend; use one of "
                          f"{', '.join(torch.compiler.list_backends())} (inductor generates kernels; aot_eager "
                          "checks a graph without them).")
    if pad_vocab_to_multiple_of is not None and pad_vocab_to_multiple_of < 1:
        raise ConfigError(f"speed.pad_vocab_to_multiple_of={pad_vocab_to_multiple_of} must be a positive number of "
                          "rows (64 suits GPU matrix units), or null for no padding.")
    if matmul_precision is not None:
        torch.set_float32_matmul_precision(matmul_precision)
    # Before compiling: the compiled step sees the padded shapes.
    padded = bool(pad_vocab_to_multiple_of) and module.pad_vocab(pad_vocab_to_multiple_of)
    if channels_last:
        # Convolution weights in NHWC; PyTorch then runs the convolutions (and their outputs) channels-last.
        module.net.to(memory_format=torch.channels_last)
    if compile:
        module.compile_for_training(mode=compile_mode, backend=compile_backend)
    return {"compile": compile, "compile_mode": compile_mode, "compile_backend": compile_backend,
            "channels_last": channels_last, "matmul_precision": torch.get_float32_matmul_precision(),
            "vocab_padded_to": module.net.config.vocab_size if padded else None}
