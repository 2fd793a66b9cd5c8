"""The image autoencoders (denoising, variational, masked) and the online evaluation every image
objective carries (detached linear probe + kNN): their parts in process, then each objective end to
end through train.py on the digits, with its hand-off to the image classifier, under DDP and resume."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, logged, only_run_dir, run_train
from safetensors.torch import load_file

from headstart.backbones.vision import VisionBackboneSpec
from headstart.data.vision import ImageProcessor
from headstart.errors import ConfigError
from headstart.objectives.denoising_autoencoder import DenoisingAutoencoder, corrupt
from headstart.objectives.image_decoder import ImageDecoder
from headstart.objectives.masked_autoencoder import MaskedAutoencoder
from headstart.objectives.variational_autoencoder import VariationalAutoencoder, gaussian_kl

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)
SMALL_CNN = ["model.arch.hidden_sizes=[16,32,64]"]


def _spec(arch: dict, image_size: int = 8) -> VisionBackboneSpec:
    spec = VisionBackboneSpec(arch=arch)
    spec.bind_processor(ImageProcessor(image_size=image_size, num_channels=1, image_mean=[0.0], image_std=[1.0]))
    return spec


CNN = {"model_type": "headstart_cnn", "hidden_sizes": [4, 8]}
VIT = {"model_type": "vit", "patch_size": 4, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
       "intermediate_size": 32}


# -- parts ---------------------------------------------------------------------------------------
def test_noise_types_hit_the_stated_share_of_pixels():
    torch.manual_seed(0)
    images = torch.randn(64, 1, 16, 16)
    masked = corrupt(images, "masking", 0.3)
    hit = masked != images
    assert abs(hit.float().mean().item() - 0.3) < 0.02 and torch.all(masked[hit] == 0)
    salted = corrupt(images, "salt_pepper", 0.2)
    hit = salted != images
    assert abs(hit.float().mean().item() - 0.2) < 0.02
    low, high = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.all((salted == low) | (salted == high) | ~hit)
    noisy = corrupt(images, "gaussian", 0.5)
    assert abs((noisy - images).std().item() - 0.5) < 0.02


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_var = torch.randn(5, 3), torch.randn(5, 3)
    posterior = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(posterior, prior).sum(-1)
    assert torch.allclose(gaussian_kl(mean, log_var), expected, atol=1e-5)


def test_vae_kl_weight_anneals_linearly_and_the_step_backpropagates():
    vae = VariationalAutoencoder(_spec(CNN), ADAMW, latent_dim=3, kl_weight=0.5, kl_anneal_steps=10,
                                 decoder_widths=[8])
    steps = {0: 0.0, 4: 0.2, 10: 0.5, 30: 0.5}
    for step, beta in steps.items():
        vae._trainer = type("T", (), {"global_step": step})()  # global_step reads the trainer's
        assert vae.beta == pytest.approx(beta)
    vae._trainer = None
    loss, values, features = vae.objective_step(torch.randn(4, 1, 8, 8))
    loss.backward()
    assert features.shape == (4, 8) and set(values) == {"recon_mse", "kl", "beta"}
    assert all(p.grad is not None for p in vae.net.parameters())


def test_decoder_output_shape_and_size_check():
    assert ImageDecoder(8, 16, 3, [8, 4])(torch.randn(2, 8)).shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match="data.image_size=10 does not divide"):
        ImageDecoder(8, 10, 1, [8, 4])


def test_denoising_autoencoder_rejects_unknown_noise():
    with pytest.raises(ConfigError, match="task.noise='blur'"):
        DenoisingAutoencoder(_spec(CNN), ADAMW, noise="blur")


def test_masked_autoencoder_export_is_a_plain_vit_with_every_encoder_weight(tmp_path):
    from transformers import AutoModel, ViTModel

    mae = MaskedAutoencoder(_spec(VIT), ADAMW, mask_ratio=0.5, decoder_hidden_size=8, decoder_num_hidden_layers=1,
                            decoder_intermediate_size=16)
    # Fixed sin-cos positions in encoder and decoder (transformers 5 leaves them at zero).
    assert all(
        t.abs().sum(-1).gt(0).all() for t in (mae.net.vit.embeddings.position_embeddings[:, 1:],
                                              mae.net.decoder.decoder_pos_embed[:, 1:]))
    # (Its loss, against the formula by hand: tests/test_step_losses.py.)
    assert mae.objective_step(torch.randn(3, 1, 8, 8))[2].shape == (3, 16)
    mae.export(str(tmp_path / "export"), None, {})
    vit = AutoModel.from_pretrained(tmp_path / "export")
    assert isinstance(vit, ViTModel)
    for name, tensor in mae.net.vit.state_dict().items():
        assert torch.equal(vit.state_dict()[name], tensor), name
    # The encoder of the whole image: exactly the exported ViT's CLS feature.
    images = torch.randn(2, 1, 8, 8)
    mae.eval()
    with torch.no_grad():
        assert torch.allclose(mae.encode(images), vit(pixel_values=images).last_hidden_state[:, 0], atol=1e-5)
    assert mae.net.config.mask_ratio == 0.5  # encode() leaves the training mask ratio as it was


def test_online_probe_learns_faster_than_the_objective():
    dae = DenoisingAutoencoder(_spec(CNN), ADAMW, online_probe_lr_scale=10.0, num_labels=3)
    dae._trainer = type("T", (), {"estimated_stepping_batches": 10})()
    optimizer = dae.configure_optimizers()
    probe = {id(p) for p in dae.online_probe.parameters()}
    rates = {("probe" if id(p) in probe else "rest"): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates == {"probe": pytest.approx(1e-2), "rest": pytest.approx(1e-3)}


# -- end to end through train.py -----------------------------------------------------------------
# objective, experiment, its overrides, epochs, how much val/loss must fall, what val/probe_acc must beat
AUTOENCODERS = {
    "dae": ("DenoisingAutoencoder", "vision_dae", SMALL_CNN, 4, 0.1, 0.3),
    "vae": ("VariationalAutoencoder", "vision_vae", SMALL_CNN, 4, 10.0, 0.3),
    # The tiny ViT's epochs take a second; it needs more of them for useful features.
    "mae": ("MaskedAutoencoder", "vision_mae", [], 30, 0.3, 0.3),
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Each autoencoder pretrained for a few epochs on the digits (cached per test module)."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            root = tmp_path_factory.mktemp(name)
            _, experiment, model, epochs, _, _ = AUTOENCODERS[name]
            proc = run_train([f"experiment={experiment}", "logger=csv", f"trainer.max_epochs={epochs}", *model], root)
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[name] = only_run_dir(root)
        return runs[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", list(AUTOENCODERS))
def test_autoencoder_loss_falls_and_backbone_hands_off(name, pretrained, tmp_path):
    objective, _, _, epochs, margin, probe_floor = AUTOENCODERS[name]
    run_dir = pretrained(name)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == objective and results["completed"]
    val_loss = logged(run_dir, "val/loss")
    # The validation noise/masks are the same every epoch, so the loss moves only with the model.
    assert len(val_loss) == epochs and val_loss[-1] < val_loss[0] - margin, val_loss
    probe = logged(run_dir, "val/probe_acc")
    print(f"{objective}: val/loss {val_loss[0]:.3f} -> {val_loss[-1]:.3f}, val/probe_acc {probe[-1]:.3f}, "
          f"test/knn_acc {results['metrics']['test/knn_acc']:.3f}")
    # 10 digits: chance is 0.1
    assert probe[-1] > probe_floor and results["metrics"]["test/knn_acc"] > probe_floor

    model_group = ["model=vit_tiny"] if name == "mae" else SMALL_CNN
    proc = run_train(["experiment=vision_classification", "logger=csv", "trainer.max_epochs=1", *model_group,
                      f"model.init_from={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((only_run_dir(tmp_path) / "handoff_report.json").read_text())
    assert report["source_objective"] == objective
    # Every exported tensor is a backbone weight, and every one of them was loaded.
    assert report["loaded"] == sorted(load_file(str(run_dir / "export" / "model.safetensors")))
    assert report["ignored"] == [] and sorted(report["new"]) == ["head.1.bias", "head.1.weight"]


def test_masked_autoencoder_needs_a_vit(tmp_path):
    proc = run_train(["experiment=vision_mae", "model=cnn_small", "logger=none", "debug=default"], tmp_path)
    assert_user_error(proc, "task=masked_autoencoder needs a ViT backbone", "model=vit_tiny")


@pytest.mark.slow
def test_online_probe_is_detached_from_the_backbone(tmp_path):
    """Training the probe changes nothing in the backbone: the exports with and without it are
    bit-identical (same seed), while the probe itself learns."""
    common = ["experiment=vision_dae", "logger=csv", "trainer.max_epochs=1", *SMALL_CNN]
    exports = {}
    for probe in (True, False):
        root = tmp_path / str(probe)
        proc = run_train([*common, f"task.online_probe={probe}"], root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        exports[probe] = load_file(str(only_run_dir(root) / "export" / "model.safetensors"))
        metrics = json.loads((only_run_dir(root) / "results.json").read_text())["metrics"]
        assert ("val/probe_acc" in metrics) == probe
    assert exports[True].keys() == exports[False].keys()
    assert all(torch.equal(exports[True][k], exports[False][k]) for k in exports[True])


@pytest.mark.slow
def test_online_evaluation_under_two_process_ddp_and_resume(tmp_path):
    """SimCLR on 2 gloo processes: the probe and kNN monitor beat chance; the checkpoint carries the
    probe, and a run resumed from it goes on with the trained probe."""
    common = ["experiment=vision_simclr", "logger=csv", *SMALL_CNN, "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2"]
    proc = run_train([*common, "trainer.max_epochs=3"], tmp_path / "first")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = only_run_dir(tmp_path / "first")
    results = json.loads((first / "results.json").read_text())
    assert results["world_size"] == 2
    probe, knn = logged(first, "val/probe_acc"), logged(first, "val/knn_acc")
    print(f"DDP SimCLR: val/probe_acc {probe}, val/knn_acc {knn}")
    # Chance is 0.1; each process takes half the batches, so 3 epochs are 15 steps.
    assert probe[-1] > 0.2 and knn[-1] > 0.5
    last = first / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert {"online_probe.1.weight", "online_probe.1.bias", "online_probe.0.running_mean"} <= set(checkpoint["state_dict"])

    proc = run_train([*common, "trainer.max_epochs=4", f"ckpt_path={last}"], tmp_path / "resumed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = only_run_dir(tmp_path / "resumed")
    after = logged(resumed, "val/probe_acc")
    assert len(after) == 1 and after[0] > probe[0], (probe, after)  # not a probe starting over


# -- feature export ------------------------------------------------------------------------------
@pytest.mark.slow
def test_feature_export_writes_the_exported_backbones_features_in_data_order(pretrained, tmp_path):
    from transformers import AutoModel

    from headstart.backbones.vision import image_features
    from headstart.data.vision import ImageDataModule

    run_dir = pretrained("dae")
    proc = run_train(["experiment=feature_export", "logger=csv", *SMALL_CNN, f"model.init_from={run_dir}",
                      "task.splits=[train,test]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = only_run_dir(tmp_path)
    assert sorted(p.name for p in (out / "features").iterdir()) == ["features.json", "test.safetensors",
                                                                    "train.safetensors"]
    data = ImageDataModule(builtin="digits")
    data.prepare(str(run_dir / "export"))
    model = AutoModel.from_pretrained(run_dir / "export").eval()
    for split in ("train", "test"):
        written = load_file(str(out / "features" / f"{split}.safetensors"))
        images = data.datasets[split]
        assert torch.equal(written["labels"], images.labels)
        with torch.no_grad():
            expected = image_features(model(pixel_values=images.pixel_values))
        assert written["features"].shape == (len(images), 64)
        assert torch.allclose(written["features"], expected, atol=1e-5)
    meta = json.loads((out / "features" / "features.json").read_text())
    assert meta["splits"]["test"]["features"] == [len(data.datasets["test"]), 64]
    assert json.loads((out / "results.json").read_text())["handoff"]["loaded"] == 18


def test_feature_export_needs_a_trained_backbone(tmp_path):
    proc = run_train(["experiment=feature_export", "logger=none"], tmp_path)
    assert_user_error(proc, "task=feature_export needs a trained backbone", "model.init_from=")
