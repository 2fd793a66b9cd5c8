"""mode=predict and mode=evaluate: a fine-tuned model used without training it.

These fast tests check the pieces: mode values, the export refused or found, the data module's
config, the prediction files. How each data module reads new rows and each head decodes them:
``test_new_rows.py``. Through train.py, for every head (predict against transformers' auto class in a
fresh process, evaluate against the run's own test metrics, bad inputs refused): ``test_head_exports.py``.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import (
    TINY_BERT,
    TOPICS,
    make_mlm_export,
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
