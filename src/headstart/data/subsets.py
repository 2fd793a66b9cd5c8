"""The few-label setting: which training examples keep their labels when only a fraction does."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def label_subset_indices(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int) -> list[int]:
    """``fraction`` of the examples of every class (at least one each), drawn with ``seed``, in their
    original order. Stratified, so that 1% of the labels still covers every class and the class
    balance of the subset is the training split's; a different seed draws a different subset."""
    labels = torch.as_tensor(labels)
    if fraction >= 1.0:
        return list(range(len(labels)))
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        keep.append(order[: max(1, round(fraction * len(members)))])
    return sorted(torch.cat(keep).tolist())


def random_subset_indices(size: int, fraction: float, seed: int, minimum: int = 1) -> list[int]:
    """``fraction`` of ``size`` examples (at least ``minimum``) drawn with ``seed``, in their original
    order: for labels that have no classes (regression targets, tag sequences)."""
    if fraction >= 1.0:
        return list(range(size))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[: min(size, max(minimum, round(fraction * size)))].tolist())


def label_subset(dataset, fraction: float, seed: int, stratify_by: str | None = None, minimum: int = 1):
    """The rows of a ``datasets.Dataset`` that keep their labels: stratified by the class column
    ``stratify_by``, or at random."""
    if fraction >= 1.0:
        return dataset
    if stratify_by is not None:
        return dataset.select(label_subset_indices(dataset[stratify_by], fraction, seed))
    return dataset.select(random_subset_indices(len(dataset), fraction, seed, minimum))
