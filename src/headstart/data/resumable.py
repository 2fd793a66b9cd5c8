"""A training DataLoader that a run resumed mid-epoch continues exactly where the killed run was.

Lightning restores the loops' progress from a checkpoint, but a plain DataLoader starts its epoch
over, in a new random order. Here the order of epoch ``e`` is a function of ``(seed, e)`` alone, and
the loader's ``position`` (epoch, batches trained, random-number generator states) goes into the
checkpoint with the data module's state: a resumed run skips the batches already trained on and puts
back the generators as they were when the killed run fetched its next batch, so it trains on the same
batches with the same random draws (masking, augmentation, dropout) as a run never stopped.

Lightning's own hook for this (a DataLoader with ``state_dict``/``load_state_dict``) is not used: in
Lightning 2.6 it loads the state only if the training loader is built after the checkpoint is
restored, and a learning-rate schedule that asks for ``estimated_stepping_batches`` builds it before.
The data module's state is restored before that.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def capture_rng() -> dict[str, Any]:
    """The global generators' states, as plain tensors and tuples (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochShuffleSampler(Sampler[int]):
    """A random order per epoch, drawn from ``seed + epoch`` (Lightning calls ``set_epoch``); the
    next iteration may start ``start`` examples in."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        start, self.start = self.start, 0
        yield from order[start:]

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochShuffleSampler` whose state is its place in the epoch.

    ``batches_trained`` says how many batches of the current epoch the model has been trained on
    (the trainer's count: Lightning fetches a batch ahead, so the loader's own count runs one over).
    """

    batches_trained: Callable[[], int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochShuffleSampler = self.sampler
        index = sampler.start // self.batch_size
        resumed, self._resumed = getattr(self, "_resumed", []), []
        self._rng_before: dict[int, dict[str, Any]] = {}
        batches = super().__iter__()
        while True:
            if resumed:
                # The generators as the killed run had them before fetching this batch (see state_dict).
                restore_rng(resumed.pop(0))
            self._rng_before[index] = capture_rng()
            self._rng_before.pop(index - 3, None)
            try:
                batch = next(batches)
            except StopIteration:
                return
            index += 1
            yield batch

    def position(self) -> dict[str, Any]:
        sampler: EpochShuffleSampler = self.sampler
        trained = self.batches_trained() if self.batches_trained else 0
        now = capture_rng()
        if trained >= len(self):  # the epoch is over: the next one starts from its beginning
            return {"epoch": sampler.epoch + 1, "batches_trained": 0, "rng": [now]}
        fetched = getattr(self, "_rng_before", {})
        # Batch `trained` already fetched (a fetcher that reads ahead): fetch it again with the states it
        # was fetched with, then the next one with the states of now, as the killed run would have.
        # Not fetched yet (Lightning's fetcher, as of 2.6): it is fetched from the states of now.
        rng = [fetched[trained], now] if trained in fetched else [now]
        return {"epoch": sampler.epoch, "batches_trained": trained, "rng": rng}

    def resume_at(self, state: dict[str, Any]) -> None:
        sampler: EpochShuffleSampler = self.sampler
        sampler.set_epoch(state["epoch"])
        sampler.start = state["batches_trained"] * self.batch_size
        self._resumed = list(state["rng"])
