"""The ``speed`` switches that act on the built module: torch.compile and the channels-last layout."""

from __future__ import annotations

import torch

from headstart.errors import ConfigError

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def apply_speed(module, compile: bool = False, compile_mode: str | None = None, channels_last: bool = False) -> dict:
    """Switch what ``speed`` asks for on ``module.net``; return what was applied, for the run's records."""
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"speed.compile_mode={compile_mode!r} is unknown; use one of "
                          f"{', '.join(str(m) for m in COMPILE_MODES)}.")
    if channels_last:
        # Convolution weights in NHWC; PyTorch then runs the convolutions (and their outputs) channels-last.
        module.net.to(memory_format=torch.channels_last)
    if compile:
        # In place: unlike torch.compile(net), the parameter names (checkpoints, exports) do not change.
        module.net.compile(mode=compile_mode)
    return {"compile": compile, "compile_mode": compile_mode, "channels_last": channels_last}
