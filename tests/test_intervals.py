"""The gain's 95% interval (headstart.pipeline.intervals): the per-example metrics equal torchmetrics',
the paired bootstrap covers a known difference and narrows as the test grows, pairing is kept (seed
with seed, example with example), and the label-efficiency summary carries the interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from headstart.pipeline import intervals
from headstart.pipeline.label_efficiency import summarize


def test_per_example_scores_equal_the_heads_torchmetrics_values():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 300)
    predictions = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 4, 300))
    predictions[predictions == 3] = 2  # class 3 never predicted: its F1 is 0, and it still counts
    for classes in (4, 6):  # 6: two classes in neither predictions nor targets, which macro-F1 leaves out
        expected_f1 = MulticlassF1Score(num_classes=classes, average="macro")(torch.tensor(predictions),
                                                                              torch.tensor(targets))
        assert intervals.score_of("test/f1")(predictions, targets, classes) == pytest.approx(float(expected_f1),
                                                                                              abs=1e-6)
    expected_acc = MulticlassAccuracy(num_classes=4, average="micro")(torch.tensor(predictions), torch.tensor(targets))
    assert intervals.score_of("test/acc")(predictions, targets, 4) == pytest.approx(float(expected_acc), abs=1e-6)
    values, truth = rng.normal(size=50), rng.normal(size=50)
    assert intervals.score_of("test/mse")(values, truth) == pytest.approx(float(((values - truth) ** 2).mean()))
    assert intervals.score_of("test/mae")(values, truth) == pytest.approx(float(np.abs(values - truth).mean()))
    assert intervals.score_of("val/acc") is None and intervals.score_of("test/part/acc") is None


def _classifier_runs(n: int, seeds: int, p_finetune: float, p_scratch: float, rng):
    """Binary predictions of ``seeds`` runs per model: each example right with the given probability."""
    targets = rng.integers(0, 2, n)

    def run(p):
        right = rng.random(n) < p
        return np.where(right, targets, 1 - targets)

    return [run(p_finetune) for _ in range(seeds)], [run(p_scratch) for _ in range(seeds)], targets


def test_the_bootstrap_interval_covers_a_known_difference_and_narrows_as_the_test_grows():
    widths = []
    for n in (300, 3000):
        finetune, scratch, targets = _classifier_runs(n, 3, 0.80, 0.70, np.random.default_rng(n))
        low, high = intervals.paired_bootstrap(finetune, scratch, targets, intervals.score_of("test/acc"))
        assert low < 0.10 < high, (n, low, high)
        observed = np.mean([(f == targets).mean() - (s == targets).mean() for f, s in zip(finetune, scratch, strict=True)])
        assert low < observed < high
        widths.append(high - low)
    # Ten times the examples: about sqrt(10) ~ 3.2 times narrower.
    assert 2.0 < widths[0] / widths[1] < 5.0, widths
    # Against the normal approximation over the examples alone (the 3 seeds' runs independent, as built):
    # redrawing the seeds adds their spread, so the interval is wider, but within twice as wide.
    per_run_var = 0.8 * 0.2 + 0.7 * 0.3
    examples_only = 2 * 1.96 * np.sqrt(per_run_var / (3 * 3000))
    assert examples_only < widths[1] < 2 * examples_only, (widths[1], examples_only)


def test_the_bootstrap_resamples_the_same_examples_for_both_models():
    """Two models that differ on 20 of 2000 examples (the fine-tuned one right there): the gain is 0.01
    on any resample of the examples that is the same for both, so the interval is tight. Drawn
    separately for each model it would be about +-0.03 wide."""
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, 2000)
    scratch = np.where(rng.random(2000) < 0.7, targets, 1 - targets)
    wrong = np.flatnonzero(scratch != targets)[:20]
    finetune = scratch.copy()
    finetune[wrong] = targets[wrong]
    low, high = intervals.paired_bootstrap([finetune] * 2, [scratch] * 2, targets, intervals.score_of("test/acc"))
    assert 0.004 < low < 0.01 < high < 0.016, (low, high)


def test_the_bootstrap_resamples_seeds_with_their_pairs():
    """Seed effects shared by both models of a seed cancel in the paired gain: fine-tuned = scratch + 5
    points on every seed, while the seeds themselves differ by 30 points. Resampling a seed's two runs
    together keeps the interval at 5 points; mixing seeds across models would spread it by +-30."""
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 1000)
    finetune, scratch = [], []
    for level in (0.5, 0.65, 0.8):
        base = np.where(rng.random(1000) < level, targets, 1 - targets)
        better = base.copy()
        wrong = np.flatnonzero(base != targets)[:50]
        better[wrong] = targets[wrong]
        scratch.append(base)
        finetune.append(better)
    low, high = intervals.paired_bootstrap(finetune, scratch, targets, intervals.score_of("test/acc"))
    assert 0.035 < low < 0.05 < high < 0.065, (low, high)


def test_the_seeds_only_interval_is_the_t_interval_of_the_paired_differences():
    low, high = intervals.seeds_interval([0.05, 0.07, 0.09])
    half = 4.302653 * 0.02 / np.sqrt(3)  # t(0.975, 2 df) x sample std / sqrt(n)
    assert (low, high) == pytest.approx((0.07 - half, 0.07 + half), abs=1e-5)
    assert intervals.seeds_interval([0.05]) is None


def _run(tmp_path, model, seed, predictions, targets, value, labels="100", save=True):
    path = tmp_path / f"{model}-{labels}-{seed}.npz"
    if save:
        np.savez(path, predictions=predictions, targets=targets, num_classes=np.array(2))
    return {"labels": labels, "label_fraction": None, "label_count": 100, "train_examples": 100, "seed": seed,
            "model": model, "metric": "test/acc", "value": value, "test_examples": len(targets), "baseline": 0.5,
            "output_dir": str(tmp_path), "test_outputs": str(path) if save else None}


def test_the_summary_gives_each_gain_its_interval_from_the_runs_test_outputs(tmp_path):
    finetune, scratch, targets = _classifier_runs(500, 3, 0.8, 0.7, np.random.default_rng(3))
    runs = []
    for seed in range(3):
        runs.append(_run(tmp_path, "finetune", seed, finetune[seed], targets, float((finetune[seed] == targets).mean())))
        runs.append(_run(tmp_path, "scratch", seed, scratch[seed], targets, float((scratch[seed] == targets).mean())))
    [row] = summarize(runs)
    expected = intervals.paired_bootstrap(finetune, scratch, targets, intervals.score_of("test/acc"))
    assert row["gain_interval"] == intervals.BOOTSTRAP
    assert (row["gain_low"], row["gain_high"]) == pytest.approx(expected)
    assert row["gain_low"] < row["gain"] < row["gain_high"]

    # Without per-example outputs: the t-interval of the three paired differences.
    bare = [{**r, "test_outputs": None} for r in runs]
    [row] = summarize(bare)
    differences = [runs[2 * s]["value"] - runs[2 * s + 1]["value"] for s in range(3)]
    assert row["gain_interval"] == intervals.SEEDS_ONLY
    assert (row["gain_low"], row["gain_high"]) == pytest.approx(intervals.seeds_interval(differences))

    # Runs scored on different test examples cannot be paired example by example.
    other = np.random.default_rng(4).integers(0, 2, 500)
    mixed = runs[:-1] + [_run(tmp_path, "scratch", 2, scratch[2], other, runs[-1]["value"], labels="100-other")]
    mixed[-1]["labels"] = "100"
    [row] = summarize(mixed)
    assert row["gain_interval"] == intervals.SEEDS_ONLY
