"""Images: the data module (digits, image folders, errors), the processor, the vision backbones and their
hand-off to the image classifier, and end-to-end runs of SimCLR, MoCo and classification on digits."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import logged, only_run_dir, run_train
from safetensors.torch import load_file

from headstart.backbones.vision import VisionBackboneSpec, image_features
from headstart.data.vision import PROCESSOR_CONFIG, ImageDataModule, ImageProcessor, load_image_processor
from headstart.errors import ConfigError, DataError
from headstart.heads.image_classification import ImageClassifier
from headstart.transfer.handoff import apply_handoff

OPTIMIZER = functools.partial(torch.optim.AdamW, lr=1e-3)
TINY_ARCHS = {
    "cnn": {"model_type": "headstart_cnn", "hidden_sizes": [8, 16]},
    "resnet": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
               "layer_type": "basic"},
    "vit": {"model_type": "vit", "patch_size": 4, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32},
}


# -- image folders -------------------------------------------------------------------------------
def write_image_folder(root: Path, per_class: int = 6, size: tuple[int, int] = (12, 10)) -> Path:
    """PNGs of two classes, told apart by where they are bright: ``top/`` and ``bottom/``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, rows in (("top", slice(0, size[1] // 2)), ("bottom", slice(size[1] // 2, None))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(size[1], size[0]), dtype=np.uint8)
            pixels[rows] += 180
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_is_read_resized_and_normalised(tmp_path):
    train = write_image_folder(tmp_path / "train", per_class=10)
    test = write_image_folder(tmp_path / "test", per_class=3)
    (train / "top" / "notes.txt").write_text("not an image, and not read")
    data = ImageDataModule(train_dir=str(train), test_dir=str(test), image_size=8, num_channels=3, batch_size=4,
                           val_fraction=0.2)
    data.prepare()
    assert data.task_kwargs() == {"num_labels": 2, "label_names": ["bottom", "top"]}
    assert {s: len(d) for s, d in data.datasets.items()} == {"train": 16, "validation": 4, "test": 6}
    assert data.has_test
    batch = next(iter(data.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long
    # The mean/std are the training images': normalised training pixels have mean ~0 and std ~1.
    pixels = torch.stack([data.datasets["train"][i]["pixel_values"] for i in range(16)])
    assert abs(float(pixels.mean())) < 0.05 and abs(float(pixels.std()) - 1) < 0.05
    # The classes differ where the test made them differ (top rows bright for "top").
    first = data.datasets["test"][0]
    top_half_brighter = first["pixel_values"][:, :4].mean() > first["pixel_values"][:, 4:].mean()
    assert bool(top_half_brighter) == (data.label_names[int(first["labels"])] == "top")


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="missing_dir"):
        ImageDataModule(train_dir=str(tmp_path / "missing_dir")).prepare()
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty.*holds no images"):
        ImageDataModule(train_dir=str(tmp_path / "empty")).prepare()
    train = write_image_folder(tmp_path / "train")
    (train / "top" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        ImageDataModule(train_dir=str(train)).prepare()
    (train / "top" / "broken.png").unlink()
    (train / "left").mkdir()
    with pytest.raises(DataError, match=r"\['left'\].*hold no images"):
        ImageDataModule(train_dir=str(train)).prepare()
    with pytest.raises(ConfigError, match="data.builtin"):
        ImageDataModule(builtin="digitz")
    with pytest.raises(ConfigError, match="train_dir"):
        ImageDataModule()


def test_digits_split_is_fixed_stratified_and_label_fraction_subsamples():
    full = ImageDataModule(builtin="digits", image_size=8, seed=1)
    full.prepare()
    other_seed = ImageDataModule(builtin="digits", image_size=8, seed=2, label_fraction=0.1)
    other_seed.prepare()
    sizes = {s: len(d) for s, d in full.datasets.items()}
    assert sizes == {"train": 1257, "validation": 270, "test": 270}  # 70/15/15 of 1797
    # The test split does not depend on the run's seed, and every split has every digit.
    assert torch.equal(full.datasets["test"].pixel_values, other_seed.datasets["test"].pixel_values)
    for dataset in full.datasets.values():
        assert torch.bincount(dataset.labels).min() >= 25
    assert len(other_seed.datasets["train"]) == round(0.1 * 1257)
    assert full.datasets["train"].pixel_values.shape[1:] == (1, 8, 8)


def test_processor_round_trip_and_hf_configs(tmp_path):
    processor = ImageProcessor(image_size=12, num_channels=3, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.5])
    processor.save_pretrained(tmp_path / "ours")
    assert ImageProcessor.from_pretrained(tmp_path / "ours") == processor
    grey = torch.rand(2, 1, 8, 8)
    out = processor(grey)
    assert out.shape == (2, 3, 12, 12)
    assert torch.allclose(out[:, 1] * 0.5 + 0.2, out[:, 0] * 0.5 + 0.1, atol=1e-6)  # grey copied to RGB
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / PROCESSOR_CONFIG).write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    assert load_image_processor(tmp_path / "hf") == ImageProcessor(224, 3, [0.5] * 3, [0.5] * 3)
    assert load_image_processor(tmp_path) is None


# -- backbones and hand-off ----------------------------------------------------------------------
def _spec(arch: dict, processor: ImageProcessor) -> VisionBackboneSpec:
    from omegaconf import OmegaConf

    spec = VisionBackboneSpec(arch=OmegaConf.create(arch))  # as Hydra's instantiate passes it
    spec.bind_processor(processor)
    return spec


@pytest.mark.parametrize("name", sorted(TINY_ARCHS))
def test_every_vision_backbone_hands_off_to_the_image_classifier(tmp_path, name):
    from transformers import AutoModel

    from headstart.objectives.simclr import SimCLR

    processor = ImageProcessor(image_size=16, num_channels=1, image_mean=[0.3], image_std=[0.3])
    torch.manual_seed(0)
    pretrain = SimCLR(_spec(TINY_ARCHS[name], processor), optimizer=OPTIMIZER)
    with torch.no_grad():  # stand-in for training: every weight moves off its init
        for param in pretrain.net.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    export = tmp_path / "export"
    pretrain.export(str(export), processor, {"source_run": "test", "config_hash": "h", "completed": True})
    assert ImageProcessor.from_pretrained(export) == processor
    reloaded = AutoModel.from_pretrained(export)  # a plain transformers directory (headstart_cnn included)
    assert type(reloaded) is type(pretrain.net)

    torch.manual_seed(1)
    classifier = ImageClassifier(_spec(TINY_ARCHS[name], processor), optimizer=OPTIMIZER, num_labels=10)
    report = apply_handoff(classifier, str(export))
    backbone_keys = sorted(classifier.backbone.state_dict())
    assert report["loaded"] == backbone_keys and len(backbone_keys) >= 6
    assert sorted(report["new"]) == ["head.1.bias", "head.1.weight"]
    assert report["ignored"] == []  # the projection head is not part of the export
    exported = load_file(str(export / "model.safetensors"))
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(value, exported[key]), key
    images = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        classifier.eval(), reloaded.eval()
        assert torch.allclose(classifier.features({"pixel_values": images}), image_features(reloaded(pixel_values=images)))
        assert classifier({"pixel_values": images}).shape == (3, 10)


def test_vit_patch_size_must_divide_the_image_size():
    processor = ImageProcessor(image_size=10, num_channels=1, image_mean=[0.0], image_std=[1.0])
    with pytest.raises(ConfigError, match=r"data.image_size=10 is not a multiple of model.arch.patch_size=4"):
        _spec(TINY_ARCHS["vit"], processor)


# -- end to end through train.py -----------------------------------------------------------------
SMALL_CNN = ["model.arch.hidden_sizes=[16,32,64]"]


def linear_probe_accuracy(export_dir: Path) -> float:
    """Logistic regression on the frozen features of the exported backbone: fit on the digits'
    training images, score on their test images."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel

    data = ImageDataModule(builtin="digits")
    data.prepare(str(export_dir))  # the export's preprocessing
    model = AutoModel.from_pretrained(export_dir).eval()
    with torch.no_grad():
        features = {split: image_features(model(pixel_values=data.datasets[split].pixel_values)).numpy()
                    for split in ("train", "test")}
    probe = LogisticRegression(max_iter=2000).fit(features["train"], data.datasets["train"].labels.numpy())
    return probe.score(features["test"], data.datasets["test"].labels.numpy())


PRETRAIN_EPOCHS = 4


def _pretrain(tmp_path: Path, experiment: str) -> Path:
    proc = run_train([f"experiment={experiment}", "logger=csv", f"trainer.max_epochs={PRETRAIN_EPOCHS}", *SMALL_CNN],
                     tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(tmp_path)


def _check_pretrain_run(run_dir: Path, objective: str) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == objective and results["completed"]
    val_loss = logged(run_dir, "val/loss")
    # The validation views are the same every epoch, so the loss moves only with the model.
    assert len(val_loss) == PRETRAIN_EPOCHS and val_loss[-1] < val_loss[0] - 0.3, val_loss
    knn = logged(run_dir, "val/knn_acc")
    assert knn[-1] > 0.5, knn  # 10 digits: chance is 0.1
    assert results["metrics"]["test/knn_acc"] > 0.5
    # The online linear probe (on detached features, trained alongside) beats chance (0.1) by far.
    online_probe = logged(run_dir, "val/probe_acc")
    assert online_probe[-1] > 0.4 and results["metrics"]["test/probe_acc"] > 0.4, online_probe
    export = run_dir / "export"
    assert (export / PROCESSOR_CONFIG).is_file() and (run_dir / "processor" / PROCESSOR_CONFIG).is_file()
    assert json.loads((export / "headstart_export.json").read_text())["objective"] == objective
    probe = linear_probe_accuracy(export)
    print(f"{objective}: val/loss {val_loss[0]:.3f} -> {val_loss[-1]:.3f}, val/knn_acc {knn[0]:.3f} -> {knn[-1]:.3f}, "
          f"val/probe_acc {online_probe[-1]:.3f}, offline linear probe {probe:.3f}")
    assert probe > 0.5, probe


def _check_handoff(run_dir: Path, objective: str, root: Path, epochs: int) -> dict:
    """Fine-tune the image classifier from ``run_dir``: every exported weight loads, only the head is new."""
    proc = run_train(["experiment=vision_classification", "logger=csv", f"trainer.max_epochs={epochs}", *SMALL_CNN,
                      f"model.init_from={run_dir}"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    finetune = only_run_dir(root)
    report = json.loads((finetune / "handoff_report.json").read_text())
    assert report["source_objective"] == objective
    assert report["loaded"] == sorted(load_file(str(run_dir / "export" / "model.safetensors")))
    assert sorted(report["new"]) == ["head.1.bias", "head.1.weight"]
    results = json.loads((finetune / "results.json").read_text())
    assert results["task"] == "ImageClassifier"
    return results


@pytest.mark.slow
def test_simclr_pretrains_and_hands_off_to_the_classifier(tmp_path):
    run_dir = _pretrain(tmp_path / "pretrain", "vision_simclr")
    _check_pretrain_run(run_dir, "SimCLR")
    results = _check_handoff(run_dir, "SimCLR", tmp_path / "finetune", epochs=2)
    assert results["metrics"]["test/acc"] > 0.8


@pytest.mark.slow
def test_moco_pretrains_with_its_queue_checkpointed(tmp_path):
    run_dir = _pretrain(tmp_path / "pretrain", "vision_moco")
    _check_pretrain_run(run_dir, "MoCo")
    _check_handoff(run_dir, "MoCo", tmp_path / "finetune", epochs=1)
    [last] = (run_dir / "checkpoints").glob("last*.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    queue = state["queue"]
    assert queue.shape == (512, 64) and int(state["queue_ptr"]) < 512
    assert torch.allclose(queue.norm(dim=-1), torch.ones(512), atol=1e-4)  # normalised keys
    # The queue holds keys of the trained key encoder, not its random initial vectors: they agree
    # with each other far more than random directions in 64 dimensions do.
    assert float((queue @ queue.T).mean()) > 0.02  # random unit vectors: ~0.002
    assert any(k.startswith("key_encoder.") for k in state)


@pytest.mark.slow
def test_image_classifier_from_scratch_beats_80_percent(tmp_path):
    proc = run_train(["experiment=vision_classification", "logger=csv", "trainer.max_epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert results["handoff"] is None
    print(f"cnn_small from scratch: test/acc {results['metrics']['test/acc']:.3f}")
    assert results["metrics"]["test/acc"] > 0.8
