"""Transfer modes: what a linear probe and partial freezing leave untouched, and the learning rates of
layer-wise decay, on every backbone family headstart ships (built tiny in process), and through train.py.
The old flat layout of headstart's CNN still loads."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, only_run_dir, run_train
from safetensors.torch import load_file, save_file
from torch import nn

from headstart.backbones.text import TextBackboneSpec
from headstart.backbones.vision import HeadstartCNNConfig, HeadstartCNNModel, VisionBackboneSpec
from headstart.data.vision import ImageProcessor
from headstart.errors import ConfigError
from headstart.heads.image_classification import ImageClassifier
from headstart.heads.sequence_classification import SequenceClassifier
from headstart.transfer.handoff import apply_handoff
from headstart.transfer.modes import apply_transfer, layerwise_lr_scales, num_layers


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


@pytest.mark.slow
def test_linear_probe_leaves_every_backbone_weight_bit_identical(tmp_path, corpus_dir, pretrained, shared_cache):
    trained = _finetune(tmp_path, corpus_dir, pretrained, shared_cache, "transfer=linear_probe")
    source = _exported_backbone(pretrained)
    assert set(trained) == set(source)
    for key, value in source.items():
        assert torch.equal(trained[key], value), key
    results = json.loads(next(tmp_path.glob("outputs/*/*/results.json")).read_text())
    assert results["transfer"]["mode"] == "linear_probe"


@pytest.mark.slow
def test_partial_freezing_changes_exactly_the_unfrozen_weights(tmp_path, corpus_dir, pretrained, shared_cache):
    trained = _finetune(tmp_path, corpus_dir, pretrained, shared_cache, "transfer=partial", "transfer.freeze_layers=1")
    source = _exported_backbone(pretrained)
    for key, value in source.items():
        frozen = key.startswith("embeddings.") or key.startswith("encoder.layer.0.")
        assert torch.equal(trained[key], value) == frozen, key


def test_layerwise_lr_decay_sets_group_learning_rates():
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


# -- every backbone family, built tiny in process -------------------------------------------------
DECAY = 0.5
LR = 1e-3
OPTIMIZER = functools.partial(torch.optim.AdamW, lr=LR)


class _Tokenizer:
    """What TextBackboneSpec.bind_tokenizer reads from a tokenizer."""

    model_max_length = 16

    def __len__(self) -> int:
        return 40


def _text(arch: dict) -> SequenceClassifier:
    spec = TextBackboneSpec(arch=arch)
    spec.bind_tokenizer(_Tokenizer())
    return SequenceClassifier(spec, optimizer=OPTIMIZER, num_labels=2, pooling="mean")


def _image(arch: dict) -> ImageClassifier:
    spec = VisionBackboneSpec(arch=arch)
    spec.bind_processor(ImageProcessor(image_size=16, num_channels=1, image_mean=[0.0], image_std=[1.0]))
    return ImageClassifier(spec, optimizer=OPTIMIZER, num_labels=2)


# name -> (build the task module, its number of layers, where each backbone parameter sits by its name:
# embeddings (-1), layer i, or after the stack ("top"); the names are the test's ground truth only).
FAMILIES = {
    "bert": (lambda: _text({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2,
                            "intermediate_size": 16, "max_position_embeddings": 16}),
             3, [(r"^embeddings\.", -1), (r"^encoder\.layer\.(\d+)\.", None)]),
    "gpt2": (lambda: _text({"model_type": "gpt2", "n_embd": 8, "n_layer": 3, "n_head": 2, "n_positions": 16}),
             3, [(r"^(wte|wpe)\.", -1), (r"^h\.(\d+)\.", None), (r"^ln_f\.", "top")]),
    "vit": (lambda: _image({"model_type": "vit", "patch_size": 4, "hidden_size": 8, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "intermediate_size": 16}),
            2, [(r"^embeddings\.", -1), (r"^(?:encoder\.)?layers?\.(\d+)\.", None), (r"^layernorm\.", "top")]),
    "resnet": (lambda: _image({"model_type": "resnet", "embedding_size": 4, "hidden_sizes": [4, 8],
                               "depths": [1, 1], "layer_type": "basic"}),
               2, [(r"^embedder\.", -1), (r"^encoder\.stages\.(\d+)\.", None)]),
    "cnn": (lambda: _image({"model_type": "headstart_cnn", "hidden_sizes": [4, 8, 8]}),
            3, [(r"^encoder\.stages\.(\d+)\.", None)]),
    "word2vec": (lambda: _text({"model_type": "headstart_word2vec", "hidden_size": 8}), 0, [(r"^embeddings\.", -1)]),
}


def _expected_level(family: str, name: str) -> int | str:
    for pattern, level in FAMILIES[family][2]:
        if match := re.search(pattern, name):
            return int(match.group(1)) if level is None else level
    raise AssertionError(f"{family}: no expectation for {name}")


def _build(family: str):
    torch.manual_seed(0)
    module = FAMILIES[family][0]()
    assert num_layers(module.backbone) == FAMILIES[family][1]
    return module


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layerwise_decay_gives_embeddings_the_lowest_rate_and_each_layer_its_own(family):
    module = _build(family)
    depth = FAMILIES[family][1]
    apply_transfer(module, layer_lr_decay=DECAY)
    scales = layerwise_lr_scales(module)
    lr_of = {id(p): group["lr"] for group in module.configure_optimizers().param_groups for p in group["params"]}
    backbone = {id(p) for p in module.backbone.parameters()}
    levels = set()
    for name, param in module.named_parameters():
        if id(param) not in backbone:
            expected = 1.0  # the task head
        else:
            level = _expected_level(family, name.removeprefix("net."))
            levels.add(level)
            # embeddings: decay**(L+1); layer i: decay**(L-i); after the stack: with the top layer.
            expected = DECAY ** (depth + 1) if level == -1 else DECAY if level == "top" else DECAY ** (depth - level)
        assert scales[name] == expected, name
        assert lr_of[id(param)] == pytest.approx(LR * expected), name  # what the optimizer gets
    assert set(range(depth)) <= levels  # every layer is there, with its own rate
    if family == "gpt2":  # the embeddings are not called "embed*": they were given the top layer's rate
        assert scales["net.wte.weight"] == scales["net.wpe.weight"] == DECAY ** 4
        assert scales["net.h.0.attn.c_attn.weight"] == DECAY ** 3 and scales["net.ln_f.weight"] == DECAY


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_freeze_layers_1_freezes_the_embeddings_and_the_first_layer_exactly(family):
    module = _build(family)
    summary = apply_transfer(module, mode="partial", freeze_layers=1)
    names = [n for n, _ in module.backbone.named_parameters()]
    frozen = {n for n, p in module.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in names if _expected_level(family, n) in (-1, 0)}
    assert summary["frozen_parameters"] == len(frozen) > 0
    assert all(p.requires_grad for p in module.head.parameters())
    if family == "gpt2":
        assert {"wte.weight", "wpe.weight"} <= frozen and all(n.startswith(("wte.", "wpe.", "h.0.")) for n in frozen)
    if family == "cnn":  # one stage: conv weight, norm weight and bias
        assert sorted(frozen) == ["encoder.stages.0.0.weight", "encoder.stages.0.1.bias", "encoder.stages.0.1.weight"]
    if family == "word2vec":  # embeddings only: freezing them freezes it all
        assert frozen == {"embeddings.weight"}


@pytest.mark.parametrize("family", ["gpt2", "cnn", "word2vec"])
def test_freeze_layers_up_to_the_depth_then_refused(family):
    depth = FAMILIES[family][1]
    module = _build(family)
    apply_transfer(module, mode="partial", freeze_layers=max(depth, 1))
    trainable = {n for n, p in module.backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in module.backbone.named_parameters() if _expected_level(family, n) == "top"}
    message = "use at most 3" if depth else "embeddings only"
    with pytest.raises(ConfigError, match=message):
        apply_transfer(_build(family), mode="partial", freeze_layers=max(depth, 1) + 1)


# -- headstart's CNN: the flat layout of older checkpoints and exports ---------------------------
CNN = HeadstartCNNConfig(num_channels=1, hidden_sizes=[4, 8], layers_per_stage=2)


def _old_flat_cnn() -> nn.Sequential:
    """The CNN's encoder as it was built before it had one module per stage (keys encoder.<k>)."""
    layers, channels = [], CNN.num_channels
    for width in CNN.hidden_sizes:
        for _ in range(CNN.layers_per_stage):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    torch.manual_seed(3)
    old = nn.Sequential(*layers)
    with torch.no_grad():  # trained-looking weights and norm statistics
        for param in old.parameters():
            param.add_(torch.randn_like(param))
        for norm in old.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(1, 2)
    return old.eval()


def test_cnn_loads_the_old_flat_layout_to_identical_outputs(tmp_path):
    from transformers import AutoModel

    old = _old_flat_cnn()
    old_state = {f"encoder.{k}": v for k, v in old.state_dict().items()}
    images = torch.randn(2, 1, 9, 9)
    expected = old(images)

    def features(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(pixel_values=images).last_hidden_state

    model = HeadstartCNNModel(CNN)
    loaded = model.load_state_dict(old_state)  # strict
    assert not loaded.missing_keys and not loaded.unexpected_keys
    assert torch.equal(features(model), expected)
    assert all(k.startswith("encoder.stages.") for k in model.state_dict())

    # A Lightning checkpoint of a classifier: the backbone's keys under net.
    classifier = _image({"model_type": "headstart_cnn", "hidden_sizes": [4, 8], "layers_per_stage": 2})
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("net.")}
    classifier.load_state_dict({**state, **{f"net.{k}": v for k, v in old_state.items()}})
    assert torch.equal(features(classifier.net), expected)

    # An export (save_pretrained directory) written with the old keys.
    export = tmp_path / "export"
    HeadstartCNNModel(CNN).save_pretrained(export)
    save_file({k: v.contiguous() for k, v in old_state.items()}, str(export / "model.safetensors"),
              metadata={"format": "pt"})
    reloaded, info = AutoModel.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(features(reloaded), expected)
    reloaded.save_pretrained(tmp_path / "resaved")  # saved again: the per-stage layout
    assert all(k.startswith("encoder.stages.") for k in load_file(tmp_path / "resaved" / "model.safetensors"))

    classifier = _image({"model_type": "headstart_cnn", "hidden_sizes": [4, 8], "layers_per_stage": 2})
    report = apply_handoff(classifier, str(export))  # model.init_from=<old export>
    assert report["loaded"] == sorted(classifier.backbone.state_dict()) and report["ignored"] == []
    assert torch.equal(features(classifier.net), expected)


@pytest.mark.slow
def test_partial_freezing_of_the_cnn_through_train_py(tmp_path):
    """transfer=partial freeze_layers=1 on cnn_small: refused before ("0 layers": its flat encoder had no stages)."""
    proc = run_train(["experiment=vision_classification", "model=cnn_small", "transfer=partial",
                      "transfer.freeze_layers=1", "debug=default", "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    # cnn_small has 3 stages of conv weight, norm weight and bias: the first stage's 3 are frozen.
    assert results["transfer"] == {"mode": "partial", "frozen_parameters": 3, "trainable_backbone_parameters": 6,
                                   "layer_lr_decay": 1.0}
