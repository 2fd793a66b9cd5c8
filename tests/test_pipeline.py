"""The MLM pretrain -> finetune (-> scratch) pipeline, end to end through train.py."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_MODEL, run_train

pytestmark = pytest.mark.slow


def _metric_series(csv_path: Path, name: str) -> list[float]:
    with csv_path.open() as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def _stage_overrides(corpus: Path) -> list[str]:
    pretrain = [
        "data=text_files", f"data.train_files=[{corpus / 'train.txt'}]", f"data.val_files=[{corpus / 'val.txt'}]",
        "data.max_length=32", "data.vocab_size=300", "data.batch_size=16", "trainer.max_epochs=6",
        "task.optimizer.lr=3e-3", "trainer.log_every_n_steps=1",
    ]
    finetune = [
        "data=text_classification_files", f"data.train_files=[{corpus / 'cls_train.jsonl'}]",
        f"data.val_files=[{corpus / 'cls_val.jsonl'}]", f"data.test_files=[{corpus / 'cls_test.jsonl'}]",
        "data.max_length=32", "data.batch_size=16", "trainer.max_epochs=4", "task.optimizer.lr=2e-3",
    ]
    quoted = lambda items: "[" + ",".join(f'"{o}"' for o in items) + "]"  # noqa: E731
    return [f"pipeline.pretrain.overrides={quoted(pretrain)}", f"pipeline.finetune.overrides={quoted(finetune)}"]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, corpus_dir, shared_cache):
    root = tmp_path_factory.mktemp("pipeline")
    # One comparison (no label counts, seeds or learning-rate choice): the hand-off path itself.
    proc = run_train(["experiment=text_mlm_pipeline", "logger=csv", *TINY_MODEL, *_stage_overrides(corpus_dir),
                      "pipeline.label_counts=null", "pipeline.seeds=null", "pipeline.learning_rates=null"],
                     root, shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [run_dir] = [p.parent for p in root.glob("outputs/*/*/pipeline.json")]
    return run_dir, proc


def test_pretrain_loss_falls(pipeline_run):
    run_dir, _ = pipeline_run
    metrics = run_dir / "pretrain" / "csv" / "metrics.csv"
    val_loss = _metric_series(metrics, "val/loss")
    first_step_loss = _metric_series(metrics, "train/loss_step")[0]
    vocab = json.loads((run_dir / "pretrain" / "export" / "config.json").read_text())["vocab_size"]
    assert len(val_loss) == 6
    # From chance level (ln of the vocabulary) to well below it, and still falling after epoch 1.
    assert first_step_loss > math.log(vocab) - 0.5, (first_step_loss, vocab)
    assert val_loss[-1] < first_step_loss - 1.0, (first_step_loss, val_loss)
    assert val_loss[-1] < val_loss[0] - 0.5, val_loss


def test_export_loads_with_transformers(pipeline_run):
    from transformers import AutoModel, AutoTokenizer

    export = pipeline_run[0] / "pretrain" / "export"
    model = AutoModel.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert type(model).__name__ == "BertModel"
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)
    meta = json.loads((export / "headstart_export.json").read_text())
    assert meta["objective"] == "MaskedLanguageModeling" and meta["completed"] is True


def test_handoff_report_loads_every_backbone_key(pipeline_run):
    from transformers import AutoConfig, AutoModel

    run_dir = pipeline_run[0]
    report = json.loads((run_dir / "finetune" / "handoff_report.json").read_text())
    config = AutoConfig.from_pretrained(run_dir / "pretrain" / "export")
    backbone_keys = sorted(AutoModel.from_config(config, add_pooling_layer=False).state_dict())
    assert report["loaded"] == backbone_keys
    assert report["new"] == ["head.1.bias", "head.1.weight"]
    assert report["ignored"] and all(k.startswith("cls.") for k in report["ignored"])
    assert report["source_run"] == str((run_dir / "pretrain").resolve())
    pretrain_results = json.loads((run_dir / "pretrain" / "results.json").read_text())
    assert report["source_config_hash"] == pretrain_results["config_hash"]
    assert not (run_dir / "scratch" / "handoff_report.json").exists()


def test_finetune_beats_majority_and_table_printed(pipeline_run, corpus_dir):
    run_dir, proc = pipeline_run
    labels = [json.loads(line)["label"] for line in (corpus_dir / "cls_test.jsonl").read_text().splitlines()]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    summary = json.loads((run_dir / "pipeline.json").read_text())["comparison"]
    assert summary["finetune"]["value"] > majority + 0.2, (summary, majority)
    assert set(summary) == {"finetune", "scratch"}
    assert "What pretraining bought" in proc.stdout and "from scratch" in proc.stdout
    assert str(run_dir) in proc.stdout.replace("\n", "")
    # The table, printed last and written as printed, says what the number is, on how many test
    # examples, and what predicting the training split's majority class scores there (by hand here).
    table = (run_dir / "results_table.txt").read_text()
    assert proc.stdout.rstrip().endswith(table.rstrip())
    train = Counter(json.loads(line)["label"] for line in (corpus_dir / "cls_train.jsonl").read_text().splitlines())
    majority_train = labels.count(train.most_common(1)[0][0]) / len(labels)
    report = json.loads((run_dir / "pipeline.json").read_text())["report"]
    assert report["metric_words"] == "test accuracy" and report["test_examples"] == len(labels) == 90
    assert report["baseline"]["kind"] == "majority class"
    assert report["baseline"]["value"] == pytest.approx(majority_train)
    assert f"{majority_train:.4f}" in table and "on the 90 test examples" in table and "test accuracy" in table
    assert "pretrained with masked LM" in table and "One run of each model" in table


def test_stage_configs_saved_and_grouped(pipeline_run):
    run_dir = pipeline_run[0]
    from omegaconf import OmegaConf

    groups = set()
    for stage in ("pretrain", "finetune", "scratch"):
        cfg = OmegaConf.load(run_dir / stage / "config.yaml")
        groups.add(cfg.run_group)
        assert cfg.run_name.endswith(stage)
    assert len(groups) == 1
