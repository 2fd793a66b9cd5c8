"""The few-label setting: which training examples keep their labels.

The amount is a share (``data.label_fraction``) or a number of examples (``data.label_count``), and
``data.label_sampling`` says how a number is spread over the classes:

- ``stratified``: ``label_count`` examples in all, each class keeping its share of the training split
  (at least one each);
- ``balanced``: ``label_count`` examples in all, as equal a number from every class as it has;
- ``per_class``: ``label_count`` examples from every class (all of a class that has fewer).

Draws are seeded (a different seed draws a different subset) and keep the original order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from headstart.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLINGS = ("stratified", "balanced", "per_class")


def check_label_amount(fraction: float, count: int | None, sampling: str) -> None:
    """A data module's label_fraction / label_count / label_sampling, checked before anything is read."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.label_fraction={fraction} must be in (0, 1]: the share of training labels kept.")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"data.label_count={count!r} must be a positive whole number of labelled training examples "
                          "(or null for all of them).")
    if count is not None and fraction < 1.0:
        raise ConfigError(f"data.label_count={count} and data.label_fraction={fraction} are both set; give one: "
                          "a number of labelled examples or a share of them.")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"data.label_sampling={sampling!r} is not one of {list(SAMPLINGS)}: stratified (label_count in "
                          "all, classes in the training split's proportions), balanced (label_count in all, equal per "
                          "class) or per_class (label_count from every class).")


def _warn_if_beyond(count: int, rows: int, largest_class: int | None = None) -> None:
    """Say so when ``data.label_count`` asks for more than the training split has (every row is then
    kept, and the run is one with all the labels, not with ``count`` of them); ``largest_class``: the
    largest class's size, where the count is per class."""
    if largest_class is not None and count > largest_class:
        log.warning("data.label_count=%d (per class, data.label_sampling=per_class) is more than any class of the "
                    "training split has (the largest: %d): all %d training examples are used", count,
                    largest_class, rows)
    elif largest_class is None and count > rows:
        log.warning("data.label_count=%d is more than the %d examples of the training split: all %d are used; "
                    "ask for at most %d", count, rows, rows, rows)


def _per_class_counts(sizes: np.ndarray, fraction: float, count: int | None, sampling: str,
                      generator: torch.Generator) -> np.ndarray:
    """How many examples each class keeps."""
    if count is None:
        return np.maximum(1, np.round(fraction * sizes)).astype(int)
    if sampling == "per_class":
        return np.minimum(count, sizes)
    if count < len(sizes):
        raise ConfigError(f"data.label_count={count} is fewer than the {len(sizes)} classes of the training split, and "
                          f"data.label_sampling={sampling} keeps at least one example of each. Ask for "
                          f"data.label_count>={len(sizes)}, or data.label_sampling=per_class for a number per class.")
    if count >= sizes.sum():
        return sizes.copy()
    if sampling == "balanced":
        # Equal shares, then what the smaller classes cannot give goes to the others, one at a time.
        take = np.zeros_like(sizes)
        while take.sum() < count:
            open_classes = np.flatnonzero(take < sizes)
            need = count - take.sum()
            if need < len(open_classes):  # the remainder to classes drawn at random
                chosen = open_classes[torch.randperm(len(open_classes), generator=generator)[:need].numpy()]
                take[chosen] += 1
            else:
                take[open_classes] = np.minimum(sizes[open_classes], take[open_classes] + need // len(open_classes))
        return take
    # Stratified: largest-remainder apportionment of count by class size, at least one each.
    exact = count * sizes / sizes.sum()
    take = np.maximum(1, np.floor(exact)).astype(int)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while take.sum() < count:
        c = order[i % len(order)]
        if take[c] < sizes[c]:
            take[c] += 1
        i += 1
    while take.sum() > count:  # the minimum of one pushed it over: take back from the largest
        take[np.argmax(take)] -= 1
    return take


def label_subset_indices(labels: Sequence[int] | torch.Tensor | np.ndarray, fraction: float = 1.0, seed: int = 0,
                         count: int | None = None, sampling: str = "stratified") -> list[int]:
    """The indices of the examples that keep their labels, in their original order: ``fraction`` of
    every class (at least one each), or ``count`` examples spread by ``sampling`` (module docstring)."""
    labels = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)
    if count is None and fraction >= 1.0:
        return list(range(len(labels)))
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(classes))
    generator = torch.Generator().manual_seed(seed)
    take = _per_class_counts(sizes, fraction, count, sampling, generator)
    if count is not None:
        _warn_if_beyond(count, len(labels), sizes.max() if sampling == "per_class" else None)
    keep = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        order = members[torch.randperm(len(members), generator=generator).numpy()]
        keep.append(order[: take[c]])
    return sorted(np.concatenate(keep).tolist())


def random_subset_indices(size: int, fraction: float = 1.0, seed: int = 0, minimum: int = 1,
                          count: int | None = None) -> list[int]:
    """``fraction`` of ``size`` examples, or ``count`` of them (at least ``minimum``), drawn with
    ``seed``, in their original order: for labels that have no classes (regression targets, tag
    sequences)."""
    if count is None and fraction >= 1.0:
        return list(range(size))
    if count is not None:
        _warn_if_beyond(count, size)
    wanted = count if count is not None else round(fraction * size)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[: min(size, max(minimum, wanted))].tolist())


def column_array(dataset, name: str) -> np.ndarray:
    """A ``datasets.Dataset`` column as one numpy array, read column-wise through Arrow (a row-by-row
    read of a formatted dataset costs seconds per 10k rows)."""
    return dataset.with_format("arrow")[name].to_numpy()


def label_subset(dataset, fraction: float = 1.0, seed: int = 0, stratify_by: str | None = None, minimum: int = 1,
                 count: int | None = None, sampling: str = "stratified"):
    """The rows of a ``datasets.Dataset`` that keep their labels: by the class column ``stratify_by``
    (see ``label_subset_indices``), or at random."""
    if count is None and fraction >= 1.0:
        return dataset
    if stratify_by is not None:
        return dataset.select(label_subset_indices(column_array(dataset, stratify_by), fraction, seed, count, sampling))
    return dataset.select(random_subset_indices(len(dataset), fraction, seed, minimum, count))


class LabelAmount:
    """A data module's ``label_fraction`` / ``label_count`` / ``label_sampling``, checked once, and the
    subset they select."""

    def __init__(self, fraction: float = 1.0, count: int | None = None, sampling: str = "stratified") -> None:
        check_label_amount(fraction, count, sampling)
        self.fraction, self.count, self.sampling = fraction, count, sampling

    @property
    def everything(self) -> bool:
        return self.count is None and self.fraction >= 1.0

    def indices(self, labels, seed: int) -> list[int]:
        return label_subset_indices(labels, self.fraction, seed, self.count, self.sampling)

    def subset(self, dataset, seed: int, stratify_by: str | None = None, minimum: int = 1):
        return label_subset(dataset, self.fraction, seed, stratify_by, minimum, self.count, self.sampling)
