"""Multi-task learning: one shared backbone, a head, a data set and a loss weight per task.

The unit tests build the model through its public API and check that the loss is the weighted sum
of the heads' losses and that every head trains the one backbone. The end-to-end test writes its
own multi-task experiment (as a user would: a copy of experiment/text_multitask.yaml on Hydra's
search path) with three test-made tasks, hands off an MLM export, and checks every task's metric
beats its trivial baseline.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY_BERT,
    assert_user_error,
    finished_run,
    logged,
    make_mlm_export,
    run_train,
    write_labeled,
)
from test_heads_token_regression import write_counts, write_tagged

from headstart.errors import ConfigError

HEADS = {
    "topics": {"_target_": "headstart.heads.sequence_classification.SequenceClassifier", "pooling": "mean"},
    "ner": {"_target_": "headstart.heads.token_classification.TokenClassifier"},
}
KWARGS = {"topics": {"num_labels": 3, "label_names": ["a", "b", "c"]},
          "ner": {"num_labels": 3, "label_names": ["O", "B-PER", "I-PER"]}}


def _model(weights: dict[str, float]):
    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.tokenizer import train_tokenizer
    from headstart.heads.multitask import MultiTaskModel

    spec = TextBackboneSpec(arch=TINY_BERT)
    spec.bind_tokenizer(train_tokenizer(iter([["alice met bob in paris", "the cat and the dog"]]), "wordpiece", 100,
                                        True, 32))
    torch.manual_seed(0)
    tasks = {name: {"head": head, "weight": weights[name]} for name, head in HEADS.items()}
    return MultiTaskModel(spec, functools.partial(torch.optim.AdamW, lr=1e-3), tasks, KWARGS)


def _batches() -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (4, 7), generator=gen)  # inside the tokenizer's vocabulary
    mask = torch.ones_like(ids)
    return {"topics": {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])},
            "ner": {"input_ids": ids.flip(0), "attention_mask": mask,
                    "labels": torch.randint(0, 3, (4, 7), generator=gen).masked_fill(ids < 12, -100)}}


def test_one_backbone_and_the_weighted_sum_of_the_task_losses():
    model = _model({"topics": 1.0, "ner": 0.5})
    model.eval()  # no dropout: the task losses below are recomputed exactly
    # Hard sharing: every head holds the model's own network, registered once.
    assert all(head.net is model.net for head in model.heads.values())
    keys = list(model.state_dict())
    assert not [k for k in keys if ".net." in k]
    assert sorted(k for k in keys if k.startswith("heads.")) == [
        "heads.ner.head.1.bias", "heads.ner.head.1.weight", "heads.topics.head.1.bias", "heads.topics.head.1.weight"]
    batches = _batches()
    model.log = lambda *a, **k: None  # no trainer attached
    total = model.training_step(batches, 0)
    parts = {name: model.heads[name].step(batch)[0] for name, batch in batches.items()}
    assert total.item() == pytest.approx(parts["topics"].item() + 0.5 * parts["ner"].item(), rel=1e-6)


def test_each_task_trains_the_shared_backbone_by_its_weight():
    """With a task's weight at 0 its head gets no gradient and the backbone's gradient is the other
    task's alone; with both on, the backbone gets both tasks' gradients."""
    def grads(weights):
        model = _model(weights)
        model.eval()
        model.log = lambda *a, **k: None
        model.training_step(_batches(), 0).backward()
        return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}

    only_topics, both = grads({"topics": 1.0, "ner": 0.0}), grads({"topics": 1.0, "ner": 1.0})
    alone = _model({"topics": 1.0, "ner": 0.0})
    alone.eval()
    alone.heads["topics"].step(_batches()["topics"])[0].backward()
    for name, param in alone.named_parameters():
        if name.startswith("heads.ner."):
            assert only_topics[name] is None or not only_topics[name].any(), name
        elif param.grad is not None:
            assert torch.allclose(only_topics[name], param.grad, atol=1e-7), name
    embedding = "net.embeddings.word_embeddings.weight"
    assert not torch.allclose(both[embedding], only_topics[embedding])
    assert both["heads.ner.head.1.weight"].abs().sum() > 0


def test_heads_and_data_must_name_the_same_tasks():
    from headstart.heads.multitask import MultiTaskModel

    with pytest.raises(ConfigError, match=r"task.tasks: \['ner', 'topics'\].*data.tasks: \['ner', 'tags'\]"):
        MultiTaskModel(None, None, {name: {"head": head} for name, head in HEADS.items()},
                       {"ner": {}, "tags": {}})
    with pytest.raises(ConfigError, match="weight=-1.0 must be zero or positive"):
        _model({"topics": 1.0, "ner": -1.0})


def test_shipped_experiment_composes_two_pydoc_tasks():
    """experiment=text_multitask: the same pydoc paragraphs labelled twice, one head each, validated
    by the schemas (a head's and a data config's own fields, under the task's name)."""
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from headstart.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=text_multitask", "task.tasks.topic.weight=0.5"])
    assert list(cfg.data.tasks) == ["part", "topic"] and list(cfg.task.tasks) == ["part", "topic"]
    assert cfg.data.tasks.part.label_column == "label" and cfg.data.tasks.topic.label_column == "topic"
    assert {t.head._target_ for t in cfg.task.tasks.values()} == {
        "headstart.heads.sequence_classification.SequenceClassifier"}
    assert cfg.task.tasks.topic.weight == 0.5 and cfg.task._recursive_ is False
    assert cfg.task.monitor == "val/part/acc"


# -- end to end through train.py ----------------------------------------------------------------------
EXPERIMENT = """# @package _global_
defaults:
  - /data/token_classification_files@data.tasks.ner
  - /data/regression_files@data.tasks.count
  - /data/text_classification_files@data.tasks.topics
  - /task/token_classification@task.tasks.ner.head
  - /task/regression@task.tasks.count.head
  - /task/sequence_classification@task.tasks.topics.head
  - override /data: multitask
  - override /model: bert_tiny
  - override /task: multitask

data:
  tasks:
    ner: {{train_files: ["{d}/ner_train.jsonl"], val_files: ["{d}/ner_val.jsonl"], test_files: ["{d}/ner_test.jsonl"],
           max_length: 32, batch_size: 16}}
    count: {{train_files: ["{d}/count_train.jsonl"], val_files: ["{d}/count_val.jsonl"],
             test_files: ["{d}/count_test.jsonl"], max_length: 32, batch_size: 16}}
    topics: {{train_files: ["{d}/topics_train.jsonl"], val_files: ["{d}/topics_val.jsonl"],
              test_files: ["{d}/topics_test.jsonl"], max_length: 32, batch_size: 16}}
task:
  tasks:
    ner: {{weight: 1.0}}
    count: {{weight: 0.5}}
    topics: {{weight: 1.0}}
  optimizer: {{lr: 3.0e-3}}
"""


@pytest.fixture(scope="module")
def multitask_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multitask")
    for split, rows, seed in (("train", 300, 0), ("val", 60, 1), ("test", 100, 2)):
        write_tagged(root / f"ner_{split}.jsonl", rows, seed)
        write_counts(root / f"count_{split}.jsonl", rows, seed + 10)
        write_labeled(root / f"topics_{split}.jsonl", rows, seed + 20)
    (root / "conf" / "experiment").mkdir(parents=True)
    (root / "conf" / "experiment" / "my_multitask.yaml").write_text(EXPERIMENT.format(d=root))
    texts = [" ".join(json.loads(line)["tokens"]) for line in (root / "ner_train.jsonl").read_text().splitlines()]
    texts += [json.loads(line)["text"] for name in ("count", "topics")
              for line in (root / f"{name}_train.jsonl").read_text().splitlines()]
    make_mlm_export(texts, TINY_BERT, root / "export")
    return root


@pytest.mark.slow
def test_multitask_end_to_end_from_mlm_export(multitask_data, tmp_path, shared_cache, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    d = multitask_data
    proc = run_train([
        f"hydra.searchpath=[file://{d / 'conf'}]", "experiment=my_multitask", "logger=csv", "trainer.max_epochs=6",
        *[f"model.arch.{k}={v}" for k, v in TINY_BERT.items() if k != "model_type"], f"model.init_from={d / 'export'}",
    ], tmp_path, shared_cache)
    run_dir, results = finished_run(proc, tmp_path, "multi-task")
    metrics = results["metrics"]
    assert results["task"] == "MultiTaskModel"
    # Every task beats its trivial baseline: F1 0 for an all-O tagger, the targets' variance and no
    # correlation for the mean, a third for a guess among three topics.
    assert metrics["test/ner/f1"] > 0.7, metrics
    counts = [json.loads(line)["label"] for line in (d / "count_test.jsonl").read_text().splitlines()]
    assert metrics["test/count/mse"] < 0.5 * statistics.pvariance(counts), metrics
    assert metrics["test/count/pearson"] > 0.7, metrics
    assert metrics["test/topics/acc"] > 0.8, metrics
    # val/loss (what picks the checkpoint by default) is the weighted sum of the task losses.
    weighted = metrics["val/ner/loss"] + 0.5 * metrics["val/count/loss"] + metrics["val/topics/loss"]
    assert metrics["val/loss"] == pytest.approx(weighted, rel=1e-4)
    train_loss = logged(run_dir, "train/loss_epoch")
    assert train_loss[-1] < 0.5 * train_loss[0], train_loss
    # One backbone: the hand-off loaded every backbone weight into it; each task's head is new.
    report = json.loads((run_dir / "handoff_report.json").read_text())
    assert len(report["loaded"]) > 30 and report["source_objective"] == "MaskedLanguageModeling"
    assert sorted({k.split(".")[1] for k in report["new"]}) == ["count", "ner", "topics"]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if ".net." in k] and len([k for k in state if k.startswith("net.")]) > 30


@pytest.mark.slow
def test_multitask_data_errors_name_the_task(multitask_data, tmp_path):
    d = multitask_data
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_train([f"hydra.searchpath=[file://{d / 'conf'}]", "experiment=my_multitask", "logger=none",
                      f"data.tasks.count.train_files=[{empty}]"], tmp_path)
    assert_user_error(proc, "data.tasks.count", str(empty))
