"""Transfer modes through train.py: what a linear probe and partial freezing leave untouched, and the
learning rates of layer-wise decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, run_train
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus_dir, shared_cache) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    proc = run_train(["experiment=text_mlm", "data=text_files", f"data.train_files=[{corpus_dir / 'train.txt'}]",
                      "data.max_length=32", "data.vocab_size=300", "trainer.max_epochs=1", "logger=csv", *TINY_MODEL],
                     root, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [export] = root.glob("outputs/*/*/export")
    return export


def _finetune(tmp_path: Path, corpus: Path, export: Path, cache: Path, *extra: str) -> dict[str, torch.Tensor]:
    """Fine-tune from ``export`` and return the backbone weights of the final checkpoint."""
    proc = run_train([
        "experiment=text_classification", "data=text_classification_files", "logger=csv", *TINY_MODEL,
        f"data.train_files=[{corpus / 'cls_train.jsonl'}]", f"data.val_files=[{corpus / 'cls_val.jsonl'}]",
        "data.max_length=32", "trainer.max_epochs=2", "task.optimizer.lr=5e-3", f"model.init_from={export}", *extra,
    ], tmp_path, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [ckpt] = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def _exported_backbone(export: Path) -> dict[str, torch.Tensor]:
    return {k[len("bert."):]: v for k, v in load_file(export / "model.safetensors").items() if k.startswith("bert.")}


def test_linear_probe_leaves_every_backbone_weight_bit_identical(tmp_path, corpus_dir, pretrained, shared_cache):
    trained = _finetune(tmp_path, corpus_dir, pretrained, shared_cache, "transfer=linear_probe")
    source = _exported_backbone(pretrained)
    assert set(trained) == set(source)
    for key, value in source.items():
        assert torch.equal(trained[key], value), key
    results = json.loads(next(tmp_path.glob("outputs/*/*/results.json")).read_text())
    assert results["transfer"]["mode"] == "linear_probe"


def test_partial_freezing_changes_exactly_the_unfrozen_weights(tmp_path, corpus_dir, pretrained, shared_cache):
    trained = _finetune(tmp_path, corpus_dir, pretrained, shared_cache, "transfer=partial", "transfer.freeze_layers=1")
    source = _exported_backbone(pretrained)
    for key, value in source.items():
        frozen = key.startswith("embeddings.") or key.startswith("encoder.layer.0.")
        assert torch.equal(trained[key], value) == frozen, key


def test_layerwise_lr_decay_sets_group_learning_rates():
    from headstart.transfer.modes import layerwise_lr_scales, num_layers

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from transformers import BertConfig, BertModel

            self.net = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                                            intermediate_size=16), add_pooling_layer=False)
            self.head = torch.nn.Linear(8, 2)
            self.layer_lr_decay = 0.5

        @property
        def backbone(self):
            return self.net

    scales = layerwise_lr_scales(Tiny())
    assert num_layers(Tiny().net) == 3
    assert scales["head.weight"] == 1.0
    assert scales["net.encoder.layer.2.output.dense.weight"] == 0.5
    assert scales["net.encoder.layer.0.output.dense.weight"] == 0.125
    assert scales["net.embeddings.word_embeddings.weight"] == 0.0625
