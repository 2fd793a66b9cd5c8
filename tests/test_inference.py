"""mode=predict and mode=evaluate: a fine-tuned model used without training it.

The fast tests check the pieces (mode values, the export refused or found, the rows read, the
prediction files). The slow ones fine-tune a tiny sequence classifier through train.py, then predict
on a new file (against transformers' auto class loaded in a fresh process from the export) and
evaluate on the run's test file (the run's own test/acc), and refuse bad inputs with one message.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    OFFLINE_ENV,
    TINY_BERT,
    TINY_MODEL,
    TOPICS,
    assert_user_error,
    make_mlm_export,
    make_sentence,
    only_run_dir,
    run_train,
    two_at_a_time,
    write_labeled,
)
from omegaconf import OmegaConf

from headstart.errors import CheckpointError, ConfigError
from headstart.pipeline import inference

TOPIC_NAMES = sorted(TOPICS)


# -- fast ------------------------------------------------------------------------------------------------
def test_mode_values():
    for mode in inference.MODES:
        inference.check_mode(mode)
    with pytest.raises(ConfigError, match="mode='trian' is unknown; use train"):
        inference.check_mode("trian")


def test_the_schema_has_the_new_fields():
    from headstart.config.schema import TextClassificationDataConfig, TrainConfig

    assert TrainConfig.mode == "train"
    assert TextClassificationDataConfig().predict_files == []


def test_head_export_refusals(tmp_path):
    with pytest.raises(ConfigError, match="set model.init_from="):
        inference.head_export(None, "predict")
    mlm = make_mlm_export(["the cat and the dog", "a boat and a sail"], TINY_BERT, tmp_path / "mlm" / "export")
    for given in (mlm, mlm.parent):  # the export, or its run
        with pytest.raises(CheckpointError, match="a backbone without a task head.*Fine-tune it first"):
            inference.head_export(str(given), "predict")
    predict_run = tmp_path / "predict_run"  # a predict run (outputs/latest after one): the export it used
    predict_run.mkdir()
    (predict_run / "results.json").write_text(json.dumps({"mode": "predict", "export_dir": str(mlm)}))
    with pytest.raises(CheckpointError, match="Fine-tune it first"):
        inference.head_export(str(predict_run), "evaluate")
    multi = tmp_path / "multi"
    for task in ("ner", "topics"):
        (multi / "export" / task).mkdir(parents=True)
        (multi / "export" / task / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"one export per task; name one: model.init_from={multi}/export/ner"):
        inference.head_export(str(multi), "evaluate")


def test_the_data_module_is_the_exports_with_the_command_line_winning():
    meta = {"data_config": {"_target_": "headstart.data.text_classification.TextClassificationDataModule",
                            "train_files": ["/runs/train.csv"], "text_column": "sentence", "label_column": "topic",
                            "max_length": 32, "batch_size": 16, "delimiter": ";", "cache_dir": "/old/cache"}}
    current = OmegaConf.create({"text_column": "text", "label_column": "label", "max_length": 128, "batch_size": 32,
                                "delimiter": None, "predict_files": ["new.csv"], "tokens_column": "words"})
    config = inference.new_data_config(meta, current, set(), "/new/cache")
    assert config == {**meta["data_config"], "cache_dir": "/new/cache"}
    config = inference.new_data_config(meta, current, {"text_column", "max_length", "predict_files"}, "/c")
    assert (config["text_column"], config["max_length"], config["label_column"]) == ("text", 128, "topic")
    assert "predict_files" not in config  # what to read comes from the command line, not the export
    with pytest.raises(ConfigError, match="data.tokens_column is not a setting of the data the model was fine-tuned "
                                          "on .*TextClassificationDataModule.*; its settings: train_files, text_column"):
        inference.new_data_config(meta, current, {"tokens_column"}, "/c")
    with pytest.raises(CheckpointError, match="records no data config"):
        inference.new_data_config({}, current, set(), "/c")


def test_prediction_files(tmp_path):
    from headstart.data.new_rows import NewRows

    rows = NewRows(ids=[0, "b"], files=["f", "g"], shown=[{}, {}])
    preds = [{"label": "a", "probabilities": {"a": 0.75, "b,c": 0.25}},
             {"label": "b,c", "probabilities": {"a": 0.25, "b,c": 0.75}}]
    jsonl, table = inference.write_predictions(tmp_path, inference.prediction_records(rows, preds, False))
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == [
        {"id": 0, **preds[0]}, {"id": "b", **preds[1]}]
    with open(table) as f:
        assert list(csv.DictReader(f)) == [{"id": "0", "label": "a", "prob_a": "0.75", "prob_b,c": "0.25"},
                                           {"id": "b", "label": "b,c", "prob_a": "0.25", "prob_b,c": "0.75"}]
    records = inference.prediction_records(rows, [{"prediction": [1.5, 2.0]}, {"prediction": [0.0, 1.0]}], True)
    _, table = inference.write_predictions(tmp_path, records)
    with open(table) as f:
        assert next(csv.DictReader(f)) == {"id": "0", "file": "f", "prediction_0": "1.5", "prediction_1": "2.0"}


def test_tagged_predictions_name_their_entities(tmp_path, caplog):
    from headstart.data.new_rows import NewRows

    words = ["ada", "lovelace", "met", "charles", "babbage", "in", "london"]
    rows = NewRows(ids=[3], files=["f"], shown=[{"words": words}])
    # max_length cut the row after five words: the last two have no tag.
    tags = ["B-PER", "I-PER", "O", "B-PER", "I-PER"]
    with caplog.at_level("WARNING"):
        [record] = inference.prediction_records(rows, [{"tags": tags, "scores": [0.9] * 5}], False)
    assert record == {"id": 3, "words": words, "tags": [*tags, None, None], "scores": [0.9] * 5 + [None, None],
                      "entities": [{"type": "PER", "start": 0, "end": 2, "text": "ada lovelace"},
                                   {"type": "PER", "start": 3, "end": 5, "text": "charles babbage"}]}
    assert "1 rows have more words than fit in data.max_length" in caplog.text
    _, table = inference.write_predictions(tmp_path, [record])
    with open(table) as f:
        row = next(csv.DictReader(f))
    assert row["tags"] == "B-PER I-PER O B-PER I-PER - -" and row["words"] == " ".join(words)
    assert json.loads(row["entities"])[1]["text"] == "charles babbage"


# -- end to end through train.py -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(corpus_dir, tmp_path_factory, shared_cache) -> Path:
    """A tiny sequence classifier fine-tuned (from scratch) on the topics files, with a test split run."""
    root = tmp_path_factory.mktemp("finetune")
    d = corpus_dir
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        proc = run_train(["experiment=text_classification", "data=text_classification_files",
                          f"data.train_files=[{d / 'cls_train.jsonl'}]", f"data.val_files=[{d / 'cls_val.jsonl'}]",
                          f"data.test_files=[{d / 'cls_test.jsonl'}]", *TINY_MODEL, "logger=csv",
                          "trainer.max_epochs=2", "data.max_length=32", "data.batch_size=16"], root, shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return only_run_dir(root)


# The export loaded as a user would, in a fresh process: the auto class, its tokenizer, softmax.
CHECK = r"""
import json, sys
import torch, transformers
import headstart.hf_models  # registers headstart_head
export, texts = sys.argv[1], json.loads(sys.argv[2])
model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
tok = transformers.AutoTokenizer.from_pretrained(export)
with torch.no_grad():
    logits = model(**tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
print(json.dumps({"probs": logits.softmax(-1).tolist(), "id2label": model.config.id2label}))
"""


def _new_file(path: Path, n: int = 9) -> tuple[Path, list[str]]:
    """A csv of new texts with an id column (a text with a comma in it, quoted)."""
    rng = random.Random(7)
    texts = [make_sentence(rng, topic, n_words=8) for topic in TOPIC_NAMES for _ in range(n // 3)]
    texts[0] = texts[0].replace(" ", ", ", 1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([f"r{i}", t] for i, t in enumerate(texts))
    return path, texts


@pytest.mark.slow
def test_predict_evaluate_and_bad_inputs(finetuned, corpus_dir, tmp_path, shared_cache):
    new, texts = _new_file(tmp_path / "new.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence\nthe cat and the dog\n")
    mlm = make_mlm_export(["the cat and the dog", "a boat and a sail"], TINY_BERT, tmp_path / "mlm" / "export")
    args = {
        # Through the link to the newest run, which the run records as the run it points at.
        "predict": ["mode=predict", f"model.init_from={finetuned.parents[1] / 'latest'}", f"data.predict_files=[{new}]"],
        "evaluate": ["mode=evaluate", f"model.init_from={finetuned / 'export'}",
                     f"data.test_files=[{corpus_dir / 'cls_test.jsonl'}]"],
        "pretraining": ["mode=predict", f"model.init_from={mlm}", f"data.predict_files=[{new}]"],
        "no_text_column": ["mode=predict", f"model.init_from={finetuned}", f"data.predict_files=[{wrong}]"],
        "no_files": ["mode=predict", f"model.init_from={finetuned}"],
    }
    cases = []
    for name, overrides in args.items():
        def case(overrides=overrides, name=name):
            return run_train([*overrides, "logger=none"], tmp_path / "runs" / name, shared_cache)
        case.__name__ = name
        cases.append(case)
    procs = two_at_a_time(lambda case: case(), cases)

    # predict: one row per input row, in order, with the file's ids; the probabilities the export gives.
    assert procs["predict"].returncode == 0, procs["predict"].stderr[-4000:]
    run_dir = only_run_dir(tmp_path / "runs" / "predict")
    predicted = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predicted] == [f"r{i}" for i in range(len(texts))]
    with open(run_dir / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == [p["id"] for p in predicted]
    assert list(table[0]) == ["id", "label", *(f"prob_{name}" for name in TOPIC_NAMES)]
    proc = subprocess.run([sys.executable, "-c", CHECK, str(finetuned / "export"), json.dumps(texts)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(reference["id2label"].values()) == TOPIC_NAMES
    for row, probs, csv_row in zip(predicted, reference["probs"], table, strict=True):
        assert list(row["probabilities"]) == TOPIC_NAMES
        assert torch.allclose(torch.tensor(list(row["probabilities"].values())), torch.tensor(probs), atol=1e-5)
        assert row["label"] == TOPIC_NAMES[max(range(3), key=probs.__getitem__)] == csv_row["label"]
        assert abs(float(csv_row[f"prob_{row['label']}"]) - row["probabilities"][row["label"]]) < 1e-6
    record = json.loads((run_dir / "results.json").read_text())
    assert record["rows"] == len(texts) and record["export_dir"] == str((finetuned / "export").resolve())
    assert OmegaConf.load(run_dir / "config.yaml").model.init_from == str(finetuned.resolve())

    # evaluate: the run's own test metrics (same checkpoint, same file).
    assert procs["evaluate"].returncode == 0, procs["evaluate"].stderr[-4000:]
    evaluated = json.loads((only_run_dir(tmp_path / "runs" / "evaluate") / "results.json").read_text())["metrics"]
    trained = json.loads((finetuned / "results.json").read_text())["metrics"]
    assert {"test/acc", "test/f1", "test/loss"} <= set(evaluated)
    for name in ("test/acc", "test/f1", "test/loss"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-5), name
    assert "test/acc:" in procs["evaluate"].stdout

    assert_user_error(procs["pretraining"], "a backbone without a task head", "Fine-tune it first")
    assert_user_error(procs["no_text_column"], f"{str(wrong)!r} has no column 'text'", "['sentence']")
    assert_user_error(procs["no_files"], "mode=predict needs the rows to label: set data.predict_files=")


@pytest.mark.slow
def test_regression_predictions_are_in_the_data_units(tmp_path, shared_cache):
    """A regression head predicts in the data's units (the export's scaling applied)."""
    rng = random.Random(3)
    d = tmp_path / "data"
    d.mkdir()
    for split, n in (("train", 120), ("val", 30)):
        rows = []
        for _ in range(n):
            topic = rng.choice(TOPIC_NAMES)
            rows.append(json.dumps({"text": make_sentence(rng, topic, 8), "label": 1000.0 + 100 * TOPIC_NAMES.index(topic)}))
        (d / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    write_labeled(d / "new.jsonl", 6, seed=9)  # a label column is ignored by predict
    proc = run_train(["experiment=text_regression", f"data.train_files=[{d / 'train.jsonl'}]",
                      f"data.val_files=[{d / 'val.jsonl'}]", *TINY_MODEL, "logger=none", "trainer.max_epochs=2",
                      "data.max_length=32", "data.batch_size=16", "test_after_fit=false"], tmp_path / "fit", shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run_dir(tmp_path / "fit")
    proc = run_train(["mode=predict", f"model.init_from={run}", f"data.predict_files=[{d / 'new.jsonl'}]",
                      "logger=none"], tmp_path / "predict", shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    predicted = [json.loads(line) for line in
                 (only_run_dir(tmp_path / "predict") / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predicted] == list(range(6))
    assert all(800 < p["prediction"] < 1400 for p in predicted), predicted
