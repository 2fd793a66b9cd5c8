"""How many training labels a run keeps: label_fraction, label_count (stratified, balanced, per class),
and the pipeline's label_counts; the subset's cost on a large labelled file is a benchmark row
(bench/data_pipeline.py), not a timed test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_labeled

from headstart.data.subsets import LabelAmount, label_subset_indices
from headstart.data.text_classification import TextClassificationDataModule
from headstart.errors import ConfigError
from headstart.pipeline.runner import label_amounts

LABELS = np.array([0] * 500 + [1] * 300 + [2] * 200)


def per_class(keep: list[int], labels=LABELS) -> list[int]:
    return np.bincount(labels[keep], minlength=labels.max() + 1).tolist()


def test_stratified_count_keeps_the_class_shares_of_the_training_split():
    assert per_class(label_subset_indices(LABELS, count=100, seed=0)) == [50, 30, 20]
    # 7 = 3.5 + 2.1 + 1.4: floors 3, 2, 1, and the one left goes to the largest remainder (the first class).
    assert per_class(label_subset_indices(LABELS, count=7, seed=0)) == [4, 2, 1]
    # Every class keeps one even where its share rounds to nothing; the total is still the count.
    skewed = np.array([0] * 990 + [1] * 10)
    assert per_class(label_subset_indices(skewed, count=10, seed=0), skewed) == [9, 1]


def test_balanced_count_takes_equal_numbers_and_small_classes_give_all_they_have():
    assert per_class(label_subset_indices(LABELS, count=90, seed=0, sampling="balanced")) == [30, 30, 30]
    small = np.array([0] * 500 + [1] * 5)
    assert per_class(label_subset_indices(small, count=20, seed=0, sampling="balanced"), small) == [15, 5]
    # 100 over 3 classes: 33 each and the one left to a class drawn at random.
    counts = per_class(label_subset_indices(LABELS, count=100, seed=3, sampling="balanced"))
    assert sum(counts) == 100 and sorted(counts) == [33, 33, 34]


def test_per_class_count_and_counts_beyond_the_split():
    assert per_class(label_subset_indices(LABELS, count=10, seed=0, sampling="per_class")) == [10, 10, 10]
    assert per_class(label_subset_indices(LABELS, count=250, seed=0, sampling="per_class")) == [250, 250, 200]
    assert label_subset_indices(LABELS, count=5000, seed=0) == list(range(1000))


def test_counts_are_seeded_ordered_and_nested_in_nothing_else():
    keep = label_subset_indices(LABELS, count=60, seed=0)
    assert keep == sorted(keep) == label_subset_indices(LABELS, count=60, seed=0)
    assert keep != label_subset_indices(LABELS, count=60, seed=1)
    # The same subset as the share that asks for the same numbers (stratified draws are one rule).
    assert keep == label_subset_indices(LABELS, fraction=0.06, seed=0)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"count": 0}, "data.label_count=0"),
    ({"count": 2.5}, "data.label_count=2.5"),
    ({"count": 10, "fraction": 0.5}, "both set"),
    ({"sampling": "even"}, "data.label_sampling='even'"),
    ({"fraction": 0.0}, "data.label_fraction=0.0"),
])
def test_bad_label_amounts_are_refused_with_the_value(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        LabelAmount(kwargs.get("fraction", 1.0), kwargs.get("count"), kwargs.get("sampling", "stratified"))


def test_fewer_labels_than_classes_is_refused_unless_per_class():
    with pytest.raises(ConfigError, match="fewer than the 3 classes"):
        label_subset_indices(LABELS, count=2, seed=0)
    assert per_class(label_subset_indices(LABELS, count=1, seed=0, sampling="per_class")) == [1, 1, 1]


def test_data_module_keeps_label_count_rows_of_each_class(tmp_path):
    train = write_labeled(tmp_path / "train.jsonl", 240, seed=2)
    val = write_labeled(tmp_path / "val.jsonl", 30, seed=3)
    common = dict(train_files=[str(train)], val_files=[str(val)], vocab_size=200, cache_dir=str(tmp_path / "cache"),
                  max_length=16)
    per_class_module = TextClassificationDataModule(label_count=4, label_sampling="per_class", **common)
    per_class_module.prepare()
    assert np.bincount(per_class_module.datasets["train"].with_format("numpy")["labels"]).tolist() == [4, 4, 4]
    total = TextClassificationDataModule(label_count=30, **common)
    total.prepare()
    assert len(total.datasets["train"]) == 30 and len(total.datasets["validation"]) == 30
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    shares = np.bincount([sorted({r["label"] for r in rows}).index(r["label"]) for r in rows]) / len(rows)
    kept = np.bincount(total.datasets["train"].with_format("numpy")["labels"]) / 30
    assert np.abs(kept - shares).max() < 1 / 30 + 1e-9  # stratified: each class within one example of its share


def test_pipeline_label_counts_and_fractions_become_runs():
    amounts = label_amounts([0.05], [100, "all", 1000])
    assert [a["name"] for a in amounts] == ["labels0.05", "labels-n100", "labels-all", "labels-n1000"]
    assert [a["overrides"] for a in amounts] == [["data.label_fraction=0.05"], ["data.label_count=100"], [],
                                                 ["data.label_count=1000"]]
    for bad in ([0], ["most"], [1.5], [True]):
        with pytest.raises(ConfigError, match="pipeline.label_counts"):
            label_amounts(None, bad)
