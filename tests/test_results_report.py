"""Results a paper can use: the metric in words, the trivial baseline on the test split (computed by
hand here), which checkpoint each metric comes from, the pipeline's tables with their notes, W&B's
console kept quiet, and ``outputs/latest`` pointing at the newest run (through train.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_train
from torch import nn

from headstart.heads.classification import Classifier
from headstart.heads.regression import Regressor
from headstart.pipeline import label_efficiency
from headstart.pipeline import report as results_report
from headstart.pipeline.rundir import point_latest
from headstart.pipeline.runner import print_comparison


@pytest.mark.parametrize(("metric", "task", "words"), [
    ("test/acc", None, "test accuracy"), ("test/f1", "SequenceClassifier", "test macro-F1"),
    ("test/f1", "TokenClassifier", "test entity-level F1"), ("test/f1", "QuestionAnswering", "test token F1"),
    ("val/mse", None, "validation MSE"), ("test/exact_match", None, "test exact match"),
    ("test/part/acc", None, "test accuracy (part)"), ("val/knn_acc", None, "validation kNN accuracy"),
])
def test_metric_words(metric, task, words):
    assert results_report.metric_words(metric, task) == words


class _FakeClassifier(Classifier):
    """A Classifier for its type and head width only (no backbone)."""

    def __init__(self, num_labels: int, label_names: list[str]) -> None:
        nn.Module.__init__(self)
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(2, num_labels))
        self.label_names = label_names


class _FakeRegressor(Regressor):
    def __init__(self) -> None:
        nn.Module.__init__(self)


def _data(train, test, text: bool = False):
    """A datamodule-like object: image-style splits (a ``labels`` tensor) or HF datasets (a column)."""
    if text:
        from datasets import Dataset

        split = lambda labels: Dataset.from_dict({"input_ids": [[1]] * len(labels), "labels": labels})  # noqa: E731
    else:
        split = lambda labels: SimpleNamespace(labels=torch.tensor(labels))  # noqa: E731
    return SimpleNamespace(datasets={"train": split(train), "test": split(test)})


@pytest.mark.parametrize("text", [False, True])
def test_majority_class_baseline_scores_what_predicting_the_training_majority_scores(text):
    # Training majority: class 1 (2 of 4). Test: 2 of 5 are class 1 -> accuracy 0.4; macro-F1: class 1
    # has precision 2/5 and recall 1 (F1 4/7), classes 0 and 2 are never predicted (F1 0): (4/7)/3.
    module = _FakeClassifier(3, ["a", "b", "c"])
    baseline = results_report.trivial_baseline(module, _data([0, 1, 1, 2], [1, 1, 0, 2, 2], text))
    assert baseline["kind"] == "majority class" and baseline["class"] == "b" and baseline["train_share"] == 0.5
    assert baseline["metrics"]["test/acc"] == pytest.approx(0.4)
    assert baseline["metrics"]["test/f1"] == pytest.approx(4 / 7 / 3)
    # Equal counts: the first class.
    tie = results_report.trivial_baseline(module, _data([2, 2, 0, 0], [0, 1, 2, 2], text))
    assert tie["class"] == "a" and tie["metrics"]["test/acc"] == pytest.approx(0.25)


def test_regression_baseline_predicts_the_training_mean():
    baseline = results_report.trivial_baseline(_FakeRegressor(), _data([1.0, 2.0, 3.0], [2.0, 4.0], text=True))
    assert baseline["kind"] == "training mean" and baseline["value"] == pytest.approx(2.0)
    assert baseline["metrics"] == {"test/mse": pytest.approx(2.0), "test/mae": pytest.approx(1.0)}


def test_majority_tag_baseline_scores_tagging_every_word_with_the_training_majority():
    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.tokenizer import train_tokenizer
    from headstart.heads.token_classification import TokenClassifier

    spec = TextBackboneSpec(arch={"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                                  "num_attention_heads": 1, "intermediate_size": 8})
    spec.bind_tokenizer(train_tokenizer(iter([["ada met bob"]]), "wordpiece", 40, True, 16))
    tagger = TokenClassifier(spec, None, 3, label_names=["O", "B-PER", "I-PER"])
    # Training tags: O three times, B-PER and I-PER once each -> O. Test: five labelled words, three of
    # them O -> token accuracy 3/5; its one entity (B-PER I-PER) is never predicted -> entity F1 0.
    train = [[-100, 0, 0, 1, -100], [-100, 0, 2, -100]]
    test = [[-100, 1, 2, 0, -100], [-100, 0, 0]]
    baseline = results_report.trivial_baseline(tagger, _data(train, test, text=True))
    assert (baseline["kind"], baseline["class"], baseline["train_share"]) == ("majority tag", "O", 0.6)
    assert baseline["metrics"]["test/acc"] == pytest.approx(0.6)
    assert (baseline["metrics"]["test/f1"], baseline["metrics"]["test/recall"]) == (0.0, 0.0)
    assert tagger.test_metrics["acc"].update_count == 0  # the module's own metrics are left as they were


def test_no_baseline_without_a_test_split_or_for_other_tasks():
    data = _data([0, 1], [0, 1])
    del data.datasets["test"]
    assert results_report.trivial_baseline(_FakeClassifier(2, ["a", "b"]), data) is None
    assert results_report.trivial_baseline(nn.Linear(1, 1), _data([0, 1], [0, 1])) is None


def test_checkpoint_provenance_names_the_tested_checkpoint_and_its_validation_metrics(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    best, last = tmp_path / "epoch002-step30.ckpt", tmp_path / "last.ckpt"
    best.write_bytes(b"")
    last.write_bytes(b"")
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    callback.best_model_path, callback.best_model_score, callback.last_model_path = str(best), torch.tensor(0.8), str(last)
    trainer = SimpleNamespace(callbacks=[callback])
    metrics = {"val/acc": 0.8, "val/loss": 0.5, "test/acc": 0.75, "train/loss": 0.1}
    record = results_report.checkpoint_provenance(trainer, metrics, {"test": "best", "val": "best", "train": "last"})
    assert record == {"test": "best", "val": "best", "train": "last", "best": str(best), "last": str(last),
                      "monitor": "val/acc", "best_score": pytest.approx(0.8), "tested": str(best),
                      "tested_val_metrics": {"val/acc": 0.8, "val/loss": 0.5}}
    # Testing the best checkpoint restores the callback's state of that time, maybe before last.ckpt was
    # written: last.ckpt is found by its name.
    restored = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    restored.best_model_path = str(best)
    assert results_report.checkpoint_provenance(SimpleNamespace(callbacks=[restored]), metrics,
                                                {"test": "best"})["last"] == str(last)
    # Without a best checkpoint the test is of the end of training; nothing tested: no test entry.
    plain = results_report.checkpoint_provenance(SimpleNamespace(callbacks=[]), {"val/acc": 0.7},
                                                 {"test": "last", "val": "last", "train": "last"})
    assert plain["test"] == "last" and plain["best"] is None and plain["tested"] == "the weights at the end of training"
    untested = results_report.checkpoint_provenance(SimpleNamespace(callbacks=[]), {}, {"val": "last", "train": "last"})
    assert untested["test"] is None and untested["val"] is None and "tested" not in untested


def _records() -> dict:
    """Stage records as results.json holds them: pretraining, then fine-tuned and scratch runs."""
    downstream = {"task": "ImageClassifier", "test_examples": 270, "checkpoints": {"test": "best"},
                  "setup": {"data": "digits", "model": "ViT (hidden 64, 2 layers)", "task": "image classification"},
                  "baseline": {"kind": "majority class", "description": "predicting the training split's most "
                               "frequent class for every test example", "metrics": {"test/acc": 0.1}}}
    return {"pretrain": {"task": "SimCLR", "setup": {"task": "SimCLR"}},
            "finetune/labels0.05-seed0": downstream, "scratch/labels0.05-seed0": downstream}


def _runs() -> list[dict]:
    return [{"labels": labels, "train_examples": n, "seed": s, "model": m, "metric": "test/acc", "value": v,
             "test_examples": 270, "baseline": 0.1, "output_dir": "x"}
            for labels, n, m, values in (("all", 1200, "finetune", (0.95, 0.97)), ("all", 1200, "scratch", (0.96, 0.96)),
                                         ("5%", 60, "finetune", (0.7, 0.8)), ("5%", 60, "scratch", (0.3, 0.5)))
            for s, v in enumerate(values)]


def test_pipeline_context_says_what_the_numbers_are():
    context = results_report.pipeline_context(_records(), "test/acc")
    assert context["metric_words"] == "test accuracy" and context["test_examples"] == 270
    assert (context["data"], context["model"], context["objective"]) == ("digits", "ViT (hidden 64, 2 layers)", "SimCLR")
    assert context["baseline"]["kind"] == "majority class" and context["baseline"]["value"] == 0.1
    assert context["checkpoint"] == "best" and context["spread"] == "std" and not context["lower_is_better"]
    assert results_report.pipeline_context(_records(), "test/f1")["baseline"] is None  # none recorded for it


def test_label_efficiency_table_has_seeds_spread_n_test_size_baseline_and_metric_words(tmp_path, capsys):
    context = results_report.pipeline_context(_records(), "test/acc")
    summary = label_efficiency.summarize(_runs())
    assert summary[0]["finetune_values"] == [0.7, 0.8] and summary[0]["finetune_seeds"] == [0, 1]
    assert (summary[0]["finetune_min"], summary[0]["finetune_max"], summary[0]["test_examples"]) == (0.7, 0.8, 270)
    assert summary[0]["baseline"] == pytest.approx(0.1)
    label_efficiency.print_summary(summary, "test/acc", tmp_path, context)
    printed = capsys.readouterr().out
    assert printed == (tmp_path / results_report.TABLE_NAME).read_text()  # written as printed
    assert "What pretraining bought, by number of labels: test accuracy" in printed
    for cell in ("0.7500 ± 0.0707", "0.7000 0.8000", "0.4000 ± 0.1414", "0.3000 0.5000", "+0.3500", "2/2", "1/2"):
        assert cell in printed, cell
    assert "majority class" in printed and "0.1000" in printed  # the column and its value
    assert "Values: test accuracy (test/acc) on the 270 test examples, from each run's best checkpoint on validation" \
        in printed
    assert "the sample standard deviation (n−1) over n = 2 seeds (0, 1)" in printed
    assert "majority class: the score of predicting the training split's most frequent class" in printed
    assert "Setup: data digits; model ViT (hidden 64, 2 layers); pretrained with SimCLR." in printed
    assert printed.rstrip().splitlines()[-1].startswith(f"Label-efficiency outputs: {tmp_path.resolve()}")


def test_lower_is_better_metrics_count_seeds_won_by_the_lower_value():
    runs = [{**r, "metric": "test/mse"} for r in _runs()]
    [few, _] = label_efficiency.summarize(runs, lower_is_better=True)
    assert few["seeds_won"] == 0 and few["gain"] == pytest.approx(0.35)  # higher MSE on both seeds: lost


def test_comparison_table_of_one_run_each(tmp_path, capsys):
    records = _records()
    records = {"pretrain": records["pretrain"], "finetune": records["finetune/labels0.05-seed0"],
               "scratch": records["scratch/labels0.05-seed0"]}
    context = results_report.pipeline_context(records, "test/acc")
    print_comparison({"finetune": {"value": 0.9, "output_dir": "/runs/ft"}, "scratch": {"value": 0.7, "output_dir": "/runs/s"}},
                     "test/acc", tmp_path, context)
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "results_table.txt").read_text()
    assert "What pretraining bought: test accuracy" in printed and "+0.2000" in printed
    assert "majority class" in printed and "0.1000" in printed and "270 test examples" in printed
    assert "One run of each model" in printed
    assert printed.rstrip().splitlines()[-1].startswith(f"Pipeline outputs: {tmp_path.resolve()}")


def test_wandb_console_is_quiet_by_default_and_can_be_full(tmp_path, monkeypatch):
    from headstart.errors import ConfigError
    from headstart.tracking import wandb_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger(save_dir=str(tmp_path))._wandb_init["settings"].quiet is True
    assert wandb_logger(save_dir=str(tmp_path), console_output="silent")._wandb_init["settings"].silent is True
    assert "settings" not in wandb_logger(save_dir=str(tmp_path), console_output="full")._wandb_init
    with pytest.raises(ConfigError, match="console_output"):
        wandb_logger(save_dir=str(tmp_path), console_output="loud")


def test_latest_is_a_relative_link_replaced_atomically(tmp_path):
    outputs = tmp_path / "outputs"
    first, second = outputs / "2026-01-01" / "10-00-00-000001", outputs / "multirun" / "2026-01-01" / "10-00-01-000002"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "results.json").write_text("{}")
    link = point_latest(outputs, first)
    assert link == outputs / "latest" and os.readlink(link) == "2026-01-01/10-00-00-000001"
    assert (outputs / "latest" / "results.json").read_text() == "{}"
    assert (outputs / "latest.txt").read_text().strip() == str(first.resolve())
    point_latest(outputs, second)
    assert os.readlink(outputs / "latest") == "multirun/2026-01-01/10-00-01-000002"
    assert (first / "results.json").read_text() == "{}"  # the earlier run is untouched
    assert sorted(p.name for p in outputs.iterdir()) == ["2026-01-01", "latest", "latest.txt", "multirun"]  # no temp files


def test_a_setting_given_through_the_link_is_recorded_as_its_target(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from headstart.pipeline.rundir import pin_linked_paths

    outputs = tmp_path / "outputs"
    run = outputs / "2026-01-01" / "10-00-00"
    run.mkdir(parents=True)
    point_latest(outputs, run)
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"model": {"init_from": "outputs/latest/export"}, "resume": "auto", "ckpt_path": "last"})
    (run / "export").mkdir()
    assert pin_linked_paths(cfg) == {"model.init_from": str(run.resolve() / "export")}
    assert cfg.model.init_from == str(run.resolve() / "export") and (cfg.resume, cfg.ckpt_path) == ("auto", "last")
    plain = OmegaConf.create({"model": {"init_from": "outputs/2026-01-01/10-00-00"}, "resume": "outputs/latest"})
    assert pin_linked_paths(plain) == {"resume": str(run.resolve())}
    assert plain.model.init_from == "outputs/2026-01-01/10-00-00"  # no link in it: as typed


def test_latest_leaves_what_is_not_its_link_alone(tmp_path):
    outputs, run = tmp_path / "outputs", tmp_path / "outputs" / "day" / "run"
    run.mkdir(parents=True)
    assert point_latest(outputs, tmp_path / "elsewhere") is None  # a run outside the log directory
    assert not (outputs / "latest").exists() and not (outputs / "latest.txt").exists()
    (outputs / "latest").mkdir()  # someone's own directory of that name
    (outputs / "latest" / "notes.txt").write_text("mine")
    assert point_latest(outputs, run) is None
    assert (outputs / "latest" / "notes.txt").read_text() == "mine"
    assert (outputs / "latest.txt").read_text().strip() == str(run.resolve())  # still named


DIGITS = ["experiment=vision_classification", "model.arch.hidden_sizes=[8,16]", "trainer.max_epochs=1", "logger=csv",
          "export_backbone=false"]


@pytest.mark.slow
def test_outputs_latest_points_at_the_run_just_made(tmp_path):
    """Through train.py: after a run, outputs/latest is that run (its results.json with the baseline,
    the test split's size, the checkpoints and the setup); after a refused run, still that run; after
    a multirun, its sweep directory. No earlier run's files change."""
    proc = run_train(DIGITS, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = [p.parent for p in tmp_path.glob("outputs/2*/*/results.json")]
    latest = tmp_path / "outputs" / "latest"
    assert latest.is_symlink() and not os.path.isabs(os.readlink(latest)) and latest.resolve() == run_dir.resolve()
    results = json.loads((latest / "results.json").read_text())
    assert results["test_examples"] == 270 and results["setup"] == {
        "data": "digits", "model": "CNN (widths 8-16)", "task": "image classification"}
    # The digits' test split has 27 of each of the 10 classes (up to one), so the majority class scores ~0.1.
    assert results["baseline"]["kind"] == "majority class" and 0.09 < results["baseline"]["metrics"]["test/acc"] < 0.12
    checkpoints = results["checkpoints"]
    assert checkpoints["test"] == checkpoints["val"] == "best" and checkpoints["tested"] == checkpoints["best"]
    assert Path(checkpoints["best"]).is_file() and Path(checkpoints["last"]).name == "last.ckpt"
    assert checkpoints["tested_val_metrics"] == {k: v for k, v in results["metrics"].items() if k.startswith("val/")}

    # A run refused for a bad setting made nothing: outputs/latest stays on the run before.
    proc = run_train([*DIGITS, "data.batch_size=0"], tmp_path)
    assert proc.returncode == 2 and "data.batch_size" in proc.stderr, proc.stderr[-2000:]
    assert latest.resolve() == run_dir.resolve()

    proc = run_train(["-m", *DIGITS, "seed=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep] = tmp_path.glob("outputs/multirun/*/*")
    assert latest.resolve() == sweep.resolve() and (latest / "0" / "results.json").is_file()
    assert (run_dir / "results.json").read_text() == json.dumps(results, indent=2)  # the first run untouched
    assert (tmp_path / "outputs" / "latest.txt").read_text().strip() == str(sweep.resolve())
