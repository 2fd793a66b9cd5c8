"""The debug group: composed after the experiment, so `debug=default` is a one-batch check of any
shipped experiment (pipelines run one stage of each kind), and `debug=overfit` / `debug=profiler`
do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    REPO,
    TINY_MODEL,
    logged,
    make_mlm_export,
    only_run_dir,
    run_train,
    two_at_a_time,
    write_corpus,
)
from test_heads_qa import write_qa
from test_heads_token_regression import write_counts, write_tagged
from test_label_efficiency_files import write_reviews

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TINY_ARCH = {"model_type": "bert", **{o.split("=")[0].removeprefix("model.arch."): int(o.split("=")[1]) for o in TINY_MODEL}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[str]]:
    """What the experiments that take the user's own files or models need on the command line."""
    root = tmp_path_factory.mktemp("debug-inputs")
    corpus = write_corpus(root / "corpus.txt", 200, seed=0)
    export = make_mlm_export(corpus.read_text().splitlines(), TINY_ARCH, root / "mlm-export")
    files = {}
    for name, write in (("qa", write_qa), ("tagged", write_tagged), ("counts", write_counts)):
        files[name] = [write(root / f"{name}_{split}.jsonl", 24, seed) for split, seed in (("train", 1), ("dev", 2))]
    for split, seed in (("train", 1), ("dev", 2), ("test", 3)):
        write_reviews(root / f"{split}.tsv", 30, seed)

    def splits(name: str) -> list[str]:
        train, dev = files[name]
        return [f"data.train_files=[{train}]", f"data.val_files=[{dev}]"]

    return {
        "feature_export": ["data=pydoc_topics_cls", "model=bert_tiny", *TINY_MODEL, f"model.init_from={export}", "data.max_length=64"],
        "text_distillation": [f"task.teacher={export}", "data.max_length=64"],
        "text_question_answering": splits("qa"),
        "text_token_classification": splits("tagged"),
        "text_regression": splits("counts"),
        "label_efficiency_text_files": [f"pipeline.files.corpus=[{corpus}]", f"pipeline.files.train=[{root}/train.tsv]",
                                        f"pipeline.files.dev=[{root}/dev.tsv]", f"pipeline.files.test=[{root}/test.tsv]",
                                        "pipeline.files.text_column=sentence"],
    }


def test_every_experiment_is_covered():
    assert len(EXPERIMENTS) >= 20 and "text_pipeline" in EXPERIMENTS


def one_batch_problems(root: Path) -> list[str]:
    """What is wrong with a `debug=default` run under ``root``: anything but one optimizer step per
    stage, and for a pipeline anything but one run of each stage."""
    stages = sorted(root.glob("outputs/2*/*/**/results.json"))  # not again through outputs/latest
    if not stages:
        return ["no run finished"]
    problems = []
    for path in stages:
        results = json.loads(path.read_text())
        # One optimizer step whatever the experiment's epochs, steps and validation interval say.
        if results["global_step"] != (1 if results["metrics"] else 0):
            problems.append(f"{path.parent.relative_to(root)}: {results['global_step']} steps")
    for pipeline in root.glob("outputs/*/*/pipeline.json"):  # the first amount of labels, seed and rate
        record = json.loads(pipeline.read_text())
        if len(stages) != len(record["stages"]) or len(record.get("runs") or []) > 2:  # fine-tuned, scratch
            problems.append(f"pipeline ran {sorted(record['stages'])}")
    return problems


@pytest.mark.slow
def test_debug_default_runs_one_batch_of_every_experiment(inputs, tmp_path, shared_cache):
    def check(experiment: str) -> str | None:
        root = tmp_path / experiment
        proc = run_train([f"experiment={experiment}", "debug=default", *inputs.get(experiment, [])], root,
                         cache=shared_cache)
        if proc.returncode != 0:
            return proc.stderr[-1500:]
        return "; ".join(one_batch_problems(root)) or None

    cases = []
    for experiment in EXPERIMENTS:
        def case(experiment=experiment):
            return check(experiment)
        case.__name__ = experiment
        cases.append(case)
    outcome = two_at_a_time(lambda case: case(), cases)
    assert sorted(outcome) == EXPERIMENTS
    failed = {experiment: problem for experiment, problem in outcome.items() if problem}
    assert not failed, failed


def test_debug_overfit_drives_the_training_loss_down_on_three_batches(tmp_path, shared_cache):
    proc = run_train(["experiment=text_classification", "debug=overfit", "logger=csv", *TINY_MODEL, "data.max_length=64",
                      "data.batch_size=8", "trainer.max_epochs=15"], tmp_path, cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    losses = logged(run_dir, "train/loss_epoch")
    assert len(losses) == 15
    assert losses[-1] < 0.3 * losses[0], losses  # the same 3 batches, memorised
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 15 * 3


def test_debug_profiler_writes_where_the_time_went(tmp_path, shared_cache):
    proc = run_train(["experiment=text_classification", "debug=profiler", "logger=none", *TINY_MODEL, "data.max_length=64"], tmp_path,
                     cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 20
    profile = Path(next(run_dir.glob("*profile*.txt")))
    assert "run_training_batch" in profile.read_text()
