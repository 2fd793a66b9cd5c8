"""Issue 22, section 2: the smaller defects, each driven through the function concerned and, where the
issue names train.py, through train.py: a seed out of range, non-finite numbers, a half-written export
left by a killed run, a single-class training file in a pipeline, a label_count beyond the data, a
directory given as a data file, and task.knn_k=0."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO,
    assert_user_error,
    only_run_dir,
    run_train,
    two_at_a_time,
    write_corpus,
    write_labeled,
)
from hydra import compose, initialize_config_dir

from headstart.config import register_configs
from headstart.config.checks import Range, check_values, problems
from headstart.data.files import check_files
from headstart.errors import ConfigError, DataError
from headstart.pipeline import label_efficiency
from headstart.pipeline.rundir import claim_run_dir, remove_stale_exports
from headstart.pipeline.runner import check_data, check_seeds

register_configs()

DIGITS = ["experiment=vision_classification", "model.arch.hidden_sizes=[8,16]", "trainer.max_epochs=1",
          "logger=csv", "test_after_fit=false"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _refused(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        check_values(composed(*overrides))
    return str(err.value)


# -- 1. seed -------------------------------------------------------------------------------------------
def test_a_seed_outside_lightnings_range_is_refused_with_the_range():
    for bad in ("-1", str(2**32)):
        message = _refused(f"seed={bad}")
        assert f"seed={bad}" in message and "[0, 4294967295]" in message, message
    assert problems(composed("seed=0")) == problems(composed(f"seed={2**32 - 1}")) == []
    # Only the seed itself is named, not the settings that copy it (data.seed, task.sample_seed).
    assert [p.split("=")[0] for p in problems(composed("experiment=text_clm", "seed=-1"))] == ["seed"]
    # A pipeline's later seeds are refused before anything trains too.
    with pytest.raises(ConfigError, match=r"pipeline.seeds=\[0, -3\] has \[-3\]"):
        check_seeds([0, -3])
    check_seeds([0, 2**32 - 1])
    check_seeds(None)


# -- 2. non-finite numbers -----------------------------------------------------------------------------
def test_nan_and_infinity_are_refused_by_every_range_unless_a_rule_names_them():
    for allowed in (Range(0, open_low=True), Range(0), Range(0, 1), Range(1, integer=True)):
        assert not any(allowed.allows(v) for v in (math.inf, -math.inf, math.nan)), allowed
    assert Range(0, also=(math.inf,)).allows(math.inf)  # a rule may give infinity a meaning


def test_non_finite_values_are_refused_up_front_naming_each():
    message = _refused("experiment=text_mlm", "task.optimizer.lr=inf", "task.optimizer.weight_decay=nan",
                       "task.optimizer.eps=-inf")
    assert "task.optimizer.lr=inf is not a finite number: it must be a number > 0" in message, message
    assert "task.optimizer.weight_decay=nan is not a finite number" in message, message
    # A key without a range rule is still refused when it is not a finite number.
    assert "task.optimizer.eps=-inf is not a finite number" in message, message
    assert "task.temperature=inf is not a finite number" in _refused("experiment=vision_simclr", "task.temperature=inf")
    assert problems(composed("experiment=text_mlm", "task.optimizer.lr=1e-3")) == []


# -- 7. task.knn_k=0 -------------------------------------------------------------------------------------
def test_knn_k_zero_is_allowed_and_negative_refused():
    assert problems(composed("experiment=vision_simclr", "task.knn_k=0")) == []
    assert "task.knn_k=-1 is out of range: it must be an integer >= 0" in _refused("experiment=vision_simclr",
                                                                                   "task.knn_k=-1")


# -- the train.py runs of items 1, 2, 6 and 7 ---------------------------------------------------------
def _seed(tmp: Path):
    return [*DIGITS, "seed=-1"], ["seed=-1 is out of range", "[0, 4294967295]"]


def _infinite_lr(tmp: Path):
    return [*DIGITS, "task.optimizer.lr=inf"], ["task.optimizer.lr=inf is not a finite number", "a number > 0"]


def _directory_as_data_file(tmp: Path):
    folder = tmp / "labelled"
    folder.mkdir()
    write_labeled(folder / "part1.jsonl", 30, seed=0)
    write_labeled(folder / "part2.jsonl", 30, seed=1)
    return (["experiment=text_classification", "data=text_classification_files", f"data.train_files=[{folder}]",
             "logger=csv"],
            [f"data.train_files: '{folder}' is a directory, not a file",
             f"data.train_files=[{folder / 'part1.jsonl'},{folder / 'part2.jsonl'}]"])


def _knn_off(tmp: Path):
    return ["experiment=vision_simclr", "model.arch.hidden_sizes=[8,16]", "task.knn_k=0", "logger=csv",
            "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"], None


@pytest.fixture(scope="module")
def train_py_runs(tmp_path_factory) -> dict:
    def run(case):
        root = tmp_path_factory.mktemp(case.__name__)
        args, fragments = case(root)
        return run_train(args, root), fragments, root

    return two_at_a_time(run, [_seed, _infinite_lr, _directory_as_data_file, _knn_off])


@pytest.mark.parametrize("case", ["_seed", "_infinite_lr", "_directory_as_data_file"])
def test_train_py_refuses_the_value_before_building_anything(case, train_py_runs):
    proc, fragments, root = train_py_runs[case]
    assert_user_error(proc, "headstart: error:", *fragments)
    assert proc.stderr.count("headstart: error:") == 1, proc.stderr[-2000:]
    assert not list(root.glob("outputs/*/*/checkpoints")), "trained before refusing"


def test_train_py_with_knn_k_zero_trains_without_the_knn_monitor(train_py_runs):
    proc, _, root = train_py_runs["_knn_off"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((only_run_dir(root) / "results.json").read_text())["metrics"]
    assert "test/probe_acc" in metrics and not any("knn" in key for key in metrics), metrics


# -- 6. a directory given as a data file ------------------------------------------------------------------
def test_a_directory_given_as_a_data_file_is_named_as_one(tmp_path):
    folder = tmp_path / "dev"
    folder.mkdir()
    with pytest.raises(DataError) as err:
        check_files("validation", [str(folder)])
    message = str(err.value)
    assert f"data.val_files: '{folder}' is a directory, not a file" in message and "holds no file" in message, message
    assert "does not exist" not in message
    for i in range(5):
        write_labeled(folder / f"part{i}.jsonl", 5, seed=i)
    with pytest.raises(DataError, match=r"data.val_files=\[.*part0.jsonl,.*part1.jsonl,.*part2.jsonl,...\] "
                                        r"\(5 files there\)"):
        check_files("validation", [str(folder)])


# -- 3. a half-written export of a killed run ----------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _half_written_export(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half of the weights")
    return path


def test_claiming_a_run_dir_removes_the_exports_of_dead_processes_only(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _half_written_export(tmp_path / f"export.tmp{_dead_pid()}")
        task = _half_written_export(tmp_path / "export" / f"sentiment.tmp{_dead_pid()}")  # a multi-task export's
        mine = _half_written_export(tmp_path / f"export.tmp{os.getpid()}")  # a restarted container's pid
        running = _half_written_export(tmp_path / f"export.tmp{live.pid}")
        other = _half_written_export(tmp_path / "export.tmpdir")  # not a pid: not ours to remove
        claim_run_dir(tmp_path, resuming=True)
        assert not dead.exists() and not task.exists() and not mine.exists()
        assert running.exists() and other.exists()
        assert remove_stale_exports(tmp_path) == []
    finally:
        live.kill()
        live.wait()


def test_resuming_a_run_killed_while_exporting_removes_its_half_written_export(tmp_path):
    run_dir = tmp_path / "run"
    stale = _half_written_export(run_dir / f"export.tmp{_dead_pid()}")
    proc = run_train([*DIGITS, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists()
    assert f"Removed {stale}" in proc.stdout + proc.stderr
    assert json.loads((run_dir / "results.json").read_text())["completed"]
    assert (run_dir / "export" / "config.json").is_file()
    assert not list(run_dir.glob("export.tmp*"))


# -- 4. a single-class training file in a pipeline ---------------------------------------------------------------
def _one_label(path: Path, n_rows: int, seed: int) -> Path:
    write_labeled(path, n_rows, seed)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, "label": "animals"}) + "\n" for row in rows))
    return path


def test_a_single_class_training_file_stops_a_pipeline_before_pretraining(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    corpus = write_corpus(data / "corpus.txt", 200, seed=0)
    files = {split: _one_label(data / f"{split}.jsonl", rows, seed) for split, rows, seed in
             (("train", 60, 1), ("dev", 20, 2), ("test", 20, 3))}
    proc = run_train(["experiment=label_efficiency_text_files", f"pipeline.files.corpus=[{corpus}]",
                      *(f"pipeline.files.{split}=[{path}]" for split, path in files.items()),
                      "model.arch.hidden_size=16", "logger=csv", "pipeline.seeds=[0]", "pipeline.label_counts=[all]",
                      # Quick, should the pretraining stage run (which it must not).
                      'pipeline.pretrain.overrides=["trainer.max_epochs=1"]'], tmp_path / "run")
    assert_user_error(proc, "headstart: error:", "single label ['animals']", "two or more")
    assert not list((tmp_path / "run").glob("outputs/*/*/pretrain")), "the pretraining stage ran before the refusal"
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def _image_folder(root: Path, classes: list[str]) -> Path:
    from PIL import Image

    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i + j, dtype=np.uint8)).save(root / name / f"{j}.png")
    return root


def test_a_pipeline_checks_an_image_folder_with_a_single_class_before_it_trains(tmp_path):
    single = _image_folder(tmp_path / "single", ["cat"])
    with pytest.raises(DataError, match=r"has a single class \['cat'\]"):
        check_data(composed("experiment=vision_classification", "data=image_folder", f"data.train_dir={single}"))
    check_data(composed("experiment=vision_classification", "data=image_folder",
                        f"data.train_dir={_image_folder(tmp_path / 'two', ['cat', 'dog'])}"))


# -- 5. a label_count larger than the data -------------------------------------------------------------------
LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20)


def test_a_label_count_beyond_the_data_warns_with_the_real_number(caplog):
    from headstart.data.subsets import label_subset_indices, random_subset_indices

    with caplog.at_level(logging.WARNING, logger="headstart.data.subsets"):
        assert label_subset_indices(LABELS, count=100, seed=0) == list(range(100))
        assert label_subset_indices(LABELS, count=50, seed=0, sampling="per_class") == list(range(100))
        assert len(label_subset_indices(LABELS, count=60, seed=0)) == 60
    assert caplog.messages == []  # exactly all, or fewer: nothing to say
    with caplog.at_level(logging.WARNING, logger="headstart.data.subsets"):
        assert label_subset_indices(LABELS, count=1000, seed=0) == list(range(100))
        assert label_subset_indices(LABELS, count=80, seed=0, sampling="per_class") == list(range(100))
        assert random_subset_indices(40, count=70, seed=0) == list(range(40))
    assert caplog.messages == [
        "data.label_count=1000 is more than the 100 examples of the training split: all 100 are used; ask for at most 100",
        "data.label_count=80 (per class, data.label_sampling=per_class) is more than any class of the training split "
        "has (the largest: 50): all 100 training examples are used",
        "data.label_count=70 is more than the 40 examples of the training split: all 40 are used; ask for at most 40"]


def test_a_data_module_asked_for_more_labels_than_it_has_says_so(tmp_path, caplog):
    from headstart.data.text_classification import TextClassificationDataModule

    train = write_labeled(tmp_path / "train.jsonl", 120, seed=2)
    val = write_labeled(tmp_path / "val.jsonl", 30, seed=3)
    module = TextClassificationDataModule(train_files=[str(train)], val_files=[str(val)], vocab_size=200, max_length=16,
                                          cache_dir=str(tmp_path / "cache"), label_count=1000)
    with caplog.at_level(logging.WARNING, logger="headstart.data.subsets"):
        module.prepare()
    assert len(module.datasets["train"]) == 120
    assert "data.label_count=1000 is more than the 120 examples of the training split" in caplog.text


def test_the_label_efficiency_table_shows_the_number_kept_not_the_count_asked(tmp_path):
    runs = [{"labels": labels, "label_fraction": None, "label_count": count, "train_examples": n, "seed": 0,
             "model": model, "metric": "test/acc", "value": value, "test_examples": 50, "baseline": 0.4,
             "output_dir": "x"}
            for labels, count, n in (("30", 30, 30), ("1000", 1000, 120), ("all", None, 120))
            for model, value in (("finetune", 0.8), ("scratch", 0.6))]
    summary = label_efficiency.summarize(runs)
    assert [label_efficiency.amount_label(row) for row in summary] == ["30", "120 (all; 1000 asked)", "120 (all)"]
    # per_class: a count per class, so more examples than the count is what was asked, not a shortfall.
    assert label_efficiency.amount_label({"labels": "10", "label_count": 10, "train_examples": 30}) == "30 (10)"
    label_efficiency.print_summary(summary, "test/acc", tmp_path)
    table = (tmp_path / "results_table.txt").read_text()
    assert "120 (all; 1000 asked)" in table and "120 (1000)" not in table, table
