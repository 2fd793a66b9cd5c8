"""Every objective's and head's training step, pinned to its loss written out by hand in this file
(and, where it has one, its update rule): fixed tiny inputs, a fixed seed, the module's own step on
one side and the formula on the other. The reference reads the module's layers (its encoder,
projection, decoder), never its loss functions, so a flipped sign, a dropped term, a swapped target
or a skipped module shows up as a different number. ``bench/mutations.py`` checks that it does."""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
from conftest import TINY_BERT, TOPICS, make_sentence, text_spec

from headstart.backbones.vision import VisionBackboneSpec
from headstart.data.tokenizer import train_tokenizer
from headstart.data.vision import ImageProcessor

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)
CNN = {"model_type": "headstart_cnn", "hidden_sizes": [4, 8]}
VIT = {"model_type": "vit", "patch_size": 4, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
       "intermediate_size": 32}


# -- references, written as the papers write them -------------------------------------------------------
def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def cross_entropy_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log softmax(logits)[target]."""
    log_probs = logits - logits.logsumexp(-1, keepdim=True)
    return -log_probs[torch.arange(len(targets)), targets].mean()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask[..., None].float()
    return (hidden * weights).sum(1) / weights.sum(1)


class LogRecorder:
    """Stands in for Lightning's logging (no trainer here) and keeps what the step logged."""

    def __init__(self, module) -> None:
        self.values: dict[str, torch.Tensor] = {}
        module.log_split = self.log_split

    def log_split(self, split, values, batch_size, prog_bar=False):
        self.values.update({f"{split}/{k}": v for k, v in values.items()})


def _vision_spec(arch: dict, image_size: int = 8) -> VisionBackboneSpec:
    spec = VisionBackboneSpec(arch=dict(arch))
    spec.bind_processor(ImageProcessor(image_size=image_size, num_channels=1, image_mean=[0.0], image_std=[1.0]))
    return spec


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def wordpiece():
    rng = random.Random(0)
    texts = [make_sentence(rng, rng.choice(sorted(TOPICS)), n_words=8) for _ in range(300)]
    return train_tokenizer(iter([texts]), "wordpiece", 200, True, 64)


def _texts(n: int, seed: int = 3) -> list[str]:
    """Texts of different lengths, so that padding is in the batch and pooling must skip it."""
    rng = random.Random(seed)
    return [make_sentence(rng, rng.choice(sorted(TOPICS)), n_words=4 + 2 * i) for i in range(n)]


def _text_batch(tokenizer, n: int = 6) -> dict[str, torch.Tensor]:
    return tokenizer(_texts(n), padding=True, return_tensors="pt")


def _perturbed(module: torch.nn.Module, seed: int = 5) -> None:
    """Move every weight off its initial value (so that a copy and its source, or zero-initialised
    parts, give distinguishable numbers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))


# -- MoCo --------------------------------------------------------------------------------------------------
def test_moco_step_moves_the_key_encoder_by_the_ema_and_scores_against_the_queue_before_the_step():
    from headstart.objectives.moco import MoCo

    torch.manual_seed(0)
    moco = MoCo(_vision_spec(CNN), ADAMW, momentum=0.9, queue_size=5, projection_dim=3, temperature=0.2).train()
    _perturbed(moco.net)  # the query encoder now differs from its key copy
    _perturbed(moco.projection)
    view1, view2 = _images(4, seed=1), _images(4, seed=2)

    reference = copy.deepcopy(moco)
    query_params = [p.detach().clone() for p in [*reference.net.parameters(), *reference.projection.parameters()]]
    key_params = [*reference.key_encoder.parameters(), *reference.key_projection.parameters()]
    with torch.no_grad():
        for key, query in zip(key_params, query_params, strict=True):
            key.copy_(0.9 * key + 0.1 * query)  # the EMA, before the keys are computed
        keys = unit(reference.key_projection(reference.image_features(reference.key_encoder(pixel_values=view2))))
    queries = unit(reference.projection(reference.encode(view1)))
    queue = unit(reference.queue.clone())
    logits = torch.cat([(queries * keys).sum(-1, keepdim=True), queries @ queue.T], dim=1) / 0.2
    expected = (logits.logsumexp(-1) - logits[:, 0]).mean()

    loss, values, _ = moco.contrastive_step(view1, view2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert values["acc"].item() == pytest.approx((logits.argmax(-1) == 0).float().mean().item())
    # The key encoder moved by exactly the EMA; the query encoder did not move (only the optimizer moves it).
    for key, ref_key in zip([*moco.key_encoder.parameters(), *moco.key_projection.parameters()], key_params,
                            strict=True):
        torch.testing.assert_close(key, ref_key)
    for query, before in zip([*moco.net.parameters(), *moco.projection.parameters()], query_params, strict=True):
        assert torch.equal(query.detach(), before)
    # After the loss, this step's keys took the oldest slots of the queue.
    torch.testing.assert_close(moco.queue[:4], keys)
    assert int(moco.queue_ptr) == 4
    # The query side takes the gradient, the key side none.
    loss.backward()
    assert all(p.grad is not None for p in moco.net.parameters())
    assert all(p.grad is None for p in moco.key_encoder.parameters())


def test_moco_evaluation_leaves_encoder_and_queue_alone():
    from headstart.objectives.moco import MoCo

    torch.manual_seed(0)
    moco = MoCo(_vision_spec(CNN), ADAMW, momentum=0.9, queue_size=5, projection_dim=3)
    _perturbed(moco.net)
    moco.eval()
    keys_before = [p.clone() for p in moco.key_encoder.parameters()]
    queue_before = moco.queue.clone()
    moco.contrastive_step(_images(4, 1), _images(4, 2))
    assert all(torch.equal(a, b) for a, b in zip(keys_before, moco.key_encoder.parameters(), strict=True))
    assert torch.equal(queue_before, moco.queue)


# -- SimCLR ------------------------------------------------------------------------------------------------
def test_simclr_step_is_nt_xent_of_the_projected_views():
    from headstart.objectives.simclr import SimCLR

    torch.manual_seed(0)
    simclr = SimCLR(_vision_spec(CNN), ADAMW, temperature=0.5, projection_dim=3, gather_negatives=False).train()
    view1, view2 = _images(4, seed=1), _images(4, seed=2)
    reference = copy.deepcopy(simclr)
    features = reference.encode(torch.cat([view1, view2]))  # one pass: batch norm over all 2N views
    z = unit(reference.projection(features))
    n = view1.size(0)
    similarity = z @ z.T / 0.5
    similarity.fill_diagonal_(float("-inf"))  # a view is not its own candidate
    partners = torch.cat([torch.arange(n) + n, torch.arange(n)])
    expected = cross_entropy_by_hand(similarity, partners)

    loss, _, first_view_features = simclr.contrastive_step(view1, view2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first_view_features, features[:n])


# -- SimCSE ------------------------------------------------------------------------------------------------
def test_simcse_step_contrasts_two_dropout_views_of_each_text(wordpiece):
    from headstart.objectives.simcse import SimCSE

    torch.manual_seed(0)
    simcse = SimCSE(text_spec(wordpiece, {**TINY_BERT, "hidden_dropout_prob": 0.3}), ADAMW, temperature=0.05,
                    pooling="mean", gather_negatives=False).train()
    logged = LogRecorder(simcse)
    batch = _text_batch(wordpiece)
    reference = copy.deepcopy(simcse)
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    torch.manual_seed(7)
    pooled = masked_mean(reference.net(**doubled).last_hidden_state, doubled["attention_mask"])
    view1, view2 = pooled.chunk(2)
    assert (view1 - view2).abs().max() > 1e-3  # dropout made two different views
    z1, z2 = unit(reference.projection(view1)), unit(reference.projection(view2))
    expected = cross_entropy_by_hand(z1 @ z2.T / 0.05, torch.arange(len(z1)))

    torch.manual_seed(7)
    loss = simcse.training_step(batch, 0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logged.values["train/loss"], expected, rtol=1e-5, atol=1e-5)


# -- autoencoders ------------------------------------------------------------------------------------------
def test_vae_step_is_the_negative_elbo_with_the_reparameterised_code():
    from headstart.objectives.variational_autoencoder import VariationalAutoencoder

    torch.manual_seed(0)
    vae = VariationalAutoencoder(_vision_spec(CNN), ADAMW, latent_dim=3, kl_weight=0.7, decoder_widths=[4]).train()
    _perturbed(vae.to_posterior)  # a log variance away from 0, where exp(log_var) and its square root differ
    images = _images(4)
    reference = copy.deepcopy(vae)
    torch.manual_seed(11)
    posterior = reference.to_posterior(reference.encode(images))
    mean, log_var = posterior[:, :3], posterior[:, 3:]
    assert log_var.abs().min() > 1e-3
    code = mean + torch.randn(mean.shape) * torch.exp(log_var / 2)  # std = exp(log_var / 2)
    squared_error = (reference.decoder(code) - images) ** 2
    reconstruction = 0.5 * squared_error.sum(dim=(1, 2, 3)).mean()  # summed over the pixels, mean over images
    kl = (0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(-1)).mean()
    expected = reconstruction + 0.7 * kl

    torch.manual_seed(11)
    loss, values, _ = vae.objective_step(images)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values["kl"], kl, rtol=1e-5, atol=1e-6)
    assert kl > 0
    # The KL term against torch's own Gaussian KL.
    normal = torch.distributions.Normal
    torch_kl = torch.distributions.kl_divergence(normal(mean, (log_var / 2).exp()), normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(values["kl"], torch_kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_denoising_step_reconstructs_the_clean_image_from_the_corrupted_one(noise):
    from headstart.objectives.denoising_autoencoder import DenoisingAutoencoder

    torch.manual_seed(0)
    dae = DenoisingAutoencoder(_vision_spec(CNN), ADAMW, noise=noise, noise_level=0.5, decoder_widths=[4]).train()
    images = _images(4)
    reference = copy.deepcopy(dae)
    torch.manual_seed(11)
    if noise == "gaussian":
        corrupted = images + 0.5 * torch.randn(images.shape)
    else:
        corrupted = torch.where(torch.rand(images.shape) < 0.5, torch.zeros_like(images), images)
    expected = ((reference.decoder(reference.encode(corrupted)) - images) ** 2).mean()

    torch.manual_seed(11)
    loss, _, features = dae.objective_step(images)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features, reference.encode(corrupted))


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, patches, patch * patch * C), patches row by row, pixels (row, column, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_masked_autoencoder_step_is_the_mse_of_the_hidden_patches(norm_pix_loss):
    from headstart.objectives.masked_autoencoder import MaskedAutoencoder

    torch.manual_seed(0)
    mae = MaskedAutoencoder(_vision_spec(VIT), ADAMW, mask_ratio=0.5, norm_pix_loss=norm_pix_loss,
                            decoder_hidden_size=8, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                            decoder_intermediate_size=16).eval()
    images = _images(3) * 2.0 + 1.0  # patches far from mean 0 / variance 1, so normalising them matters
    torch.manual_seed(11)
    out = mae.net(pixel_values=images)
    target = patchify(images, 4)
    if norm_pix_loss:  # MAE's per-patch normalised pixels (unbiased variance, eps 1e-6, as its reference code)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((out.logits - target) ** 2).mean(-1)
    hidden = out.mask  # 1 where the encoder did not see the patch
    assert hidden.sum() == 3 * 2  # half of the 4 patches of each image
    expected = (per_patch * hidden).sum() / hidden.sum()

    torch.manual_seed(11)
    loss, _, _ = mae.objective_step(images)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# -- masked LM ---------------------------------------------------------------------------------------------
def test_masked_lm_step_scores_each_masked_row_against_its_own_label(wordpiece):
    from headstart.objectives.masked_lm import MaskedLanguageModeling

    torch.manual_seed(0)
    mlm = MaskedLanguageModeling(text_spec(wordpiece), ADAMW, mlm_probability=0.3).eval()
    collator = mlm.build_collator(wordpiece)
    torch.manual_seed(2)
    batch = collator([wordpiece(t) for t in _texts(6)])
    labels = batch["labels"]
    selected = labels != -100
    assert selected.sum() >= 5
    # The full model's logits at every position, then the masked ones with their labels.
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    logits = mlm.net(**inputs).logits
    expected = cross_entropy_by_hand(logits[selected], labels[selected])

    loss, masked_logits, target = mlm(batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked_logits, logits[selected], rtol=1e-5, atol=1e-5)
    assert torch.equal(target, labels[selected])


# -- heads -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sequence_classifier_step_is_cross_entropy_of_the_pooled_tokens(wordpiece, pooling):
    from headstart.heads.sequence_classification import SequenceClassifier

    torch.manual_seed(0)
    head = SequenceClassifier(text_spec(wordpiece), ADAMW, num_labels=3, pooling=pooling).eval()
    batch = {**_text_batch(wordpiece), "labels": torch.tensor([0, 2, 1, 1, 0, 2])}
    hidden = head.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    pooled = masked_mean(hidden, batch["attention_mask"]) if pooling == "mean" else hidden[:, 0]
    logits = pooled @ head.head[1].weight.T + head.head[1].bias
    loss, predictions, targets, size = head.step(batch)
    torch.testing.assert_close(loss, cross_entropy_by_hand(logits, batch["labels"]), rtol=1e-5, atol=1e-6)
    assert torch.equal(predictions, logits.argmax(-1)) and torch.equal(targets, batch["labels"]) and size == 6


def test_image_classifier_step_is_cross_entropy_of_the_image_features():
    from headstart.heads.image_classification import ImageClassifier

    torch.manual_seed(0)
    head = ImageClassifier(_vision_spec(CNN), ADAMW, num_labels=3).eval()
    images, labels = _images(4), torch.tensor([2, 0, 1, 2])
    features = head.net(pixel_values=images).pooler_output.flatten(1)
    logits = features @ head.head[1].weight.T + head.head[1].bias
    loss, predictions, _, _ = head.step({"pixel_values": images, "labels": labels})
    torch.testing.assert_close(loss, cross_entropy_by_hand(logits, labels), rtol=1e-5, atol=1e-6)
    assert torch.equal(predictions, logits.argmax(-1))


def test_token_classifier_step_scores_labelled_tokens_only(wordpiece):
    from headstart.heads.token_classification import TokenClassifier

    torch.manual_seed(0)
    head = TokenClassifier(text_spec(wordpiece), ADAMW, num_labels=3, label_names=["O", "B-X", "I-X"]).eval()
    batch = _text_batch(wordpiece)
    labels = torch.randint(0, 3, batch["input_ids"].shape, generator=torch.Generator().manual_seed(4))
    labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, 0] = -100  # [CLS]
    hidden = head.net(**batch).last_hidden_state
    logits = hidden @ head.head[1].weight.T + head.head[1].bias
    scored = labels != -100
    loss, _, _, size = head.step({**batch, "labels": labels})
    torch.testing.assert_close(loss, cross_entropy_by_hand(logits[scored], labels[scored]), rtol=1e-5, atol=1e-6)
    assert size == int(scored.sum())


def test_question_answering_step_is_the_mean_of_start_and_end_cross_entropy_over_real_tokens(wordpiece):
    from headstart.heads.question_answering import QuestionAnswering

    torch.manual_seed(0)
    head = QuestionAnswering(text_spec(wordpiece), ADAMW).eval()
    batch = _text_batch(wordpiece)
    lengths = batch["attention_mask"].sum(-1)
    starts, ends = lengths // 3, lengths // 2
    hidden = head.net(**batch).last_hidden_state
    logits = hidden @ head.head[1].weight.T + head.head[1].bias
    per_window = []
    for i, length in enumerate(lengths.tolist()):  # padding is never a candidate position
        start_logits, end_logits = logits[i, :length, 0], logits[i, :length, 1]
        per_window.append(((start_logits.logsumexp(0) - start_logits[starts[i]])
                           + (end_logits.logsumexp(0) - end_logits[ends[i]])) / 2)
    loss, _, _, _ = head.step({**batch, "start_positions": starts, "end_positions": ends})
    torch.testing.assert_close(loss, torch.stack(per_window).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_name", ["mse", "mae", "huber"])
def test_regressor_step_learns_standardised_targets_and_predicts_in_data_units(wordpiece, loss_name):
    from headstart.heads.regression import Regressor

    torch.manual_seed(0)
    head = Regressor(text_spec(wordpiece), ADAMW, loss=loss_name, huber_delta=0.5, target_mean=[3.0],
                     target_std=[2.0]).eval()
    batch = _text_batch(wordpiece)
    targets = torch.tensor([1.0, 5.0, 3.0, 9.0, -1.0, 4.0])
    hidden = head.net(**batch).last_hidden_state
    outputs = (masked_mean(hidden, batch["attention_mask"]) @ head.head[1].weight.T + head.head[1].bias)[:, 0]
    error = (outputs - (targets - 3.0) / 2.0).abs()
    expected = {"mse": error**2, "mae": error,
                "huber": torch.where(error < 0.5, 0.5 * error**2, 0.5 * (error - 0.25))}[loss_name].mean()
    loss, predictions, returned_targets, _ = head.step({**batch, "labels": targets})
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(predictions, outputs * 2.0 + 3.0)
    torch.testing.assert_close(returned_targets, targets)
