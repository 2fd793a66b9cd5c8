"""headstart.transfer in process: export an MLM backbone, hand it to a classifier, and the refusals."""

from __future__ import annotations

import functools
import json
import random
import re
import shutil

import pytest
import torch
from conftest import TINY_BERT, TOPICS, make_sentence
from safetensors.torch import load_file

from headstart.backbones.text import TextBackboneSpec
from headstart.data.tokenizer import train_tokenizer
from headstart.errors import CheckpointError
from headstart.heads.sequence_classification import SequenceClassifier
from headstart.objectives.masked_lm import MaskedLanguageModeling
from headstart.transfer.export import EXPORT_METADATA, read_metadata, write_export
from headstart.transfer.handoff import apply_handoff, read_weights, resolve_export_dir

OPTIMIZER = functools.partial(torch.optim.AdamW, lr=1e-3)


def make_tokenizer(vocab_size: int):
    rng = random.Random(0)
    texts = [make_sentence(rng, rng.choice(sorted(TOPICS))) for _ in range(400)]
    return train_tokenizer(iter([texts]), "wordpiece", vocab_size, True, 64)


def bound_spec(tokenizer, **arch) -> TextBackboneSpec:
    spec = TextBackboneSpec(arch={**TINY_BERT, **arch})
    spec.bind_tokenizer(tokenizer)
    return spec


def classifier(tokenizer, seed: int = 1, **arch) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(bound_spec(tokenizer, **arch), optimizer=OPTIMIZER, num_labels=3)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float32 tensor, so that comparisons are bit for bit."""
    assert t.dtype == torch.float32
    return t.contiguous().view(torch.int32)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(200)


@pytest.fixture(scope="module")
def pretrained(tokenizer, tmp_path_factory):
    """An MLM module whose weights are moved off their init, and its export."""
    torch.manual_seed(0)
    module = MaskedLanguageModeling(bound_spec(tokenizer), optimizer=OPTIMIZER)
    with torch.no_grad():  # stand-in for training: every weight differs from a fresh init
        for param in module.net.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    export_dir = tmp_path_factory.mktemp("run") / "export"
    module.export(str(export_dir), tokenizer, {"source_run": "outputs/pretrain-run", "config_hash": "cafe1234",
                                               "completed": True})
    return module, export_dir


def test_export_layout(pretrained, tokenizer):
    module, export_dir = pretrained
    names = {p.name for p in export_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", EXPORT_METADATA} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt"))]
    assert not list(export_dir.parent.glob("export.tmp*")), "the temporary export directory was left behind"
    meta = read_metadata(export_dir)
    assert meta["objective"] == "MaskedLanguageModeling"
    assert meta["backbone_prefix"] == "bert"
    assert meta["source_run"] == "outputs/pretrain-run" and meta["config_hash"] == "cafe1234"
    config = json.loads((export_dir / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32
    assert config["vocab_size"] == len(tokenizer)
    # Every tensor of the MLM network is in the file (tied decoder weights once, as word embeddings).
    weights = read_weights(export_dir)
    for key, value in module.net.state_dict().items():
        if key in weights:
            assert torch.equal(bits(weights[key]), bits(value)), key
    bert_keys = {f"bert.{k}" for k in module.net.bert.state_dict()}
    assert bert_keys <= set(weights)


def test_handoff_report_and_weights(pretrained, tokenizer):
    mlm, export_dir = pretrained
    clf = classifier(tokenizer)
    exported = load_file(str(export_dir / "model.safetensors"))
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    backbone_keys = sorted(clf.backbone.state_dict())
    # A fresh classifier starts away from the pretrained weights, so the check below can fail.
    assert not torch.equal(before["net.embeddings.word_embeddings.weight"],
                           exported["bert.embeddings.word_embeddings.weight"])

    report = apply_handoff(clf, str(export_dir))

    assert report["loaded"] == backbone_keys
    assert len(report["loaded"]) > 30
    assert report["new"] and all(k.startswith("head.") for k in report["new"])
    assert sorted(report["new"]) == sorted(k for k in clf.state_dict() if k.startswith("head."))
    assert report["ignored"] and all(k.startswith("cls.") for k in report["ignored"])
    assert report["ignored"] == sorted(k for k in exported if k.startswith("cls."))
    assert report["source_dir"] == str(export_dir.resolve())
    assert (report["source_run"], report["source_config_hash"], report["source_objective"],
            report["source_completed"]) == ("outputs/pretrain-run", "cafe1234", "MaskedLanguageModeling", True)
    json.dumps(report)  # the report is written as handoff_report.json

    for key, value in clf.backbone.state_dict().items():
        assert torch.equal(bits(value), bits(exported[f"bert.{key}"])), key
        assert torch.equal(bits(value), bits(mlm.net.bert.state_dict()[key])), key
    # The new head keeps its fresh init.
    for key in report["new"]:
        assert torch.equal(clf.state_dict()[key], before[key]), key

    batch = tokenizer(["cat the dog", "boat with a sail"], padding=True, return_tensors="pt")
    clf.eval()
    assert clf(dict(batch)).shape == (2, 3)


def test_write_export_of_a_bare_masked_lm(tokenizer, tmp_path):
    from transformers import BertForMaskedLM

    torch.manual_seed(3)
    net = BertForMaskedLM(bound_spec(tokenizer).config)
    target = tmp_path / "export"
    write_export(net, tokenizer, str(target), {"objective": "manual"})
    write_export(net, tokenizer, str(target), {"objective": "manual, again"})  # replaces the earlier export
    assert read_metadata(target)["objective"] == "manual, again"

    clf = classifier(tokenizer)
    report = apply_handoff(clf, str(target))
    assert report["loaded"] == sorted(clf.backbone.state_dict())
    assert report["source_run"] is None
    for key, value in clf.backbone.state_dict().items():
        assert torch.equal(bits(value), bits(net.bert.state_dict()[key])), key


def test_export_loads_with_auto_classes(pretrained, tokenizer):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    mlm, export_dir = pretrained
    base = AutoModel.from_pretrained(str(export_dir))
    assert type(base).__name__ == "BertModel"
    for key, value in mlm.net.bert.state_dict().items():
        assert torch.equal(bits(base.state_dict()[key]), bits(value)), key

    full = AutoModelForMaskedLM.from_pretrained(str(export_dir))
    for key, value in mlm.net.state_dict().items():
        assert torch.equal(bits(full.state_dict()[key]), bits(value)), key

    tok = AutoTokenizer.from_pretrained(str(export_dir))
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert tok("cat the dog")["input_ids"] == tokenizer("cat the dog")["input_ids"]


def test_resolve_export_dir(pretrained, tmp_path):
    _, export_dir = pretrained
    run_dir = tmp_path / "run"
    shutil.copytree(export_dir, run_dir / "export")
    pipeline_dir = tmp_path / "pipeline"
    shutil.copytree(export_dir, pipeline_dir / "pretrain" / "export")

    assert resolve_export_dir(str(export_dir)) == export_dir
    assert resolve_export_dir(str(run_dir)) == run_dir / "export"
    assert resolve_export_dir(str(pipeline_dir)) == pipeline_dir / "pretrain" / "export"
    assert resolve_export_dir(str(pipeline_dir / "pretrain")) == pipeline_dir / "pretrain" / "export"

    with pytest.raises(CheckpointError, match="holds no exported model"):
        resolve_export_dir(str(tmp_path))


def test_handoff_from_a_pipeline_dir(pretrained, tokenizer, tmp_path):
    _, export_dir = pretrained
    shutil.copytree(export_dir, tmp_path / "pretrain" / "export")
    report = apply_handoff(classifier(tokenizer), str(tmp_path))
    assert report["source_dir"] == str((tmp_path / "pretrain" / "export").resolve())


# -- refusals -----------------------------------------------------------------------------------


def assert_refused_unchanged(clf, init_from: str, pattern: str) -> str:
    """apply_handoff raises CheckpointError matching ``pattern`` and leaves the model as it was."""
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    with pytest.raises(CheckpointError, match=pattern) as info:
        apply_handoff(clf, init_from)
    for key, value in clf.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a refused hand-off"
    return str(info.value)


def test_different_hidden_size_is_refused(pretrained, tokenizer):
    _, export_dir = pretrained
    message = assert_refused_unchanged(classifier(tokenizer, hidden_size=48), str(export_dir), "does not fit")
    assert re.search(r"embeddings\.word_embeddings\.weight: checkpoint \(\d+, 32\) vs model \(\d+, 48\)", message)
    assert "hidden_size=32" in message and "hidden_size=48" in message


def test_different_vocab_size_is_refused(pretrained, tokenizer):
    _, export_dir = pretrained
    small = make_tokenizer(120)
    assert len(small) != len(tokenizer)
    message = assert_refused_unchanged(classifier(small), str(export_dir), "does not fit")
    assert f"word_embeddings.weight: checkpoint ({len(tokenizer)}, 32) vs model ({len(small)}, 32)" in message
    assert "1 keys differ in shape" in message  # nothing but the embedding table depends on the vocabulary


def test_fewer_layers_in_the_checkpoint_is_refused(tokenizer, tmp_path):
    shallow = MaskedLanguageModeling(bound_spec(tokenizer, num_hidden_layers=1), optimizer=OPTIMIZER)
    shallow.export(str(tmp_path / "export"), tokenizer, {})
    message = assert_refused_unchanged(classifier(tokenizer), str(tmp_path), "backbone keys are missing")
    assert "encoder.layer.1." in message


def test_pickled_weights_are_refused(pretrained, tokenizer, tmp_path):
    mlm, export_dir = pretrained
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(export_dir / "config.json", pickled / "config.json")
    torch.save(mlm.net.state_dict(), pickled / "pytorch_model.bin")
    message = assert_refused_unchanged(classifier(tokenizer), str(pickled), "pickled")
    assert "pytorch_model.bin" in message and "safe_serialization=True" in message


def test_no_weights_at_all_is_refused(pretrained, tokenizer, tmp_path):
    _, export_dir = pretrained
    (tmp_path / "config_only").mkdir()
    shutil.copy(export_dir / "config.json", tmp_path / "config_only" / "config.json")
    assert_refused_unchanged(classifier(tokenizer), str(tmp_path / "config_only"), "no model.safetensors")


def test_nonexistent_path_is_refused(tokenizer, tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    message = assert_refused_unchanged(classifier(tokenizer), str(missing), "does not exist")
    assert str(missing) in message


def test_truncated_safetensors_is_refused(pretrained, tokenizer, tmp_path):
    _, export_dir = pretrained
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = assert_refused_unchanged(classifier(tokenizer), str(broken), "corrupt or truncated")
    assert str(weights) in message


def test_garbage_safetensors_is_refused(pretrained, tokenizer, tmp_path):
    _, export_dir = pretrained
    broken = tmp_path / "garbage"
    shutil.copytree(export_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_refused_unchanged(classifier(tokenizer), str(broken), "corrupt or truncated")


def test_unfinished_pretraining_is_refused_unless_allowed(pretrained, tokenizer, tmp_path):
    _, export_dir = pretrained
    unfinished = tmp_path / "unfinished"
    shutil.copytree(export_dir, unfinished)
    meta = json.loads((unfinished / EXPORT_METADATA).read_text())
    (unfinished / EXPORT_METADATA).write_text(json.dumps({**meta, "completed": False, "global_step": 7}))
    message = assert_refused_unchanged(classifier(tokenizer), str(unfinished), "did not finish")
    assert "step 7" in message and "model.allow_incomplete=true" in message
    report = apply_handoff(classifier(tokenizer), str(unfinished), allow_incomplete=True)
    assert report["source_completed"] is False and report["loaded"]


@pytest.mark.parametrize(("arch", "field"), [
    ({"num_attention_heads": 4}, "num_attention_heads: export 2, model 4"),   # same shapes, other heads
    ({"hidden_act": "relu"}, "hidden_act: export 'gelu', model 'relu'"),
    ({"layer_norm_eps": 1e-5}, "layer_norm_eps: export 1e-12, model 1e-05"),
])
def test_same_shapes_but_another_architecture_is_refused(pretrained, tokenizer, arch, field):
    _, export_dir = pretrained
    message = assert_refused_unchanged(classifier(tokenizer, **arch), str(export_dir), "another architecture")
    assert field in message and "model.arch" in message


def test_an_export_whose_config_was_edited_is_refused(pretrained, tokenizer, tmp_path):
    _, export_dir = pretrained
    edited = tmp_path / "edited"
    shutil.copytree(export_dir, edited)
    config = json.loads((edited / "config.json").read_text())
    config["num_attention_heads"] = 4  # weights trained with 2 heads, config now says 4
    (edited / "config.json").write_text(json.dumps(config))
    assert_refused_unchanged(classifier(tokenizer, num_attention_heads=4), str(edited), "was changed after the export")
