"""Entity-level (span) precision, recall and F1 of IOB2/IOBES tag sequences, as seqeval computes them.

Token accuracy rewards the many ``O`` tags; NER is judged on whole entities instead: a predicted entity
counts only if its type, first and last position all match a gold entity. The chunking rules are
seqeval's default (conlleval) mode, so an ``I-`` tag with no preceding ``B-`` of its type starts an
entity, and a change of type ends one. Written here, not imported, to keep seqeval out of the
dependencies and to make the counts torchmetrics states that add up across DDP processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def _split(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ("B", "PER"); ``O`` -> ("O", "_"). The prefix is the first character and the type
    what follows its dash, as seqeval reads a tag."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether the entity open at the previous position ends before this one."""
    return (prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether an entity starts at this position."""
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, first, last)`` positions (inclusive)."""
    spans: set[tuple[str, int, int]] = set()
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):  # the trailing O closes an entity that runs to the end
        tag, type_ = _split(chunk)
        if _ends(prev_tag, tag, prev_type, type_):
            spans.add((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


class SpanF1(Metric):
    """Micro-averaged entity precision / recall / F1 over label-id sequences.

    ``update(preds, target)`` takes (batch, length) label ids; positions where ``target`` is
    ``ignore_index`` (special tokens, padding, a word's later sub-tokens) are dropped first, so the
    spans are read over the labelled positions alone (the words). ``compute`` returns a dict, which a
    ``MetricCollection`` flattens into ``<prefix>f1`` / ``precision`` / ``recall``. A ratio with a zero
    denominator is 0, as in seqeval.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, label_names: Sequence[str], ignore_index: int = -100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label_names = list(label_names)
        self.ignore_index = ignore_index
        for name in ("correct", "predicted", "actual"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have one shape")
        preds, target = preds.reshape(-1, preds.shape[-1]), target.reshape(-1, target.shape[-1])
        keep = target != self.ignore_index
        correct = predicted = actual = 0
        for pred_row, target_row, keep_row in zip(preds.tolist(), target.tolist(), keep.tolist(), strict=True):
            gold = entity_spans([self.label_names[t] for t, k in zip(target_row, keep_row, strict=True) if k])
            guess = entity_spans([self.label_names[p] for p, k in zip(pred_row, keep_row, strict=True) if k])
            correct += len(gold & guess)
            predicted += len(guess)
            actual += len(gold)
        self.correct += correct
        self.predicted += predicted
        self.actual += actual

    def compute(self) -> dict[str, torch.Tensor]:
        correct = self.correct.double()
        precision = correct / self.predicted if self.predicted > 0 else torch.zeros_like(correct)
        recall = correct / self.actual if self.actual > 0 else torch.zeros_like(correct)
        total = precision + recall
        f1 = 2 * precision * recall / total if total > 0 else torch.zeros_like(correct)
        return {"f1": f1.float(), "precision": precision.float(), "recall": recall.float()}
