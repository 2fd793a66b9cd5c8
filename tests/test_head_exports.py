"""Exports of downstream heads: every head (sequence classification, token classification, extractive
QA, regression, image classification, each task of a multi-task model) is written as a Hugging Face
directory that its task's auto class loads, with the labels, the processor, a model card, and the same
outputs as headstart's module.

The fast tests go module -> export -> auto class in one process, on every backbone family, with
weights moved off their init so that a wrong mapping shows in the outputs. The slow ones fine-tune
each head through train.py from a tiny MLM pretraining run and load the export in a fresh process,
against headstart's module rebuilt from the run's config and best checkpoint and against
``mode=predict`` on a file of the same inputs; ``mode=evaluate`` gives the runs' own test metrics, and
bad predict commands are refused with one message.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    OFFLINE_ENV,
    TINY_BERT,
    TINY_MODEL,
    TOPICS,
    assert_user_error,
    moved_weights,
    only_run_dir,
    run_train,
    small_tokenizer,
    text_spec,
    two_at_a_time,
    write_labeled,
)
from omegaconf import OmegaConf
from test_heads_qa import best_answer_by_enumeration, write_qa
from test_heads_token_regression import write_counts, write_tagged

from headstart.transfer.export import EXPORT_METADATA, MODEL_CARD, load_module_from_export, read_metadata

TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
TINY_W2V = {"model_type": "headstart_word2vec", "hidden_size": 16}
TINY_VISION = {
    "cnn": {"model_type": "headstart_cnn", "hidden_sizes": [8, 16]},
    "resnet": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
               "layer_type": "basic"},
    "vit": {"model_type": "vit", "patch_size": 4, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32},
}
TAGS = ["O", "B-PER", "I-PER"]
TOPIC_NAMES = sorted(TOPICS)
SEQUENCE = ("AutoModelForSequenceClassification", "headstart.hf_models", "HeadstartForSequenceClassification",
            "text-classification")
TOKEN = ("AutoModelForTokenClassification", None, "BertForTokenClassification", "token-classification")


# -- in process: module -> export -> auto class ---------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


def _text_batch(tokenizer, pairs: bool = False) -> dict[str, torch.Tensor]:
    """Two inputs of different lengths (the shorter padded), as the export's user would make them."""
    if pairs:
        return dict(tokenizer(["what is the capital of peru ?", "capital ?"],
                              ["the capital of peru is lima .", "the capital of france is paris and of spain madrid ."],
                              padding=True, return_tensors="pt"))
    return dict(tokenizer(["the cat and the dog met alice", "boat"], padding=True, return_tensors="pt"))


def _head(kind: str, spec):
    from headstart.heads.question_answering import QuestionAnswering
    from headstart.heads.regression import Regressor
    from headstart.heads.sequence_classification import SequenceClassifier
    from headstart.heads.token_classification import TokenClassifier

    if kind.startswith("sequence"):
        return SequenceClassifier(spec, None, 3, label_names=TOPIC_NAMES, pooling=kind.split("-")[1])
    if kind == "token":
        return TokenClassifier(spec, None, 3, label_names=TAGS)
    if kind == "qa":
        return QuestionAnswering(spec, None)
    return Regressor(spec, None, num_targets=2, target_mean=[3.0, -10.0], target_std=[2.0, 50.0])


def expected_outputs(module, batch: dict[str, torch.Tensor], kind: str) -> tuple[torch.Tensor, ...]:
    """headstart's predictions, written out per head (not through the export code's hf_outputs)."""
    with torch.no_grad():
        if kind == "regression":
            return (module(batch).float() * module.target_std + module.target_mean,)
        out = module(batch)
    return out if kind == "qa" else (out,)


def exported_outputs(model, batch: dict[str, torch.Tensor], kind: str) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = model(**batch)
    return (out.start_logits, out.end_logits) if kind == "qa" else (out.logits,)


def assert_same_outputs(ours, theirs, attention_mask: torch.Tensor | None = None, qa: bool = False) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        if qa:  # headstart masks the padding; the stock model scores it: equal on the real tokens
            real = attention_mask.bool()
            a, b = a[real], b[real]
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), (a - b).abs().max()
        assert a.std() > 1e-3  # outputs that tell inputs apart, so equal values mean equal models


def _load(directory: Path, auto_class: str, module_to_import: str | None):
    import importlib

    import transformers

    meta = read_metadata(directory)
    assert meta["auto_class"] == auto_class and meta["requires_import"] == module_to_import
    if module_to_import:
        importlib.import_module(module_to_import)
    return getattr(transformers, auto_class).from_pretrained(str(directory)).eval()


TEXT_CASES = [  # head, backbone, auto class, import, class
    ("sequence-mean", TINY_BERT, *SEQUENCE[:3]),
    ("sequence-cls", TINY_BERT, *SEQUENCE[:3]),  # BertForSequenceClassification would add a pooler
    ("sequence-last", TINY_GPT2, *SEQUENCE[:3]),  # GPT2ForSequenceClassification's score has no bias
    ("sequence-mean", TINY_W2V, *SEQUENCE[:3]),
    ("token", TINY_BERT, *TOKEN[:3]),
    ("token", TINY_GPT2, "AutoModelForTokenClassification", None, "GPT2ForTokenClassification"),
    ("token", TINY_W2V, "AutoModelForTokenClassification", "headstart.hf_models", "HeadstartForTokenClassification"),
    ("qa", TINY_BERT, "AutoModelForQuestionAnswering", None, "BertForQuestionAnswering"),
    ("qa", TINY_GPT2, "AutoModelForQuestionAnswering", None, "GPT2ForQuestionAnswering"),
    ("qa", TINY_W2V, "AutoModelForQuestionAnswering", "headstart.hf_models", "HeadstartForQuestionAnswering"),
    ("regression", TINY_BERT, *SEQUENCE[:3]),
]


@pytest.mark.parametrize(("kind", "arch", "auto_class", "module_to_import", "model_class"), TEXT_CASES,
                         ids=[f"{c[0]}-{c[1]['model_type']}" for c in TEXT_CASES])
def test_text_head_export_computes_what_the_module_does(kind, arch, auto_class, module_to_import, model_class,
                                                        tokenizer, tmp_path):
    from transformers import AutoTokenizer

    module = moved_weights(_head(kind, text_spec(tokenizer, arch)))
    module.export(str(tmp_path / "export"), tokenizer, {"source_run": "run", "config_hash": "cafe"})
    model = _load(tmp_path / "export", auto_class, module_to_import)
    assert type(model).__name__ == model_class == read_metadata(tmp_path / "export")["model_class"]
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    batch = _text_batch(loaded_tokenizer, pairs=kind == "qa")
    assert batch["input_ids"].tolist() == _text_batch(tokenizer, pairs=kind == "qa")["input_ids"].tolist()
    assert_same_outputs(expected_outputs(module, batch, kind), exported_outputs(model, batch, kind),
                        batch["attention_mask"], qa=kind == "qa")
    if kind.startswith("sequence"):
        assert model.config.id2label == dict(enumerate(TOPIC_NAMES))
        assert model.config.label2id == {name: i for i, name in enumerate(TOPIC_NAMES)}
    elif kind == "token":
        assert model.config.id2label == dict(enumerate(TAGS))
    elif kind == "regression":  # predictions in the data's units, one per target
        assert model.config.problem_type == "regression" and model.config.num_labels == 2
        assert model.config.target_mean == [3.0, -10.0] and model.config.target_std == [2.0, 50.0]


@pytest.mark.parametrize(("name", "model_class"), [("cnn", "HeadstartForSequenceClassification"),
                                                   ("resnet", "ResNetForImageClassification"),
                                                   ("vit", "ViTForImageClassification")])
def test_image_classifier_export_computes_what_the_module_does(name, model_class, tmp_path):
    from headstart.backbones.vision import VisionBackboneSpec
    from headstart.data.vision import ImageProcessor, load_image_processor
    from headstart.heads.image_classification import ImageClassifier

    processor = ImageProcessor(16, 1, [0.5], [0.25])
    spec = VisionBackboneSpec(arch=TINY_VISION[name])
    spec.bind_processor(processor)
    module = ImageClassifier(spec, None, 4, label_names=["zero", "one", "two", "three"])
    gen = torch.Generator().manual_seed(1)
    module.train()
    with torch.no_grad():  # batch norm statistics away from their init, so that they must be exported too
        for _ in range(3):
            module({"pixel_values": torch.randn(8, 1, 16, 16, generator=gen) * 2 + 1})
    moved_weights(module)
    module.export(str(tmp_path / "export"), processor, {})
    module_to_import = "headstart.hf_models" if name == "cnn" else None
    model = _load(tmp_path / "export", "AutoModelForImageClassification", module_to_import)
    assert type(model).__name__ == model_class
    assert model.config.id2label == {0: "zero", 1: "one", 2: "two", 3: "three"}
    assert load_image_processor(tmp_path / "export") == processor
    batch = {"pixel_values": processor(torch.rand(3, 1, 8, 8, generator=gen))}
    with torch.no_grad():
        assert_same_outputs((module(batch),), (model(**batch).logits,))
    assert read_metadata(tmp_path / "export")["pipeline_tag"] == "image-classification"


def _multitask(tokenizer):
    import functools

    from headstart.heads.multitask import MultiTaskModel

    heads = {"topics": {"head": {"_target_": "headstart.heads.sequence_classification.SequenceClassifier",
                                 "pooling": "mean"}, "weight": 1.0},
             "ner": {"head": {"_target_": "headstart.heads.token_classification.TokenClassifier"}, "weight": 0.5}}
    kwargs = {"topics": {"num_labels": 3, "label_names": TOPIC_NAMES}, "ner": {"num_labels": 3, "label_names": TAGS}}
    torch.manual_seed(0)
    model = MultiTaskModel(text_spec(tokenizer, TINY_BERT), functools.partial(torch.optim.AdamW, lr=1e-3), heads,
                           kwargs)
    return moved_weights(model), heads, kwargs


def test_multitask_exports_one_model_per_task(tokenizer, tmp_path):
    model, heads, kwargs = _multitask(tokenizer)
    metrics = {"val/topics/acc": 0.5, "val/ner/f1": 0.75, "test/ner/f1": 0.7, "val/loss": 1.0}
    model.export(str(tmp_path / "export"), tokenizer, {
        "metrics": metrics, "task_config": {"_target_": "headstart.heads.multitask.MultiTaskModel", "tasks": heads},
        "task_kwargs": {"task_kwargs": kwargs}, "data": {"tasks": {"ner": {"examples": {"train": 9}}}}})
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["ner", "topics"]
    batch = _text_batch(tokenizer)
    for name, kind, (auto_class, module_to_import, model_class, _) in (("topics", "sequence-mean", SEQUENCE),
                                                                        ("ner", "token", TOKEN)):
        export = tmp_path / "export" / name
        exported = _load(export, auto_class, module_to_import)
        assert type(exported).__name__ == model_class
        assert_same_outputs(expected_outputs(model.heads[name], batch, kind), exported_outputs(exported, batch, kind))
        meta = read_metadata(export)
        assert meta["task_name"] == name and meta["objective"] == type(model.heads[name]).__name__
        assert meta["task_config"] == heads[name]["head"] and meta["task_kwargs"] == kwargs[name]
        assert meta["multitask"] == {"tasks": ["topics", "ner"], "loss_weights": {"topics": 1.0, "ner": 0.5}}
        # Its own metrics, without the task's name in them; the model's loadable back, as one head.
        assert meta["metrics"] == ({"val/acc": 0.5} if name == "topics" else {"val/f1": 0.75, "test/f1": 0.7})
        assert meta["data"] == ({"examples": {"train": 9}} if name == "ner" else None)
        assert_same_outputs(expected_outputs(load_module_from_export(export), batch, kind),
                            expected_outputs(model.heads[name], batch, kind))


def test_qa_export_tokenizer_gives_the_token_types_training_gave(tokenizer, tmp_path):
    """A QA head reads token types (the context is type 1); a tokenizer trained by headstart does not
    return them by default, so the export's does, and the auto class then computes what headstart's
    module computes on the data module's encoding of the same pair."""
    import transformers

    from headstart.data.question_answering import encode_questions

    module = moved_weights(_head("qa", text_spec(tokenizer, TINY_BERT)))
    assert "token_type_ids" not in tokenizer.model_input_names
    module.export(str(tmp_path / "export"), tokenizer, {"task_kwargs": {}})
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    question, context = "what is the capital of peru ?", "the capital of peru is lima ."
    users = loaded(question, context, return_tensors="pt")
    assert users["token_type_ids"].sum() > 0  # the context is marked
    ours = encode_questions({"question": [question], "context": [context], "answer_texts": [[]], "answer_starts": [[]]},
                            [0], tokenizer, 64, 8, per_example=True)
    assert users["token_type_ids"][0].tolist() == ours["token_type_ids"][0][0]
    model = _load(tmp_path / "export", "AutoModelForQuestionAnswering", None)
    with torch.no_grad():
        out = model(**users)
    assert_same_outputs(expected_outputs(module, dict(users), "qa"), (out.start_logits, out.end_logits),
                        users["attention_mask"], qa=True)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]  # the run's own is left alone


@pytest.mark.parametrize("kind", ["sequence-mean", "token", "regression"])
def test_load_module_from_export(kind, tokenizer, tmp_path):
    """headstart's module back from a head export (its weights, its labels and target scaling)."""
    from hydra.utils import get_class

    module = moved_weights(_head(kind, text_spec(tokenizer, TINY_BERT)))
    target = {"sequence-mean": "headstart.heads.sequence_classification.SequenceClassifier",
              "token": "headstart.heads.token_classification.TokenClassifier",
              "regression": "headstart.heads.regression.Regressor"}[kind]
    task_kwargs = {"regression": {"num_targets": 2, "target_mean": [3.0, -10.0], "target_std": [2.0, 50.0]},
                   "token": {"num_labels": 3, "label_names": TAGS}}.get(kind, {"num_labels": 3,
                                                                                "label_names": TOPIC_NAMES})
    module.export(str(tmp_path / "export"), tokenizer, {"task_config": {"_target_": target}, "task_kwargs": task_kwargs})
    loaded = load_module_from_export(tmp_path / "export")
    assert type(loaded) is get_class(target) and not loaded.training
    batch = _text_batch(tokenizer)
    assert_same_outputs(expected_outputs(loaded, batch, kind), expected_outputs(module, batch, kind))


def test_an_export_that_would_compute_otherwise_is_reported(tokenizer, tmp_path, monkeypatch, caplog):
    """The export checks itself on a probe batch: a head whose computation is not the exported model's
    is not written silently as if it were."""
    from headstart.heads.token_classification import TokenClassifier

    module = moved_weights(_head("token", text_spec(tokenizer, TINY_BERT)))
    monkeypatch.setattr(TokenClassifier, "hf_outputs", lambda self, batch: (self(batch) + 1.0,))
    with caplog.at_level(logging.INFO, logger="headstart.transfer.export"):
        module.export(str(tmp_path / "export"), tokenizer, {})
    assert "BertForTokenClassification does not compute what TokenClassifier does" in caplog.text
    assert "The export of TokenClassifier differs from it on a probe batch" in caplog.text


def test_a_head_export_hands_its_backbone_off(tokenizer, tmp_path):
    """model.init_from=<a fine-tuned model's export> loads its backbone, of a headstart_head model (its
    config.json holds the backbone's) or of a stock one; the old head is ignored."""
    from headstart.transfer.handoff import apply_handoff, read_weights

    for kind, new_kind in (("sequence-mean", "token"), ("token", "sequence-mean")):
        source = moved_weights(_head(kind, text_spec(tokenizer, TINY_BERT)))
        export = tmp_path / kind / "export"
        source.export(str(export), tokenizer, {"source_run": "finetune-run", "config_hash": "beef"})
        target = _head(new_kind, text_spec(tokenizer, TINY_BERT))
        report = apply_handoff(target, str(export.parent))  # the run directory, as a user gives it
        assert report["loaded"] == sorted(target.backbone.state_dict()) and len(report["loaded"]) > 30
        assert report["new"] == ["head.1.bias", "head.1.weight"]
        assert report["ignored"] == ["classifier.bias", "classifier.weight"]
        assert (report["source_run"], report["source_config_hash"]) == ("finetune-run", "beef")
        weights = read_weights(export)
        for key, value in target.backbone.state_dict().items():
            assert torch.equal(value, source.backbone.state_dict()[key]) and torch.equal(value, weights[f"bert.{key}"])


def test_exported_checkpoint_is_the_best_for_a_head(tokenizer, tmp_path):
    """After fit the module holds the last weights (the best only if the test split ran on them): a head
    is given the best checkpoint's before its export; a pretraining export keeps what it holds."""
    from headstart.objectives.masked_lm import MaskedLanguageModeling
    from headstart.pipeline.stage import _exported_checkpoint

    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}}, last)
    head = moved_weights(_head("sequence-mean", text_spec(tokenizer, TINY_BERT)), seed=1)
    best_state = {k: v.clone() for k, v in moved_weights(_head("sequence-mean", text_spec(tokenizer, TINY_BERT)),
                                                  seed=2).state_dict().items()}
    best = tmp_path / "checkpoints" / "epoch001-step8.ckpt"
    torch.save({"state_dict": best_state}, best)
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(monitor="val/acc", best_model_path=str(best)))
    # test_after_fit=false: no test, so nothing recorded and the weights are the last ones.
    assert _exported_checkpoint(trainer, head, tmp_path, {"metrics_source": {"val": "last"}}) == (
        str(best.resolve()), "best")
    assert all(torch.equal(v, best_state[k]) for k, v in head.state_dict().items())

    pretraining = MaskedLanguageModeling(text_spec(tokenizer, TINY_BERT), optimizer=None)
    before = {k: v.clone() for k, v in pretraining.state_dict().items()}
    no_monitor = SimpleNamespace(checkpoint_callback=SimpleNamespace(monitor=None, best_model_path=str(best)))
    assert _exported_checkpoint(no_monitor, pretraining, tmp_path, {"metrics_source": {}}) == (
        str(last.resolve()), "last")
    assert all(torch.equal(v, before[k]) for k, v in pretraining.state_dict().items())
    tested = {"metrics_source": {"test": "best", "checkpoint": str(best)}}  # Lightning loaded it for the test
    assert _exported_checkpoint(no_monitor, pretraining, tmp_path, tested) == (str(best.resolve()), "best")


def test_model_card(tokenizer, tmp_path):
    from conftest import make_mlm_export

    # A pretraining export has one too.
    pretraining = make_mlm_export(["the cat and the dog"], TINY_BERT, tmp_path / "mlm" / "export")
    card = (pretraining / MODEL_CARD).read_text()
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- headstart\n- MaskedLanguageModeling\n"
                           "pipeline_tag: fill-mask\n---\n")
    assert "AutoModel.from_pretrained" in card and "import headstart" not in card
    assert read_metadata(pretraining)["export_kind"] == "backbone"

    module = moved_weights(_head("sequence-mean", text_spec(tokenizer, TINY_BERT)))
    lineage = {"path": str(pretraining), "config_hash": "feed", "config_sha256": "0abc", "objective": "MLM",
               "loaded": "backbone"}
    module.export(str(tmp_path / "export"), tokenizer, {
        "source_run": "/runs/finetune", "config_hash": "cafe", "checkpoint": "/runs/finetune/checkpoints/e1.ckpt",
        "checkpoint_kind": "best", "init_from": lineage, "command": "train.py experiment=text_classification",
        "metrics": {"val/acc": 0.75, "test/acc": 0.5, "test/f1": 0.25},
        "data": {"builtin": None, "files": {"train": ["a.jsonl"], "test": ["c.jsonl"]},
                 "examples": {"train": 100, "validation": 20, "test": 30}},
        "task_kwargs": {"label_names": TOPIC_NAMES}})
    card = (tmp_path / "export" / MODEL_CARD).read_text()
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- headstart\n- SequenceClassifier\n"
                           "pipeline_tag: text-classification\n---\n")
    for text in ("import headstart.hf_models", "AutoModelForSequenceClassification.from_pretrained",
                 "Labels (3): `animals`, `cooking`, `sailing`", "- Source run: /runs/finetune",
                 "the checkpoint best on validation (`/runs/finetune/checkpoints/e1.ckpt`)",
                 f"- Started from: `{pretraining}` (config hash feed, config.json sha256 0abc, objective MLM)",
                 "- Command: `train.py experiment=text_classification`",
                 "| train | `a.jsonl` | 100 |", "| validation | - | 20 |", "| test | `c.jsonl` | 30 |",
                 "| acc | 0.75 | 0.5 |", "| f1 | - | 0.25 |"):
        assert text in card, (text, card)
    assert json.loads((tmp_path / "export" / EXPORT_METADATA).read_text())["init_from"] == lineage


# -- end to end: train.py fine-tunes each head from a tiny MLM pretraining run ---------------------------
QA = ("AutoModelForQuestionAnswering", None, "BertForQuestionAnswering", "question-answering")
IMAGE = ("AutoModelForImageClassification", "headstart.hf_models", "HeadstartForSequenceClassification",
         "image-classification")
# case: (run, export subdirectory, head kind, (auto class, import, class, pipeline tag))
CASES = {
    "sequence": ("sequence", "", "sequence-mean", SEQUENCE),
    "token": ("token", "", "token", TOKEN),
    "qa": ("qa", "", "qa", QA),
    "regression": ("regression", "", "regression", SEQUENCE),
    "image": ("image", "", "image", IMAGE),
    "multitask-ner": ("multitask", "ner", "token", TOKEN),
    "multitask-topics": ("multitask", "topics", "sequence-mean", SEQUENCE),
}
MULTITASK = """# @package _global_
defaults:
  - /data/token_classification_files@data.tasks.ner
  - /task/token_classification@task.tasks.ner.head
  - /data/text_classification_files@data.tasks.topics
  - /task/sequence_classification@task.tasks.topics.head
  - override /data: multitask
  - override /model: bert_tiny
  - override /task: multitask
data:
  tasks:
    ner: {{train_files: ["{d}/ner_train.jsonl"], val_files: ["{d}/ner_val.jsonl"], test_files: ["{d}/ner_test.jsonl"],
           max_length: 32, batch_size: 16}}
    topics: {{train_files: ["{d}/topics_train.jsonl"], val_files: ["{d}/topics_val.jsonl"],
              test_files: ["{d}/topics_test.jsonl"], max_length: 32, batch_size: 16}}
task:
  tasks:
    ner: {{weight: 1.0}}
    topics: {{weight: 0.5}}
  optimizer: {{lr: 3.0e-3}}
"""


@pytest.fixture(scope="module")
def head_data(tmp_path_factory) -> Path:
    """Every head's train/val/test files, a multi-task experiment on two of them, and a pretraining
    corpus of all their text."""
    d = tmp_path_factory.mktemp("head_data")
    for split, rows, seed in (("train", 160, 0), ("val", 40, 1), ("test", 40, 2)):
        write_tagged(d / f"ner_{split}.jsonl", rows, seed)
        write_counts(d / f"count_{split}.jsonl", rows, seed + 10)
        write_labeled(d / f"topics_{split}.jsonl", rows, seed + 20)
        write_qa(d / f"qa_{split}.jsonl", rows, seed + 30)
    (d / "conf" / "experiment").mkdir(parents=True)
    (d / "conf" / "experiment" / "my_multitask.yaml").write_text(MULTITASK.format(d=d))
    lines = [" ".join(row["tokens"]) for row in _rows(d / "ner_train.jsonl")]
    lines += [row["text"] for name in ("count", "topics") for row in _rows(d / f"{name}_train.jsonl")]
    lines += [f"{row['question']} {row['context']}" for row in _rows(d / "qa_train.jsonl")]
    (d / "corpus.txt").write_text("\n".join(lines) + "\n")
    return d


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(d: Path, name: str) -> list[str]:
    return [f"data.{key}_files=[{d / f'{name}_{split}.jsonl'}]" for key, split in
            (("train", "train"), ("val", "val"), ("test", "test"))]


@pytest.fixture(scope="module")
def mlm_run(head_data, tmp_path_factory, shared_cache) -> Path:
    root = tmp_path_factory.mktemp("mlm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        proc = run_train(["experiment=text_mlm", "data=text_files", f"data.train_files=[{head_data / 'corpus.txt'}]",
                          *TINY_MODEL, "logger=csv", "trainer.max_epochs=1", "data.max_length=48"], root, shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [results] = root.glob("outputs/*/*/results.json")
    return results.parent


@pytest.fixture(scope="module")
def head_runs(head_data, mlm_run, tmp_path_factory, shared_cache) -> dict[str, Path]:
    """One fine-tuning run of each head (and of a two-task model) from the MLM run, two at a time."""
    d, base = head_data, tmp_path_factory.mktemp("heads")
    text = [*TINY_MODEL, "logger=csv", "trainer.max_epochs=2", "data.batch_size=16", f"model.init_from={mlm_run}"]
    args = {
        "sequence": ["experiment=text_classification", "data=text_classification_files", *_files(d, "topics"),
                     "data.max_length=32", *text],
        "token": ["experiment=text_token_classification", *_files(d, "ner"), "data.max_length=32", *text],
        "qa": ["experiment=text_question_answering", *_files(d, "qa"), "data.max_length=48", "data.doc_stride=16",
               *text],
        # No test split run: the module holds the last weights when the export is written.
        "regression": ["experiment=text_regression", *_files(d, "count"), "data.max_length=32", "test_after_fit=false",
                       *text],
        "image": ["experiment=vision_classification", "model.arch.hidden_sizes=[8,16]", "logger=csv",
                  "trainer.max_epochs=2"],
        "multitask": [f"hydra.searchpath=[file://{d / 'conf'}]", "experiment=my_multitask", "logger=csv",
                      "trainer.max_epochs=2", f"model.init_from={mlm_run}",
                      *[f"model.arch.{k}={v}" for k, v in TINY_BERT.items() if k != "model_type"]],
    }
    cases = []
    for name, overrides in args.items():
        def case(overrides=overrides, name=name):
            return run_train(overrides, base / name, shared_cache)
        case.__name__ = name
        cases.append(case)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        procs = two_at_a_time(lambda case: case(), cases)
    runs = {}
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, proc.stderr[-4000:])
        [results] = (base / name).glob("outputs/*/*/results.json")
        runs[name] = results.parent
    return runs


# Run in a fresh process: the export loaded as a user would, with transformers' auto class (after the
# import the test names), its tokenizer or image processor, and outputs on the given inputs. Questions
# are split into overlapping windows as transformers' run_qa.py does, with each token's character span.
CHECK = r"""
import importlib, json, sys
import torch, transformers
from safetensors.torch import save_file

export, auto_class, module_to_import, inputs, out_file = sys.argv[1:]
if module_to_import:
    importlib.import_module(module_to_import)
model = getattr(transformers, auto_class).from_pretrained(export).eval()
inputs = json.loads(inputs)
extra = {}
if "images" in inputs:
    from headstart.data.vision import load_image_processor
    processor = load_image_processor(export)
    batch = {"pixel_values": processor(torch.tensor(inputs["images"]))}
else:
    processor = transformers.AutoTokenizer.from_pretrained(export)
    if "questions" in inputs:
        enc = processor(inputs["questions"], inputs["contexts"], truncation="only_second", max_length=inputs["max_length"],
                        stride=inputs["stride"], return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding=True, return_tensors="pt")
        context = torch.tensor([[s == 1 for s in enc.sequence_ids(w)] for w in range(len(enc["input_ids"]))])
        extra = {"offsets": enc.pop("offset_mapping").masked_fill(~context[..., None], -1),
                 "window_example": enc.pop("overflow_to_sample_mapping")}
        batch = dict(enc)
    elif "words" in inputs:
        enc = processor(inputs["words"], is_split_into_words=True, padding=True, truncation=True, max_length=32,
                        return_tensors="pt")
        extra = {"word_ids": torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)]
                                           for i in range(len(inputs["words"]))])}
        batch = dict(enc)
    else:
        batch = dict(processor(inputs["texts"], padding=True, truncation=True, max_length=32, return_tensors="pt"))
with torch.no_grad():
    out = model(**batch)
save_file({**batch, **extra, **{k: v.contiguous() for k, v in out.items() if k.endswith("logits")}}, out_file)
print(json.dumps({"class": type(model).__name__, "id2label": model.config.id2label, "processor": type(processor).__name__,
                  "problem_type": model.config.problem_type, "headstart": sorted(m for m in sys.modules if "headstart" in m)}))
"""
EXTRA_KEYS = ("offsets", "window_example", "word_ids")
N_NEW = 6  # rows of each head's new file


def _png(path: Path, pixels: torch.Tensor) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(0).numpy(), mode="L").save(path)


def new_inputs(kind: str, d: Path, run: str, directory: Path) -> tuple[Path, dict]:
    """A file (a folder of images) of new inputs for mode=predict, and the same inputs for CHECK."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "image":
        pixels = torch.randint(0, 256, (N_NEW, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        for i, image in enumerate(pixels):
            _png(directory / "images" / f"{i}.png", image)
        return directory / "images", {"images": (pixels.float() / 255).tolist()}
    name = {"qa": "qa", "token": "ner", "regression": "count"}.get(kind, "topics")
    rows = [{k: v for k, v in row.items() if k not in ("tags", "label", "answers")}
            for row in _rows(d / f"{name}_test.jsonl")[-N_NEW:]]
    path = directory / "new.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if kind == "qa":
        return path, {"questions": [r["question"] for r in rows], "contexts": [r["context"] for r in rows],
                      "max_length": 48, "stride": 16}
    if kind == "token":
        return path, {"words": [r["tokens"] for r in rows]}
    return path, {"texts": [r["text"] for r in rows]}


@pytest.fixture(scope="module")
def head_predictions(head_runs, head_data, mlm_run, tmp_path_factory, shared_cache) -> dict[str, tuple]:
    """Through train.py, two at a time: mode=predict with each case's export on a new file of its inputs,
    mode=evaluate of the classifier's, tagger's and QA model's runs on their test files, and three
    predict commands to refuse. ``{job: (the inputs, for CHECK; the run directory, or the process)}``."""
    base = tmp_path_factory.mktemp("predict")
    inputs, jobs = {}, {}
    for case, (run, task, kind, _) in CASES.items():
        export = head_runs[run] / "export" / task if task else head_runs[run] / "export"
        path, inputs[case] = new_inputs(kind, head_data, run, base / "data" / case)
        jobs[case] = ["mode=predict", f"model.init_from={export}", f"data.predict_files=[{path}]"]
    # The sequence classifier through outputs/latest, its run's newest-run link (not its export).
    jobs["sequence"][1] = f"model.init_from={head_runs['sequence'].parents[1] / 'latest'}"
    for run, name, given in (("sequence", "topics", ""), ("token", "ner", "export"), ("qa", "qa", "")):  # run or export
        jobs[f"evaluate-{run}"] = ["mode=evaluate", f"model.init_from={head_runs[run] / given}",
                                   f"data.test_files=[{head_data / f'{name}_test.jsonl'}]"]
    wrong = base / "data" / "wrong.csv"
    wrong.write_text("sentence\nthe cat and the dog\n")
    jobs.update({
        "refuse-pretraining": ["mode=predict", f"model.init_from={mlm_run}", f"data.predict_files=[{wrong}]"],
        "refuse-column": ["mode=predict", f"model.init_from={head_runs['sequence']}", f"data.predict_files=[{wrong}]"],
        "refuse-no-files": ["mode=predict", f"model.init_from={head_runs['sequence']}"],
    })
    cases = []
    for name, overrides in jobs.items():
        def job(overrides=overrides, name=name):
            return run_train([*overrides, "logger=none"], base / name, shared_cache)
        job.__name__ = name
        cases.append(job)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        procs = two_at_a_time(lambda job: job(), cases)
    for name, proc in procs.items():
        if not name.startswith("refuse"):
            assert proc.returncode == 0, (name, proc.stderr[-4000:])
    return {name: (inputs.get(name), procs[name] if name.startswith("refuse") else only_run_dir(base / name))
            for name in jobs}


def assert_predictions_match(kind: str, predicted: list[dict], out: dict[str, torch.Tensor], id2label: dict,
                             task_config: dict) -> None:
    """mode=predict's records against what the auto class computed on the same inputs."""
    assert len(predicted) == N_NEW
    if kind == "qa":
        for e, record in enumerate(predicted):
            windows = out["window_example"] == e
            begin, stop = best_answer_by_enumeration(out["start_logits"][windows], out["end_logits"][windows],
                                       out["offsets"][windows], task_config.get("n_best", 20),
                                       task_config.get("max_answer_length", 30))
            assert (record["start"], record["end"]) == (begin, stop), e
        return
    if kind == "regression":
        assert torch.allclose(torch.tensor([r["prediction"] for r in predicted]), out["logits"][:, 0], atol=1e-4)
        return
    probabilities = out["logits"].float().softmax(-1)
    if kind == "token":
        for i, record in enumerate(predicted):
            words = out["word_ids"][i].tolist()
            first = [t for t, w in enumerate(words) if w >= 0 and (t == 0 or words[t - 1] != w)]
            tags = [id2label[str(int(probabilities[i, t].argmax()))] for t in first]
            assert record["tags"][:len(tags)] == tags and set(record["tags"][len(tags):]) <= {None}
            assert record["scores"][:len(tags)] == pytest.approx([float(probabilities[i, t].max()) for t in first],
                                                                 abs=1e-5)
        return
    for record, reference in zip(predicted, probabilities, strict=True):
        assert list(record["probabilities"]) == list(id2label.values())
        assert torch.allclose(torch.tensor(list(record["probabilities"].values())), reference, atol=1e-5)
        assert record["label"] == id2label[str(int(reference.argmax()))]


def in_fresh_process(export: Path, auto_class: str, module_to_import: str | None, inputs: dict,
                     out_file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    import os

    from safetensors.torch import load_file

    proc = subprocess.run([sys.executable, "-c", CHECK, str(export), auto_class, module_to_import or "",
                           json.dumps(inputs), str(out_file)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **OFFLINE_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), load_file(str(out_file))


def module_from_checkpoint(run_dir: Path, checkpoint: Path, task_kwargs: dict):
    """headstart's module as the run built it (its config.yaml, tokenizer or processor, the data's
    task kwargs) with the checkpoint's weights: independent of the export code."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from headstart.data.tokenizer import load_tokenizer
    from headstart.data.vision import load_image_processor

    cfg = OmegaConf.load(run_dir / "config.yaml")
    spec = instantiate(cfg.model)
    if (run_dir / "processor").is_dir():
        spec.bind_processor(load_image_processor(run_dir / "processor"))
    else:
        spec.bind_tokenizer(load_tokenizer(str(run_dir / "tokenizer")))
    module = instantiate(cfg.task, backbone=spec, **task_kwargs, _convert_="all")
    module.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    return module.eval()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_fine_tuned_head_exports_for_its_auto_class(case, head_runs, head_predictions, mlm_run, head_data, tmp_path):
    run, task, kind, (auto_class, module_to_import, model_class, pipeline_tag) = CASES[case]
    run_dir = head_runs[run]
    export = run_dir / "export" / task if task else run_dir / "export"
    meta, results = read_metadata(export), json.loads((run_dir / "results.json").read_text())
    assert results["exports"][task] == str(export.resolve()) and meta["export_kind"] == "head"
    assert meta.get("task_name") == (task or None)
    # The weights are the best checkpoint's (save_top_k=1: the one checkpoint besides last.ckpt) ...
    [best] = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert (meta["checkpoint"], meta["checkpoint_kind"]) == (str(best.resolve()), "best")
    # ... and the export started from the MLM run's export, whose hashes it names.
    card = (export / MODEL_CARD).read_text()
    command = meta["command"].split()  # the run's sys.argv
    assert command[0].endswith("train.py") and next(a for a in command if a.startswith("experiment=")) in card
    assert card.startswith(f"---\nlibrary_name: transformers\ntags:\n- headstart\n- {meta['objective']}\n"
                           f"pipeline_tag: {pipeline_tag}\n---\n")
    if run == "image":
        assert meta["init_from"] is None and "random initialisation" in card
    else:
        mlm_export = mlm_run / "export"
        mlm_meta, mlm_results = read_metadata(mlm_export), json.loads((mlm_run / "results.json").read_text())
        assert meta["init_from"] == {"path": str(mlm_export.resolve()), "config_hash": mlm_results["config_hash"],
                                     "config_sha256": mlm_meta["config_sha256"], "source_run": str(mlm_run.resolve()),
                                     "objective": "MaskedLanguageModeling", "loaded": "backbone"}
        assert (f"- Started from: `{mlm_export.resolve()}` (config hash {mlm_results['config_hash']}, config.json "
                f"sha256 {mlm_meta['config_sha256']}, objective MaskedLanguageModeling)") in card
    examples = meta["data"]["examples"]
    assert examples["train"] == (results["train_examples"] if run != "multitask" else 160)
    assert f"| train | `{head_data}/" in card or run == "image"
    monitor = results["monitor"]["metric"]
    metric = monitor.split("/")[-1]
    val = results["metrics"][monitor if run != "multitask" else f"val/{task}/{metric}"]
    assert meta["metrics"][f"val/{metric}"] == val and f"| {metric} | {val:.4g} |" in card
    assert ("test/loss" in meta["metrics"]) == (run != "regression")

    inputs, predict_run = head_predictions[case]
    info, out = in_fresh_process(export, auto_class, module_to_import, inputs, tmp_path / "out.safetensors")
    assert info["class"] == model_class == meta["model_class"]
    if module_to_import is None:  # a stock model: transformers alone loads it
        assert info["headstart"] == [] and info["processor"] != "ImageProcessor"
    labels = meta["task_kwargs"].get("label_names")
    if kind == "regression":
        assert info["problem_type"] == "regression" and labels is None
    elif kind != "qa":
        expected = {"image": [str(i) for i in range(10)],
                    "token": ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]}.get(kind, TOPIC_NAMES)
        assert labels == expected and info["id2label"] == {str(i): name for i, name in enumerate(expected)}
    batch = {k: v for k, v in out.items() if not k.endswith("logits") and k not in EXTRA_KEYS}
    exported = (out["start_logits"], out["end_logits"]) if kind == "qa" else (out["logits"],)

    task_kwargs = meta["task_kwargs"]
    if run == "multitask":
        task_kwargs = {"task_kwargs": {name: read_metadata(run_dir / "export" / name)["task_kwargs"]
                                       for name in ("ner", "topics")}}
    module = module_from_checkpoint(run_dir, best, task_kwargs)
    module = module.heads[task] if task else module
    assert_same_outputs(expected_outputs(module, batch, kind), exported, batch.get("attention_mask"), qa=kind == "qa")
    assert_same_outputs(expected_outputs(load_module_from_export(export), batch, kind), exported,
                        batch.get("attention_mask"), qa=kind == "qa")

    # mode=predict on a file of the same inputs: the same predictions as the auto class.
    predicted = [json.loads(line) for line in (predict_run / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in predicted] == ([f"{i}.png" for i in range(N_NEW)] if kind == "image" else
                                            list(range(N_NEW)))
    with open(predict_run / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["id"] for row in table] == [str(r["id"]) for r in predicted]
    if kind == "sequence-mean":
        assert list(table[0]) == ["id", "label", *(f"prob_{name}" for name in TOPIC_NAMES)]
        assert [row["label"] for row in table] == [r["label"] for r in predicted]
    record = json.loads((predict_run / "results.json").read_text())
    assert record["rows"] == N_NEW and record["export_dir"] == str(export.resolve())
    if case == "sequence":  # given as outputs/latest: recorded as the run the link pointed at
        assert OmegaConf.load(predict_run / "config.yaml").model.init_from == str(run_dir.resolve())
    assert_predictions_match(kind.split("-")[0], predicted, out, info["id2label"], meta["task_config"])


@pytest.mark.slow
@pytest.mark.parametrize("run", ["sequence", "token", "qa"])
def test_evaluate_gives_the_runs_own_test_metrics(run, head_runs, head_predictions):
    """mode=evaluate of a fine-tuned run on its test file: the metrics its own test split got (the same
    checkpoint, read by the same data module)."""
    trained = json.loads((head_runs[run] / "results.json").read_text())["metrics"]
    evaluated = json.loads((head_predictions[f"evaluate-{run}"][1] / "results.json").read_text())["metrics"]
    names = {"sequence": ("test/acc", "test/f1", "test/loss"), "token": ("test/acc", "test/f1", "test/loss"),
             "qa": ("test/exact_match", "test/f1", "test/loss")}[run]
    assert set(names) <= set(evaluated)
    for name in names:
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-5), name


@pytest.mark.slow
def test_predict_refuses_bad_inputs_with_one_message(head_predictions, head_runs):
    assert_user_error(head_predictions["refuse-pretraining"][1], "a backbone without a task head", "Fine-tune it first")
    assert_user_error(head_predictions["refuse-column"][1], "wrong.csv' has no column 'text'",
                      "(its columns: ['sentence'])", "data.text_column=<its name>")
    assert_user_error(head_predictions["refuse-no-files"][1], "mode=predict needs the rows to label: set "
                      "data.predict_files=")


@pytest.mark.slow
def test_pretraining_run_export_has_a_card_and_its_lineage(mlm_run, head_data, head_runs):
    """The MLM run's export: unchanged for the hand-off (it loaded above), now with a model card; and a
    fine-tuned run's directory is itself a model.init_from source."""
    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.tokenizer import load_tokenizer
    from headstart.transfer.handoff import apply_handoff, read_weights

    export = mlm_run / "export"
    meta, results = read_metadata(export), json.loads((mlm_run / "results.json").read_text())
    assert meta["export_kind"] == "backbone" and meta["auto_class"] == "AutoModel" and meta["init_from"] is None
    assert meta["checkpoint_kind"] in ("best", "last") and meta["data"]["examples"]["train"] > 0
    card = (export / MODEL_CARD).read_text()
    assert "pipeline_tag: fill-mask" in card and f"| train | `{head_data / 'corpus.txt'}` |" in card
    assert f"- Config hash: {results['config_hash']}" in card and "val/" not in card

    finetune = head_runs["sequence"]
    spec = TextBackboneSpec(arch=TINY_BERT)
    spec.bind_tokenizer(load_tokenizer(str(finetune / "export")))
    tagger = _head("token", spec)
    report = apply_handoff(tagger, str(finetune))
    assert report["loaded"] == sorted(tagger.backbone.state_dict()) and report["source_objective"] == "SequenceClassifier"
    weights = read_weights(finetune / "export")
    for key, value in tagger.backbone.state_dict().items():
        assert torch.equal(value, weights[f"bert.{key}"]), key
