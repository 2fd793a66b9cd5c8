"""The gain of pretraining with its uncertainty. "+7.6 points on 3 of 3 seeds" on 150 test examples
and on 5,000 are not the same claim: the gain moves with the seeds (label subset, initialisation) and
with which examples happen to be in the test. A paired bootstrap resamples both: each resample
draws the seeds with replacement (a seed's fine-tuned and scratch runs together, as they share the
labelled subset) and, once for both models, the test examples with replacement, and recomputes the
gain; the 2.5th and 97.5th percentiles of the resampled gains are its 95% interval.

Metrics come from the test pass's per-example predictions (``test_outputs.npz`` of each run, kept by
heads whose test metrics are per-example: accuracy, macro-F1, MSE, MAE). Where those are missing the
interval comes from the seeds alone: a t-interval of the per-seed paired differences."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP = "paired bootstrap over seeds and test examples"
SEEDS_ONLY = "t-interval over seeds"
METHOD_NOTE = {
    BOOTSTRAP: f"95% interval of the gain: a paired bootstrap ({RESAMPLES:,} resamples; each redraws the seeds, a "
               "seed's two models together, and the test examples, the same for both models) and its 2.5th and 97.5th "
               "percentiles.",
    SEEDS_ONLY: "95% interval of the gain: a t-interval of the per-seed differences (the runs kept no per-example "
                "test predictions, so the test examples' own variation is not in it).",
}

# A metric from predictions and targets (and, for macro-F1, the number of classes).
Score = Callable[..., float]


def _accuracy(predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> float:
    return float((predictions == targets).mean())


def _macro_f1(predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> float:
    """Macro-F1 as torchmetrics computes it: classes in neither predictions nor targets left out."""
    k = int(num_classes or max(predictions.max(), targets.max()) + 1)
    predictions, targets = predictions.astype(np.int64), targets.astype(np.int64)
    tp = np.bincount(targets[predictions == targets], minlength=k).astype(float)
    predicted, actual = np.bincount(predictions, minlength=k), np.bincount(targets, minlength=k)
    fp, fn = predicted - tp, actual - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def _mse(predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> float:
    return float(((predictions - targets) ** 2).mean())


def _mae(predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> float:
    return float(np.abs(predictions - targets).mean())


SCORES = {"acc": _accuracy, "f1": _macro_f1, "mse": _mse, "mae": _mae}


def score_of(metric: str) -> Score | None:
    """The per-example form of ``metric`` (``test/acc`` -> accuracy), or None where there is none."""
    parts = metric.split("/")
    return SCORES.get(parts[-1]) if len(parts) == 2 and parts[0] == "test" else None


def paired_bootstrap(finetune: Sequence[np.ndarray], scratch: Sequence[np.ndarray], targets: np.ndarray,
                     score: Score, *, num_classes: int | None = None, resamples: int = RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """The ``confidence`` interval of mean(score(finetune)) − mean(score(scratch)): ``finetune[i]`` and
    ``scratch[i]`` are one seed's predictions of the same ``targets``. Each resample draws the seeds
    and the examples with replacement (the same draw for both models)."""
    if len(finetune) != len(scratch) or not len(finetune):
        raise ValueError("paired_bootstrap needs one scratch run per fine-tuned run (the same seeds)")
    rng = np.random.default_rng(seed)
    k, n = len(finetune), len(targets)
    gains = np.empty(resamples)
    for b in range(resamples):
        seeds, rows = rng.integers(0, k, k), rng.integers(0, n, n)
        target = targets[rows]
        by_seed = {s: score(finetune[s][rows], target, num_classes) - score(scratch[s][rows], target, num_classes)
                   for s in set(seeds.tolist())}
        gains[b] = statistics.fmean(by_seed[s] for s in seeds.tolist())
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return float(low), float(high)


def seeds_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The t-interval of the mean of per-seed paired differences (None for fewer than two seeds)."""
    from scipy import stats

    if len(differences) < 2:
        return None
    mean, sem = statistics.fmean(differences), statistics.stdev(differences) / math.sqrt(len(differences))
    half = float(stats.t.ppf((1 + confidence) / 2, len(differences) - 1)) * sem
    return mean - half, mean + half


def _load(path: str | None) -> dict[str, Any] | None:
    """A run's per-example test outputs (its ``test_outputs.npz``), or None."""
    if not path or not Path(path).is_file():
        return None
    with np.load(path) as data:
        return {"predictions": data["predictions"], "targets": data["targets"],
                "num_classes": int(data["num_classes"]) if "num_classes" in data else None}


def gain_interval(finetune_runs: list[dict[str, Any]], scratch_runs: list[dict[str, Any]],
                  metric: str) -> dict[str, Any] | None:
    """The gain's 95% interval for one amount of labels: runs of both models paired by seed (each run a
    label-efficiency row with ``seed``, ``value`` and ``test_outputs``, the path of its per-example test
    outputs). Returns ``low``, ``high`` and ``method``; None for fewer than two pairs without per-example
    outputs."""
    by_seed = {r["seed"]: r for r in scratch_runs}
    pairs = [(r, by_seed[r["seed"]]) for r in sorted(finetune_runs, key=lambda r: r["seed"]) if r["seed"] in by_seed]
    if not pairs:
        return None
    score = score_of(metric)
    loaded = [(_load(f.get("test_outputs")), _load(s.get("test_outputs"))) for f, s in pairs] if score else []
    usable = loaded and all(f is not None and s is not None for f, s in loaded)
    if usable:
        targets = loaded[0][0]["targets"]
        usable = all(np.array_equal(o["targets"], targets) for pair in loaded for o in pair)
    if usable:  # every run scored the same test examples, in the same order
        low, high = paired_bootstrap([f["predictions"] for f, _ in loaded], [s["predictions"] for _, s in loaded],
                                     targets, score, num_classes=loaded[0][0]["num_classes"])
        return {"low": low, "high": high, "method": BOOTSTRAP, "confidence": CONFIDENCE, "resamples": RESAMPLES}
    interval = seeds_interval([f["value"] - s["value"] for f, s in pairs])
    if interval is None:
        return None
    return {"low": interval[0], "high": interval[1], "method": SEEDS_ONLY, "confidence": CONFIDENCE}
