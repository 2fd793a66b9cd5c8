"""word2vec and knowledge distillation end to end through train.py: the losses fall, the exports
hand off (word2vec also into a BERT's word embeddings alone), distillation uses the teacher's tokenizer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, TOPICS, assert_user_error, only_run_dir, run_train

from headstart.transfer.handoff import apply_handoff

pytestmark = pytest.mark.slow


def _data(corpus: Path) -> list[str]:
    return ["data=text_files", f"data.train_files=[{corpus / 'train.txt'}]", f"data.val_files=[{corpus / 'val.txt'}]",
            "data.max_length=32", "data.vocab_size=300", "data.batch_size=16", "logger=csv"]


def _classification_data(corpus: Path) -> list[str]:
    return ["experiment=text_classification", "data=text_classification_files", "data.max_length=32",
            f"data.train_files=[{corpus / 'cls_train.jsonl'}]", f"data.val_files=[{corpus / 'cls_val.jsonl'}]",
            f"data.test_files=[{corpus / 'cls_test.jsonl'}]", "logger=csv"]


def _trained(args: list[str], root: Path, cache: Path) -> Path:
    proc = run_train(args, root, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(root)
    (run_dir / "stdout.txt").write_text(proc.stdout)
    return run_dir


def _tiny_bert_classifier(tokenizer_dir: Path, **arch):
    """In process, the classifier a finetune run with TINY_MODEL builds (with ``arch`` changes)."""
    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.tokenizer import load_tokenizer
    from headstart.heads.sequence_classification import SequenceClassifier

    tiny = {a.split("=")[0].split(".")[-1]: int(a.split("=")[1]) for a in TINY_MODEL}
    spec = TextBackboneSpec(arch={"model_type": "bert", **tiny, **arch})
    spec.bind_tokenizer(load_tokenizer(str(tokenizer_dir)))
    return SequenceClassifier(spec, optimizer=torch.optim.AdamW, num_labels=3)


def _epoch_values(run_dir: Path, name: str) -> list[float]:
    """One value a logged epoch, in order (training: the ``_epoch`` mean)."""
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    key = f"{name}_epoch" if name.startswith("train/") else name
    return [float(r[key]) for r in rows if r.get(key)]


def _first_step_value(run_dir: Path, name: str) -> float:
    """The first logged training-step value (step 10, the first ``log_every_n_steps``)."""
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return next(float(r[f"{name}_step"]) for r in rows if r.get(f"{name}_step"))


# -- word2vec -----------------------------------------------------------------------------------


def _word2vec(root: Path, corpus: Path, cache: Path, mode: str) -> Path:
    return _trained(["experiment=text_word2vec", *_data(corpus), "data.packing=lines", "model.arch.hidden_size=32",
                     f"task.mode={mode}", "task.optimizer.lr=3e-2", "trainer.max_epochs=5"], root, cache)


@pytest.fixture(scope="module")
def word2vec_run(tmp_path_factory, corpus_dir, shared_cache) -> Path:
    return _word2vec(tmp_path_factory.mktemp("w2v"), corpus_dir, shared_cache, "skipgram")


def assert_word2vec_learned(run_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    import headstart.backbones.word2vec  # noqa: F401 - registers the model type with AutoModel

    train, val, auc = (_epoch_values(run_dir, k) for k in ("train/loss", "val/loss", "val/auc"))
    assert len(train) == 5
    # Zero-initialised output vectors start every score at 0, the loss at (k + 1) log 2 = 4.16 (about
    # 4.0 at the first logged step); the first validation comes after an epoch of training.
    first = _first_step_value(run_dir, "train/loss")
    assert first > 3.8 and train[-1] < 0.75 * first, (first, train)
    assert val[-1] < val[0] - 0.15, val
    assert auc[-1] > 0.6, auc  # true context words outscore noise words (0.5: chance)

    export = run_dir / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "headstart_word2vec"
    net, tokenizer = AutoModel.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    vectors = torch.nn.functional.normalize(net.get_input_embeddings().weight, dim=-1)
    topic_ids = [tokenizer.convert_tokens_to_ids(words) for words in TOPICS.values()]
    similarity = vectors @ vectors.T
    same = torch.stack([similarity[i, j] for ids in topic_ids for i in ids for j in ids if i != j]).mean()
    other = torch.stack([similarity[i, j] for a in topic_ids for b in topic_ids if a is not b
                         for i in a for j in b]).mean()
    assert same > other + 0.3, (same, other)  # words of a topic share contexts, so their vectors align


def test_skipgram_loss_falls_and_topic_words_cluster(word2vec_run):
    assert_word2vec_learned(word2vec_run)


def test_cbow_loss_falls_and_topic_words_cluster(tmp_path, corpus_dir, shared_cache):
    assert_word2vec_learned(_word2vec(tmp_path, corpus_dir, shared_cache, "cbow"))


def test_word2vec_export_hands_off_to_a_bag_of_embeddings_classifier(word2vec_run, tmp_path, corpus_dir):
    run_dir = _trained([*_classification_data(corpus_dir), "model=word2vec", "model.arch.hidden_size=32",
                        f"model.init_from={word2vec_run}", "task.optimizer.lr=1e-2", "trainer.max_epochs=3"],
                       tmp_path, None)
    report = json.loads((run_dir / "handoff_report.json").read_text())
    assert report["scope"] == "backbone"
    assert report["loaded"] == ["embeddings.weight"]  # every key of the word2vec backbone
    assert report["new"] and all(k.startswith("head.") for k in report["new"])
    assert "Training a wordpiece tokenizer" not in (run_dir / "stdout.txt").read_text()  # the export's tokenizer
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] > 0.6  # three balanced topics: chance is 1/3


def test_word2vec_embeddings_initialise_a_bert_classifier(word2vec_run, tmp_path, corpus_dir):
    from safetensors.torch import load_file

    run_dir = _trained([*_classification_data(corpus_dir), *TINY_MODEL, f"model.init_from={word2vec_run}",
                        "model.init_scope=embeddings", "trainer.max_epochs=1", "trainer.limit_train_batches=1"],
                       tmp_path, None)
    report = json.loads((run_dir / "handoff_report.json").read_text())
    assert report["scope"] == "embeddings"
    assert report["loaded"] == ["embeddings.word_embeddings.weight"]
    assert "net.encoder.layer.1.output.dense.weight" in report["new"] and "head.1.weight" in report["new"]
    assert "net.embeddings.word_embeddings.weight" not in report["new"]
    assert "Training a wordpiece tokenizer" not in (run_dir / "stdout.txt").read_text()

    # The loaded matrix, bit for bit: the same hand-off in process on the classifier the run built.
    clf = _tiny_bert_classifier(run_dir / "tokenizer")
    apply_handoff(clf, str(word2vec_run), scope="embeddings")
    exported = load_file(word2vec_run / "export" / "model.safetensors")["embeddings.weight"]
    loaded = clf.backbone.get_input_embeddings().weight
    assert torch.equal(loaded.view(torch.int32), exported.view(torch.int32))


# -- distillation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, corpus_dir, shared_cache) -> Path:
    return _trained(["experiment=text_mlm", *_data(corpus_dir), *TINY_MODEL, "task.optimizer.lr=5e-3",
                     "trainer.max_epochs=4"], tmp_path_factory.mktemp("teacher"), shared_cache)


@pytest.fixture(scope="module")
def student_run(teacher_run, tmp_path_factory, corpus_dir, shared_cache) -> Path:
    # No data.vocab_size and no data.tokenizer: the data takes the teacher's tokenizer.
    data = [a for a in _data(corpus_dir) if not a.startswith("data.vocab_size")]
    return _trained(["experiment=text_distillation", f"task.teacher={teacher_run}", *data, *TINY_MODEL,
                     "model.arch.num_hidden_layers=1", "task.optimizer.lr=5e-3", "trainer.max_epochs=3"],
                    tmp_path_factory.mktemp("student"), shared_cache)


def test_distillation_losses_fall(student_run):
    distill, hard = _epoch_values(student_run, "train/distill_loss"), _epoch_values(student_run, "train/mlm_loss")
    assert len(distill) == 3
    assert distill[-1] < 0.2 * distill[0], distill  # the student learns the teacher's distribution
    assert hard[-1] < 0.85 * hard[0], hard  # and, through it and the labels, the masked tokens
    val_hard = _epoch_values(student_run, "val/mlm_loss")
    assert val_hard[-1] < 0.95 * val_hard[0], val_hard


def test_student_uses_the_teacher_tokenizer_and_exports_alone(student_run, teacher_run):
    from safetensors.torch import load_file

    assert "Training a wordpiece tokenizer" not in (student_run / "stdout.txt").read_text()
    tokenizer = json.loads((student_run / "tokenizer" / "tokenizer.json").read_text())
    assert tokenizer == json.loads((teacher_run / "export" / "tokenizer.json").read_text())

    config = json.loads((student_run / "export" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["BertForMaskedLM"]
    meta = json.loads((student_run / "export" / "headstart_export.json").read_text())
    assert meta["objective"] == "MaskedLMDistillation"
    [checkpoint] = (student_run / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert state and not any("teacher" in k for k in state)  # the frozen teacher is not checkpointed
    exported = set(load_file(student_run / "export" / "model.safetensors"))
    assert {k for k in state if k.startswith("net.bert.")} == {f"net.{k}" for k in exported if k.startswith("bert.")}


def test_student_export_hands_off_every_backbone_key(student_run):
    from safetensors.torch import load_file

    clf = _tiny_bert_classifier(student_run / "tokenizer", num_hidden_layers=1)
    report = apply_handoff(clf, str(student_run))
    assert report["loaded"] == sorted(clf.backbone.state_dict()) and len(report["loaded"]) > 15
    assert report["source_objective"] == "MaskedLMDistillation"
    exported = load_file(student_run / "export" / "model.safetensors")
    for key, value in clf.backbone.state_dict().items():
        assert torch.equal(value.view(torch.int32), exported[f"bert.{key}"].view(torch.int32)), key


def test_distillation_without_a_teacher_is_a_user_error(tmp_path, corpus_dir):
    proc = run_train(["experiment=text_distillation", *_data(corpus_dir)], tmp_path)
    assert_user_error(proc, "task.teacher has no value")
