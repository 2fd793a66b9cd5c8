"""The protocol behind every published number (issue 22, section 3), pinned by fast tests.

A label-efficiency number is the test score of a fine-tuned model next to a scratch model's, at one
amount of labels and seed, each with its settings chosen on validation. What that rests on:

- the test split chooses nothing: settings are chosen by the task's monitor on validation (its max or
  its min, as the monitor says), the checkpoint tested is the best on validation, and the tokenizer,
  label names and statistics come from the training split;
- the two models of a pair share everything but their initial weights: the data (files, labelled
  subset, seed), the step budget and callbacks, the task and its learning-rate grid, the tokenizer of
  the export; the scratch model loads none of the pretrained weights and none of the fine-tuned
  model's transfer settings;
- what differs per seed is the labelled subset (and the initialisation): every seed draws its own,
  for both models the same; validation and test stay the same at every seed and amount; the
  pretraining is one stage, shared by every seed and amount;
- ``label_count=n`` keeps n examples; a tie is not a win; a linear probe trains the head alone with the
  backbone in eval mode; gradual unfreezing unfreezes; ``model.init_scope=embeddings`` loads the
  embeddings alone.

Each test fails for one breakage of bench/mutations.py (the entries after "issue 22"); the expected
values are worked out here, by hand or from the files the test writes.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    TINY_BERT,
    TINY_MODEL,
    make_mlm_export,
    make_sentence,
    text_spec,
    write_corpus,
    write_labeled,
)
from omegaconf import OmegaConf

from headstart.data.subsets import random_subset_indices
from headstart.data.text_classification import TextClassificationDataModule
from headstart.data.text_regression import TextRegressionDataModule
from headstart.heads.sequence_classification import SequenceClassifier
from headstart.pipeline import label_efficiency, runner
from headstart.pipeline.runner import candidate_name, select_on_validation
from headstart.pipeline.stage import StageResult

CONF = REPO / "conf"


def _compose(overrides: list[str], output_dir: Path | None = None, hydra: bool = False):
    """The config train.py composes from ``overrides``; ``hydra``: with Hydra's own node, as the
    pipeline reads it (HydraConfig set, its run directory ``output_dir``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from headstart.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=hydra)
    if hydra:
        OmegaConf.update(cfg, "hydra.runtime.output_dir", str(output_dir), force_add=True)
        HydraConfig.instance().set_config(cfg)
    return cfg


# -- choosing settings on validation ---------------------------------------------------------------------
def _candidates(monitor: str, mode: str, val: dict[float, float], test: dict[float, float]):
    """A stand-in for the pipeline's ``run``: each learning rate's run with the given validation and test
    scores (no training); the runs it was asked for are in ``calls``."""
    calls = []

    def run(name, overrides, last):
        lr = float(next(o for o in last if o.startswith("task.optimizer.lr=")).split("=")[1])
        calls.append((name, list(overrides), list(last)))
        metrics = {monitor: val[lr], monitor.replace("val/", "test/"): test[lr], "train/loss": 1.0}
        record = {"output_dir": f"/runs/{name}", "metrics": metrics, "monitor": {"metric": monitor, "mode": mode}}
        return StageResult.from_record(record, Path(record["output_dir"]))

    return run, calls


GRID = [{"task.optimizer.lr": lr} for lr in (0.001, 0.01, 0.1)]


def test_settings_are_chosen_on_validation_and_the_test_split_never_chooses():
    # Validation prefers 0.01; the test split would prefer 0.001, then 0.1.
    val, test = {0.001: 0.50, 0.01: 0.90, 0.1: 0.70}, {0.001: 0.95, 0.01: 0.60, 0.1: 0.80}
    run, calls = _candidates("val/acc", "max", val, test)
    chosen = select_on_validation(run, "finetune/labels-n6-seed0", ["experiment=x"], ["seed=0"], GRID)
    assert [c[0] for c in calls] == ["finetune/labels-n6-seed0/lr0.001", "finetune/labels-n6-seed0/lr0.01",
                                     "finetune/labels-n6-seed0/lr0.1"]
    assert all(c[2][0] == "seed=0" for c in calls)  # the run's own settings, then the candidate's
    assert chosen["selected"] == {"task.optimizer.lr": 0.01}
    # What is reported is the chosen run's own test score, not the best test score of the candidates.
    assert chosen["metrics"]["test/acc"] == 0.60 and chosen["output_dir"] == "/runs/finetune/labels-n6-seed0/lr0.01"
    assert chosen["validation_by_candidate"] == {"lr0.001": 0.50, "lr0.01": 0.90, "lr0.1": 0.70}
    # Whatever the test scores, the same choice.
    for shuffled in ({0.001: 0.1, 0.01: 0.2, 0.1: 0.3}, {0.001: 0.3, 0.01: 0.1, 0.1: 0.9}):
        run, _ = _candidates("val/acc", "max", val, shuffled)
        assert select_on_validation(run, "s", [], [], GRID)["selected"] == {"task.optimizer.lr": 0.01}


def test_a_max_monitor_keeps_its_highest_score_a_min_monitor_its_lowest_and_ties_go_to_the_first():
    run, _ = _candidates("val/acc", "max", {0.001: 0.5, 0.01: 0.4, 0.1: 0.7}, {0.001: 0.9, 0.01: 0.8, 0.1: 0.1})
    assert select_on_validation(run, "s", [], [], GRID)["selected"] == {"task.optimizer.lr": 0.1}
    # A loss (regression: val/mse) is lowest at its best.
    run, _ = _candidates("val/mse", "min", {0.001: 2.0, 0.01: 0.5, 0.1: 1.0}, {0.001: 0.1, 0.01: 3.0, 0.1: 0.2})
    assert select_on_validation(run, "s", [], [], GRID)["selected"] == {"task.optimizer.lr": 0.01}
    run, _ = _candidates("val/acc", "max", {0.001: 0.5, 0.01: 0.7, 0.1: 0.7}, {0.001: 0.5, 0.01: 0.1, 0.1: 0.9})
    assert select_on_validation(run, "s", [], [], GRID)["selected"] == {"task.optimizer.lr": 0.01}
    # Without a grid: the one run as configured, nothing chosen.
    run, calls = _candidates("val/acc", "max", {0.3: 0.5}, {0.3: 0.5})
    assert "selected" not in select_on_validation(run, "s", [], ["task.optimizer.lr=0.3"], [])
    assert calls == [("s", [], ["task.optimizer.lr=0.3"])]


# -- the summary of the seeds ----------------------------------------------------------------------------
def _pairs(finetune: list[float], scratch: list[float], metric: str = "test/acc") -> list[dict]:
    return [{"labels": "6", "label_fraction": None, "label_count": 6, "train_examples": 6, "seed": seed, "model": model,
             "metric": metric, "value": value, "test_examples": 100, "baseline": None}
            for model, values in (("finetune", finetune), ("scratch", scratch)) for seed, value in enumerate(values)]


def test_seeds_won_counts_strict_wins_over_the_scratch_run_of_the_same_seed():
    # Seeds 0 and 3 tie, seed 1 is won, seed 2 lost; seed 4 has no scratch run to be compared with.
    runs = _pairs([0.8, 0.7, 0.6, 0.5, 0.9], [0.8, 0.6, 0.7, 0.5])
    [row] = label_efficiency.summarize(runs)
    assert (row["seeds_won"], row["seeds_paired"]) == (1, 4)
    # For an error, winning is scoring lower: seed 2 is the win, the ties are still none.
    [row] = label_efficiency.summarize([{**r, "metric": "test/mse"} for r in runs], lower_is_better=True)
    assert (row["seeds_won"], row["seeds_paired"]) == (1, 4)
    [row] = label_efficiency.summarize(_pairs([0.5, 0.5], [0.5, 0.5]))
    assert (row["seeds_won"], row["seeds_paired"]) == (0, 2)


# -- how many labels, and which ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [7, 40, 203])
def test_label_count_keeps_exactly_that_many_rows_when_labels_have_no_classes(size):
    """Regression targets, tag sequences and questions are drawn without classes (random_subset_indices)."""
    for count in range(1, size + 1, max(1, size // 13)):
        for seed in (0, 1):
            kept = random_subset_indices(size, seed=seed, count=count)
            assert len(kept) == len(set(kept)) == count and kept == sorted(kept), (size, count, seed)
            assert kept[0] >= 0 and kept[-1] < size
    assert random_subset_indices(size, seed=0, count=size + 5) == list(range(size))  # more than there are: all


def _write_targets(path: Path, n_rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = [{"text": make_sentence(rng, rng.choice(["animals", "cooking"]), n_words=6), "label": rng.randint(0, 9)}
            for _ in range(n_rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_regression_keeps_label_count_rows_and_scales_targets_by_those_alone(tmp_path):
    train = _write_targets(tmp_path / "train.jsonl", 40, seed=0)
    val = _write_targets(tmp_path / "val.jsonl", 10, seed=1)
    targets = [json.loads(line)["label"] for line in train.read_text().splitlines()]
    common = dict(train_files=[str(train)], val_files=[str(val)], vocab_size=120, max_length=16,
                  cache_dir=str(tmp_path / "cache"))
    means = {}
    for count in (2, 7, None):
        module = TextRegressionDataModule(label_count=count, seed=0, **common)
        module.prepare()
        kept = [float(v) for v in module.datasets["train"].with_format("numpy")["labels"]]
        assert len(kept) == (count or 40) and len(module.datasets["validation"]) == 10
        # The head's scaling (and so its starting prediction) comes from the labels the run has, not from the
        # training split's others.
        shown = kept if count else targets
        means[count] = module.task_kwargs()["target_mean"]
        assert means[count] == pytest.approx([np.mean(shown)])
        assert module.task_kwargs()["target_std"] == pytest.approx([np.std(shown) or 1.0])
    assert means[7] != pytest.approx(means[None])  # (so that the check above tells them apart)


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_labeled(root / "train.jsonl", 60, seed=10)
    write_labeled(root / "dev.jsonl", 20, seed=11)
    write_labeled(root / "test.jsonl", 25, seed=12)
    return root


def _rows(module, split: str) -> list[tuple[tuple[int, ...], int]]:
    data = module.datasets[split]
    return [(tuple(int(t) for t in row["input_ids"]), int(row["labels"])) for row in data]


def test_every_seed_draws_its_own_labelled_subset_and_keeps_the_same_dev_and_test(labelled_files, tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))  # one tokenizer: the rows' ids compare across runs
    common = dict(train_files=[str(labelled_files / "train.jsonl")], val_files=[str(labelled_files / "dev.jsonl")],
                  test_files=[str(labelled_files / "test.jsonl")], tokenizer=str(tmp_path / "tokenizer"),
                  max_length=16, cache_dir=str(tmp_path / "cache"))
    modules = {}
    for name, kwargs in {"n12-seed0": dict(label_count=12, seed=0), "n12-seed1": dict(label_count=12, seed=1),
                         "n12-seed0-again": dict(label_count=12, seed=0), "all-seed0": dict(seed=0)}.items():
        modules[name] = TextClassificationDataModule(**kwargs, **common)
        modules[name].prepare()
    subsets = {name: _rows(m, "train") for name, m in modules.items()}
    everything = subsets["all-seed0"]
    assert len(everything) == 60
    for name in ("n12-seed0", "n12-seed1"):
        assert len(subsets[name]) == 12 and set(subsets[name]) <= set(everything)
    assert subsets["n12-seed0"] == subsets["n12-seed0-again"]  # a seed draws the same subset every time
    assert set(subsets["n12-seed0"]) != set(subsets["n12-seed1"])  # another seed, another subset
    # Stratified: 12 of 60 is a fifth of each class.
    labels = [json.loads(line)["label"] for line in (labelled_files / "train.jsonl").read_text().splitlines()]
    names = sorted(set(labels))
    shares = [labels.count(c) / len(labels) * 12 for c in names]
    for name in ("n12-seed0", "n12-seed1"):
        counts = np.bincount([label for _, label in subsets[name]], minlength=len(names))
        assert np.abs(counts - shares).max() < 1, (counts, shares)
    # Validation and test are the same at every seed and amount.
    for split, size in (("validation", 20), ("test", 25)):
        first = _rows(modules["all-seed0"], split)
        assert len(first) == size
        assert all(_rows(m, split) == first for m in modules.values()), split


def test_the_test_split_shapes_neither_the_tokenizer_nor_the_labels(tmp_path):
    """A word found only in the test file (however often) is not in the trained vocabulary; the label
    names are the training split's."""
    rng = random.Random(0)
    train = write_labeled(tmp_path / "train.jsonl", 40, seed=20)
    rows = [{"text": "zyzzyva " * 6 + make_sentence(rng, "animals", n_words=4), "label": "animals"} for _ in range(60)]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = TextClassificationDataModule(train_files=[str(train)], test_files=[str(test)], vocab_size=400,
                                          max_length=16, cache_dir=str(tmp_path / "cache"))
    module.prepare()
    vocab = module.tokenizer.get_vocab()
    assert "zyzzyva" not in vocab and not any(token.startswith("zyzz") for token in vocab)
    assert "cat" in vocab and "boat" in vocab  # the training split's words are
    assert module.label_names == ["animals", "cooking", "sailing"]


# -- the pipeline's pairs: what both models share, what differs per seed -----------------------------------
LEARNING_RATES = (0.01, 0.1)
# Validation scores by model and rate (finetune prefers 0.1, scratch 0.01); the test split the other way round.
VAL = {("finetune", 0.01): 0.6, ("finetune", 0.1): 0.8, ("scratch", 0.01): 0.5, ("scratch", 0.1): 0.3}
TEST = {("finetune", 0.01): 0.9, ("finetune", 0.1): 0.7, ("scratch", 0.01): 0.2, ("scratch", 0.1): 0.6}


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """experiment=label_efficiency_text_files through run_pipeline in process, every stage's run replaced
    by a record of the config it was given (no training): 6 labels x 2 seeds x 2 models x 2 rates."""
    from hydra.core.hydra_config import HydraConfig

    root = tmp_path_factory.mktemp("pipeline")
    write_corpus(root / "corpus.txt", 40, seed=30)
    write_labeled(root / "train.jsonl", 40, seed=31)
    write_labeled(root / "dev.jsonl", 20, seed=32)
    write_labeled(root / "test.jsonl", 110, seed=33)  # data.min_test_rows: 100
    out = root / "out"
    out.mkdir()  # Hydra's run directory
    overrides = ["experiment=label_efficiency_text_files", f"paths.root_dir={root}", "logger=none",
                 f"pipeline.files.corpus=[{root / 'corpus.txt'}]", f"pipeline.files.train=[{root / 'train.jsonl'}]",
                 f"pipeline.files.dev=[{root / 'dev.jsonl'}]", f"pipeline.files.test=[{root / 'test.jsonl'}]",
                 "pipeline.label_counts=[6]", "pipeline.seeds=[0,1]",
                 f"pipeline.learning_rates=[{','.join(map(str, LEARNING_RATES))}]", "pipeline.finetune.search=null"]
    previous = HydraConfig.instance().cfg
    cfg = _compose(overrides, out, hydra=True)
    stages = []

    def fake_run_stage(stage_cfg):
        output_dir = Path(stage_cfg.paths.output_dir)
        name = output_dir.relative_to(out).as_posix()
        stages.append((name, stage_cfg))
        if name == "pretrain":
            record = {"output_dir": str(output_dir), "metrics": {}, "export_dir": str(output_dir / "export")}
        else:
            model, lr = name.split("/")[0], float(stage_cfg.task.optimizer.lr)
            record = {"output_dir": str(output_dir), "metrics": {"val/acc": VAL[model, lr], "test/acc": TEST[model, lr]},
                      "monitor": {"metric": stage_cfg.task.monitor, "mode": stage_cfg.task.monitor_mode},
                      "train_examples": stage_cfg.data.label_count or 40, "test_examples": 110}
        return StageResult.from_record(record, output_dir)

    reported = {}

    def report(cfg, runs, metric, out, group, context=None):  # the table and figure are tested elsewhere
        reported["runs"] = runs
        return label_efficiency.summarize(runs)

    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with open_dict(cfg):
        del cfg["hydra"]  # the job's config, as train.py hands it over
    try:
        with pytest.MonkeyPatch.context() as patch, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            patch.setattr(runner, "run_stage", fake_run_stage)
            patch.setattr(label_efficiency, "report", report)
            runner.run_pipeline(cfg)
    finally:
        HydraConfig.instance().cfg = previous
    return SimpleNamespace(root=root, out=out, stages=stages, runs=reported["runs"])


def _plain(node, drop: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in drop}


def test_the_pretraining_runs_once_first_and_every_fine_tuned_run_starts_from_it(pipeline_runs):
    names = [name for name, _ in pipeline_runs.stages]
    assert names[0] == "pretrain" and names.count("pretrain") == 1
    assert len(names) == 1 + 2 * 2 * len(LEARNING_RATES)
    pretrain = pipeline_runs.stages[0][1]
    assert pretrain.seed == 42 and pretrain.task._target_.endswith("Word2Vec")  # the pipeline's own seed
    export = str(pipeline_runs.out / "pretrain")
    for name, cfg in pipeline_runs.stages[1:]:
        # Both models start from the export: the fine-tuned one for its weights, scratch for its tokenizer.
        assert cfg.model.init_from == export, name
        assert cfg.transfer.mode == ("scratch" if name.startswith("scratch/") else "finetune"), name


def _downstream(pipeline_runs) -> dict[tuple[str, str, int, float], object]:
    """{(model, amount, seed, learning rate): stage config}."""
    found = {}
    for name, cfg in pipeline_runs.stages[1:]:
        model, run, candidate = name.split("/")
        amount, seed = run.rsplit("-seed", 1)
        assert candidate == candidate_name({"task.optimizer.lr": cfg.task.optimizer.lr})
        found[model, amount, int(seed), float(cfg.task.optimizer.lr)] = cfg
    return found


def test_both_models_of_a_pair_get_the_same_data_subset_budget_seed_and_settings(pipeline_runs):
    runs = _downstream(pipeline_runs)
    root = pipeline_runs.root
    keys = {(a, s, lr) for _, a, s, lr in runs}
    assert keys == {("labels-n6", s, lr) for s in (0, 1) for lr in LEARNING_RATES}
    assert {m for m, *_ in runs} == {"finetune", "scratch"}  # every model at every rate of the grid
    for amount, seed, lr in keys:
        finetune, scratch = runs["finetune", amount, seed, lr], runs["scratch", amount, seed, lr]
        # The same data, to the labelled subset: files, label amount and the seed that draws it.
        assert _plain(finetune.data) == _plain(scratch.data)
        assert finetune.data.train_files == [str(root / "train.jsonl")]
        assert finetune.data.val_files == [str(root / "dev.jsonl")]
        assert finetune.data.test_files == [str(root / "test.jsonl")]
        assert finetune.data.label_count == 6
        assert finetune.seed == scratch.seed == finetune.data.seed == seed
        # The same step budget (the experiment's 200 steps, validated every 20) and callbacks.
        assert _plain(finetune.trainer, ("default_root_dir",)) == _plain(scratch.trainer, ("default_root_dir",))
        assert (finetune.trainer.max_steps, finetune.trainer.max_epochs, finetune.trainer.val_check_interval) == (
            200, None, 20)
        for callback in ("early_stopping", "model_checkpoint"):
            assert _plain(finetune.callbacks[callback], ("dirpath",)) == _plain(scratch.callbacks[callback], ("dirpath",))
        assert finetune.callbacks.early_stopping.patience == 5
        # The same task (the candidate's learning rate included), architecture and tokenizer source.
        assert _plain(finetune.task) == _plain(scratch.task) and finetune.task.optimizer.lr == lr
        assert _plain(finetune.model) == _plain(scratch.model)
        # Only the transfer differs: the fine-tuned model's embeddings at a tenth of the rate; scratch trains
        # everything at the one rate, none of the fine-tuned model's transfer settings.
        assert _plain(finetune.transfer) == {"mode": "finetune", "freeze_layers": 0, "freeze_patterns": [],
                                             "layer_lr_decay": 0.1}
        assert _plain(scratch.transfer) == {"mode": "scratch", "freeze_layers": 0, "freeze_patterns": [],
                                            "layer_lr_decay": 1.0}


def test_every_seed_is_its_own_run_and_the_rate_kept_is_validations_choice(pipeline_runs):
    runs = pipeline_runs.runs
    assert sorted((r["labels"], r["seed"], r["model"]) for r in runs) == sorted(
        ("6", s, m) for s in (0, 1) for m in ("finetune", "scratch"))
    for row in runs:
        # Validation's choice (finetune 0.1, scratch 0.01), reported at its own test score.
        rate = 0.1 if row["model"] == "finetune" else 0.01
        assert row["learning_rate"] == rate and row["value"] == TEST[row["model"], rate], row
    record = json.loads(next(pipeline_runs.out.glob("pipeline.json")).read_text())
    assert record["stages"]["finetune/labels-n6-seed1"]["validation_by_candidate"] == {"lr0.01": 0.6, "lr0.1": 0.8}


# -- the checkpoint a run is scored with -------------------------------------------------------------------
# Each downstream experiment's validation monitor, and which way is better: pinned here, not read back.
MONITORS = {"text_classification": ("val/acc", "max"), "text_regression": ("val/mse", "min"),
            "text_token_classification": ("val/f1", "max"), "text_question_answering": ("val/f1", "max"),
            "vision_classification": ("val/acc", "max"), "text_multitask": ("val/part/acc", "max")}


def test_the_best_checkpoint_and_early_stopping_are_judged_on_validation_the_right_way_round():
    for experiment, (monitor, mode) in MONITORS.items():
        cfg = _compose([f"experiment={experiment}", "callbacks=early_stopping"])
        assert (cfg.task.monitor, cfg.task.monitor_mode) == (monitor, mode), experiment
        for callback in ("model_checkpoint", "early_stopping"):
            node = cfg.callbacks[callback]
            assert (node.monitor, node.mode) == (monitor, mode), (experiment, callback)
        assert cfg.callbacks.model_checkpoint.save_top_k == 1


class _FakeTrainer:
    """What the stage's test pass asks of the Trainer: the checkpoint callback's best path, validate and
    test (each returning the scores of the checkpoint it is given)."""

    def __init__(self, best: str, scores: dict[str | None, dict[str, float]]):
        self.is_global_zero, self.loggers = True, []
        self.checkpoint_callback = SimpleNamespace(best_model_path=best)
        self.scores, self.calls = scores, []

    def validate(self, module, datamodule, ckpt_path, **kwargs):
        self.calls.append(("validate", ckpt_path))
        return [{k: v for k, v in self.scores[ckpt_path].items() if k.startswith("val/")}]

    def test(self, module, datamodule, ckpt_path, **kwargs):
        self.calls.append(("test", ckpt_path))
        return [{k: v for k, v in self.scores[ckpt_path].items() if k.startswith("test/")}]


def test_the_test_split_scores_the_checkpoint_best_on_validation():
    from headstart.pipeline import stage

    best = "/run/checkpoints/epoch002-step60.ckpt"
    scores = {best: {"val/acc": 0.9, "test/acc": 0.7}, None: {"val/acc": 0.5, "test/acc": 0.8}}
    trainer = _FakeTrainer(best, scores)
    trained = stage._Trained({"val/acc": 0.5, "train/loss": 0.1})  # as training ended (the last epoch)
    stage._test(trainer, SimpleNamespace(), None, trained)
    assert trainer.calls == [("validate", best), ("test", best)]
    assert trained.metrics == {"val/acc": 0.9, "test/acc": 0.7, "train/loss": 0.1}
    assert trained.metrics_source["test"] == trained.metrics_source["val"] == "best"
    assert trained.metrics_source["last_epoch"] == {"val/acc": 0.5}
    # No checkpoint on validation (no validation split): the end of training, and said so.
    trainer = _FakeTrainer("", scores)
    trained = stage._Trained({"train/loss": 0.1})
    stage._test(trainer, SimpleNamespace(), None, trained)
    assert trainer.calls == [("test", None)] and trained.metrics_source["test"] == "last"


# -- stages with tiny models -----------------------------------------------------------------------------
def _batches(vocab: int, n: int = 2, seed: int = 0) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(5, vocab, (4, 8), generator=gen),
                "attention_mask": torch.ones(4, 8, dtype=torch.long), "labels": torch.randint(0, 3, (4,), generator=gen)}
               for _ in range(n)]
    return torch.utils.data.DataLoader(batches, batch_size=None)


def _fit(module, data, epochs: int, callbacks=(), val=None) -> None:
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                         num_sanity_val_steps=0, limit_val_batches=None if val is not None else 0)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=val)


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], net: torch.nn.Module) -> set[str]:
    return {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import small_tokenizer

    return small_tokenizer()


def test_linear_probe_trains_the_head_alone_with_the_backbone_in_eval_mode(tokenizer):
    import lightning.pytorch as pl

    from headstart.transfer.modes import apply_transfer

    torch.manual_seed(0)
    module = SequenceClassifier(text_spec(tokenizer), optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
                                num_labels=3)
    assert module.net.config.hidden_dropout_prob > 0  # dropout that train mode would switch on
    summary = apply_transfer(module, mode="linear_probe")
    backbone_names = {n for n, _ in module.backbone.named_parameters()}
    assert summary["frozen_parameters"] == len(backbone_names) and summary["trainable_backbone_parameters"] == 0
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in module.head.parameters()}
    modes = []

    class Modes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(({m.training for m in pl_module.backbone.modules()}, pl_module.head.training))
            with torch.no_grad():  # dropout off in the backbone: the same features twice
                assert torch.equal(pl_module.features(batch), pl_module.features(batch))

    backbone, head = _state(module.backbone), _state(module.head)
    # Two epochs with validation between them (which switches every module to eval and back).
    _fit(module, _batches(len(tokenizer)), epochs=2, callbacks=[Modes()], val=_batches(len(tokenizer), n=1, seed=1))
    assert modes == [({False}, True)] * 4
    module.train()  # as any loop may: the frozen backbone stays in eval mode
    assert {m.training for m in module.backbone.modules()} == {False} and module.head.training
    assert _changed(backbone, module.backbone) == set()  # bit for bit
    assert _changed(head, module.head) == {"1.weight", "1.bias"}


def test_gradual_unfreezing_keeps_the_backbone_frozen_until_its_epoch_then_trains_it_at_a_tenth_of_the_rate(
        tokenizer):
    """callbacks=gradual_unfreezing as composed, on the classifier's own optimizer and warmup schedule."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    cfg = _compose(["experiment=text_classification", "callbacks=gradual_unfreezing", *TINY_MODEL])
    spec = instantiate(cfg.model)
    spec.bind_tokenizer(tokenizer)
    torch.manual_seed(0)
    module = instantiate(cfg.task, backbone=spec, num_labels=3, _convert_="all")
    assert module.scheduler_factory is not None
    head_lr = cfg.task.optimizer.lr
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.start = _state(pl_module.backbone), _state(pl_module.head)

        def on_train_epoch_end(self, trainer, pl_module):
            groups = trainer.optimizers[0].param_groups
            backbone = {id(p) for p in pl_module.backbone.parameters()}
            in_groups = [{id(p) for p in g["params"]} & backbone for g in groups]
            seen.append({"backbone_moved": bool(_changed(self.start[0], pl_module.backbone)),
                         "head_moved": bool(_changed(self.start[1], pl_module.head)),
                         "groups": len(groups), "backbone_in_last_group": in_groups[-1] == backbone,
                         "rates": [g["lr"] for g in groups]})

    callback = instantiate(cfg.callbacks.backbone_finetuning)
    _fit(module, _batches(len(tokenizer), n=3), epochs=4, callbacks=[callback, Watch()])
    assert [s["head_moved"] for s in seen] == [True] * 4
    assert [s["backbone_moved"] for s in seen] == [False, False, True, True]  # unfrozen at epoch 2
    assert [s["groups"] for s in seen] == [2, 2, 3, 3] and seen[2]["backbone_in_last_group"]
    assert all(p.requires_grad for p in module.backbone.parameters())
    # The schedule (linear decay over the 12 steps) moves the head's rate; the backbone's is the callback's:
    # a tenth of the head's when it is unfrozen, kept through the epoch, then doubled (Lightning's default),
    # never past the head's.
    heads = [s["rates"][0] for s in seen]
    assert heads == pytest.approx([head_lr * (12 - steps) / 12 for steps in (3, 6, 9, 12)])
    assert seen[2]["rates"][-1] == pytest.approx(0.1 * heads[1])
    assert seen[3]["rates"][-1] == pytest.approx(min(2 * 0.1 * heads[1], heads[2]))


@pytest.fixture(scope="module")
def mlm_export(tmp_path_factory, tokenizer) -> Path:
    """An MLM export of the tiny BERT (weights moved off their init), with its own tokenizer."""
    from conftest import TOPICS

    rng = random.Random(1)
    texts = [make_sentence(rng, topic) for topic in sorted(TOPICS) for _ in range(20)]
    return make_mlm_export(texts, dict(TINY_BERT), tmp_path_factory.mktemp("mlm") / "export")


def _stage_module(export: Path, *overrides: str):
    """A classifier as the stage builds it from the composed config (model.init_from=``export``), before
    the hand-off; its config and backbone spec."""
    from hydra.utils import instantiate
    from transformers import AutoTokenizer

    cfg = _compose(["experiment=text_classification", *TINY_MODEL, f"model.init_from={export}", *overrides])
    spec = instantiate(cfg.model)
    spec.bind_tokenizer(AutoTokenizer.from_pretrained(str(export)))
    torch.manual_seed(5)
    return cfg, spec, instantiate(cfg.task, backbone=spec, num_labels=3, _convert_="all")


def _exported_backbone(export: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix("bert."): v for k, v in load_file(export / "model.safetensors").items()
            if k.startswith("bert.")}


def test_init_scope_embeddings_loads_the_input_embeddings_alone(mlm_export):
    from headstart.pipeline import stage

    exported = _exported_backbone(mlm_export)
    cfg, spec, module = _stage_module(mlm_export, "model.init_scope=embeddings")
    before = _state(module.backbone)
    report = stage._hand_off(cfg, module, spec, mlm_export)
    assert report["scope"] == "embeddings" and report["loaded"] == ["embeddings.word_embeddings.weight"]
    assert _changed(before, module.backbone) == {"embeddings.word_embeddings.weight"}
    assert torch.equal(module.backbone.embeddings.word_embeddings.weight, exported["embeddings.word_embeddings.weight"])
    # The default scope: every backbone weight is the export's.
    cfg, spec, module = _stage_module(mlm_export)
    report = stage._hand_off(cfg, module, spec, mlm_export)
    assert report["scope"] == "backbone" and report["loaded"] == sorted(module.backbone.state_dict())
    assert all(torch.equal(v, exported[k]) for k, v in module.backbone.state_dict().items() if k in exported)


def test_the_scratch_baseline_keeps_the_exports_tokenizer_and_none_of_its_weights(mlm_export):
    from headstart.pipeline import stage

    exported = _exported_backbone(mlm_export)
    cfg, spec, module = _stage_module(mlm_export, "transfer=scratch")
    before = _state(module)
    assert stage._hand_off(cfg, module, spec, mlm_export) is None
    assert _changed(before, module) == set()
    assert not any(torch.equal(v, exported[k]) for k, v in module.backbone.state_dict().items()
                   if k in exported and v.is_floating_point() and v.numel() > 1)
    # The tokenizer (so the inputs) is the export's, as for the fine-tuned model.
    finetune_cfg, finetune_spec, _ = _stage_module(mlm_export)
    assert stage._processor_source(cfg, spec, mlm_export) == stage._processor_source(
        finetune_cfg, finetune_spec, mlm_export) == str(mlm_export)
    assert stage._lineage(cfg)["loaded"] is None and stage._lineage(finetune_cfg)["loaded"] == "backbone"
