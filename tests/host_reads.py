"""Record where a training loop reads tensors back to the host: each read waits for the device on a GPU.

On the CPU nothing waits, so the recorder notes the calls that would: ``.item()``, ``int()``/``float()``/
``bool()`` of a tensor, ``.tolist()``/``.numpy()``/``.cpu()``, ``.nonzero()`` and ``torch.cuda.synchronize``,
each with the optimizer step it came in. (Inside a step compiled with ``fullgraph=True`` none can hide:
dynamo refuses any of them there.) Host-side data code (the loader's sampler, the collator) reads host
tensors and is left out.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

import lightning.pytorch as pl
import torch

READS = ((torch.Tensor, "item"), (torch.Tensor, "__bool__"), (torch.Tensor, "__int__"), (torch.Tensor, "__float__"),
         (torch.Tensor, "__index__"), (torch.Tensor, "tolist"), (torch.Tensor, "numpy"), (torch.Tensor, "cpu"),
         (torch.Tensor, "nonzero"), (torch.cuda, "synchronize"))
HOST_DATA_CODE = ("torch/utils/data/", "headstart/data/")


class HostReads(pl.Callback):
    """A callback (to know the step) and the recorder: ``reads`` lists (step, what, where)."""

    def __init__(self) -> None:
        self.trainer = None
        self.reads: list[tuple[int, str, str]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.trainer = trainer

    def on_train_end(self, trainer, pl_module) -> None:
        self.trainer = None

    def note(self, what: str) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return
        stack = traceback.format_stack()[:-2]
        if any(part in line for line in stack for part in HOST_DATA_CODE):
            return
        where = next((line.strip().splitlines()[0] for line in reversed(stack)
                      if "host_reads.py" not in line and "torch/_" not in line), "?")
        self.reads.append((trainer.global_step, what, where))

    @contextmanager
    def recording(self):
        originals = {(owner, name): getattr(owner, name) for owner, name in READS}
        for (owner, name), original in originals.items():
            def wrapper(*args, _original=original, _name=name, **kwargs):
                self.note(_name)
                return _original(*args, **kwargs)

            setattr(owner, name, wrapper)
        try:
            yield self
        finally:
            for (owner, name), original in originals.items():
                setattr(owner, name, original)
