"""A training DataLoader that a run resumed mid-epoch continues exactly where the killed run was.

Lightning restores the loops' progress from a checkpoint, but a plain DataLoader starts its epoch
over, in a new random order. Here the loader's ``position`` (the seed its epoch's order was drawn
from, the batches trained, the random-number generators' states) goes into the checkpoint with the
data module's state: a resumed run draws the same order, skips the batches already trained on and
puts back the generators as they were when the killed run fetched its next batch, so it trains on the
same batches with the same random draws (masking, augmentation, dropout) as a run never stopped. A
run that is not resumed gets the very order of ``DataLoader(shuffle=True)``.

Lightning's own hook for this (a DataLoader with ``state_dict``/``load_state_dict``) is not used: in
Lightning 2.6 it loads the state only if the training loader is built after the checkpoint is
restored, and a learning-rate schedule that asks for ``estimated_stepping_batches`` builds it before.
The data module's state is restored before that.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


def capture_rng() -> dict[str, Any]:
    """The global generators' states (loadable with weights_only=True), taken before every batch.

    torch's and Python's: what masking, augmentation and dropout draw from. Not numpy's, which
    nothing in headstart draws from and whose state costs ~0.1 ms a batch to read.
    """
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochShuffleSampler(Sampler[int]):
    """torch's ``RandomSampler`` (the order ``shuffle=True`` gives, drawn the same way from the global
    generator at the start of each epoch), whose epoch can be resumed: ``resume(seed, start)`` makes
    the next iteration the epoch drawn from ``seed``, from its ``start``-th example on."""

    def __init__(self, size: int) -> None:
        self.size, self.seed, self._resume = size, None, None

    def resume(self, seed: int, start: int) -> None:
        self._resume = (seed, start)

    @property
    def start(self) -> int:
        """Where the next iteration starts in its epoch's order."""
        return self._resume[1] if self._resume else 0

    def __iter__(self) -> Iterator[int]:
        if self._resume is None:
            self.seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0  # as RandomSampler
        else:
            (self.seed, start), self._resume = self._resume, None
        yield from torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)).tolist()[start:]

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochShuffleSampler` whose state is its place in the epoch.

    ``batches_trained`` says how many batches of the current epoch the model has been trained on: the
    trainer's count, since a fetcher that reads ahead makes the loader's own count run over.
    """

    batches_trained: Callable[[], int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # Lightning may rebuild the loader around a sampler of its own (overfit_batches: sequential):
        # that order is fixed, so it starts at 0 and has nothing to resume.
        index = getattr(self.sampler, "start", 0) // self.batch_size
        resumed, self._resumed = getattr(self, "_resumed", []), []
        self._rng_before: dict[int, dict[str, Any]] = {}
        batches = super().__iter__()
        while True:
            if resumed:
                # The generators as the killed run had them before fetching this batch (see position).
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
        trained = self.batches_trained() if self.batches_trained else 0
        now = capture_rng()
        seed = getattr(self.sampler, "seed", None)
        if trained >= len(self) or seed is None:  # the next epoch is drawn afresh
            return {"seed": None, "batches_trained": 0, "rng": [now]}
        fetched = getattr(self, "_rng_before", {})
        # Batch `trained` already fetched (a fetcher that reads ahead): fetch it again with the states it
        # was fetched with, then the next one with the states of now, as the killed run would have.
        # Not fetched yet (Lightning's fetcher, as of 2.6): it is fetched from the states of now.
        rng = [fetched[trained], now] if trained in fetched else [now]
        return {"seed": seed, "batches_trained": trained, "rng": rng}

    # Lightning's resumable-loader interface, so that it does not warn that a run resumed mid-epoch
    # cannot continue its epoch. The position itself travels with the data module (see above).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def resume_at(self, state: dict[str, Any]) -> None:
        if state["seed"] is not None:
            self.sampler.resume(state["seed"], state["batches_trained"] * self.batch_size)
        self._resumed = list(state["rng"])
