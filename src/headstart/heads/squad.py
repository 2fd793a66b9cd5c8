"""SQuAD's exact match and token F1 of predicted answer texts against their gold answers.

Both compare answers after SQuAD's normalisation (lowercase, no punctuation, no articles a/an/the,
whitespace collapsed) and take the best score over an example's gold answers, as the official
evaluation script does. Written here, not imported, so the per-example scores add up in torchmetrics
states that DDP sums across processes. One departure from the v1.1 script: when either side
normalises to nothing (a gold answer "The"), F1 is whether both do, as in the v2.0 script, instead of 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch
from torchmetrics import Metric

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation, then articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised words the two answers share (a bag of words, counted with repeats)."""
    predicted, actual = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not actual:
        return float(predicted == actual)
    common = sum((Counter(predicted) & Counter(actual)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(actual)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over the gold answers."""
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


class SquadScores(Metric):
    """Mean exact match and token F1 (fractions in [0, 1]) over examples.

    ``update(preds, target)`` takes the predicted answer texts of a batch's examples and, for each, the
    list of its gold answers. ``compute`` returns ``{"exact_match", "f1"}``, which a
    ``MetricCollection`` logs as ``<prefix>exact_match`` / ``<prefix>f1``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("exact_match", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("f1", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[Sequence[str]]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predictions but {len(target)} lists of gold answers")
        em = f1 = 0.0
        for prediction, golds in zip(preds, target, strict=True):
            if isinstance(golds, str):
                golds = [golds]
            if not golds:
                raise ValueError("every example needs at least one gold answer")
            example_em, example_f1 = squad_scores(prediction, golds)
            em += example_em
            f1 += example_f1
        self.exact_match += em
        self.f1 += f1
        self.total += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        if self.total == 0:
            return {"exact_match": torch.zeros_like(self.f1), "f1": torch.zeros_like(self.f1)}
        return {"exact_match": self.exact_match / self.total, "f1": self.f1 / self.total}
