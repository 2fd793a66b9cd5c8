"""The math of the contrastive objectives, in process: NT-Xent and InfoNCE against straightforward
loop implementations (alone and gathered across two gloo processes), MoCo's queue loss, momentum
update and queue, the kNN monitor, and the batched image augmentations."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from gloo_workers import contrastive_losses_and_grads, contrastive_problem, contrastive_rank, free_port

from headstart.data.augment import ImageAugment, TwoViews, apply_affine, random_affine_theta, random_erasing
from headstart.objectives.losses import info_nce, nt_xent
from headstart.objectives.moco import queue_contrastive_loss
from headstart.objectives.online_evaluation import knn_accuracy

TEMPERATURE = 0.3


# -- references: one row at a time, as the papers write them -------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (a.norm() * b.norm())


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: for each of the 2N views, -log softmax of its partner among the other 2N - 1."""
    views = list(z1) + list(z2)
    n = len(z1)
    losses = []
    for i, anchor in enumerate(views):
        partner = (i + n) % (2 * n)
        others = torch.stack([_cos(anchor, views[j]) / temperature for j in range(2 * n) if j != i])
        losses.append(torch.logsumexp(others, 0) - _cos(anchor, views[partner]) / temperature)
    return torch.stack(losses).mean()


def info_nce_loop(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    losses = []
    for i, q in enumerate(query):
        logits = torch.stack([_cos(q, k) / temperature for k in key])
        losses.append(torch.logsumexp(logits, 0) - logits[i])
    return torch.stack(losses).mean()


def queue_loss_loop(queries, keys, queue, temperature):
    losses = []
    for q, k in zip(queries, keys, strict=True):
        logits = torch.stack([_cos(q, k)] + [_cos(q, n) for n in queue]) / temperature
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def _loss_and_grads(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize(("loss_fn", "reference"), [
    (functools.partial(nt_xent, temperature=TEMPERATURE), functools.partial(nt_xent_loop, temperature=TEMPERATURE)),
    (functools.partial(info_nce, temperature=TEMPERATURE), functools.partial(info_nce_loop, temperature=TEMPERATURE)),
], ids=["nt_xent", "info_nce"])
def test_loss_matches_loop_reference(loss_fn, reference):
    torch.manual_seed(0)
    a, b = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    loss, grads = _loss_and_grads(loss_fn, a, b)
    ref_loss, ref_grads = _loss_and_grads(reference, a, b)
    # The losses compute their logits in float32 (for mixed precision): float32 tolerances.
    assert torch.allclose(loss.double(), ref_loss, atol=1e-6), (loss, ref_loss)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert torch.allclose(grad, ref, atol=1e-6)


def test_nt_xent_is_low_for_matching_views_and_high_for_unrelated():
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    assert nt_xent(z, z, 0.1) < 0.01
    assert nt_xent(z, torch.randn(16, 32), 0.1) > 2.0


# -- gathering across processes: 2 ranks x B == 1 process x 2B ----------------------------------
BATCH, WORLD = 4, 2


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    """Each loss and its gradient on 2 gloo processes (B rows each) and on 1 process (all 2B rows)."""
    import torch.multiprocessing as mp

    result_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(contrastive_rank, args=(WORLD, BATCH, TEMPERATURE, free_port(), str(result_dir)), nprocs=WORLD,
             join=True)
    ranks = [torch.load(result_dir / f"rank{r}.pt") for r in range(WORLD)]
    return ranks, contrastive_losses_and_grads(*contrastive_problem(WORLD, BATCH), TEMPERATURE)


@pytest.mark.parametrize("name", ["nt_xent", "info_nce"])
def test_gathered_loss_and_gradient_equal_one_big_batch(gathered, name):
    ranks, single = gathered
    losses = torch.stack([r[name][0] for r in ranks])
    # What DDP does with the encoder's gradients: the mean over ranks.
    grad = torch.stack([r[name][1] for r in ranks]).mean(0)
    single_loss, single_grad = single[name]
    assert not torch.allclose(losses[0], losses[1])  # the ranks did see different rows
    assert torch.allclose(losses.mean(), single_loss, atol=1e-6), (losses, single_loss)
    assert torch.allclose(grad, single_grad, atol=1e-6), (grad, single_grad)


# -- MoCo ----------------------------------------------------------------------------------------
def test_queue_loss_matches_loop_reference():
    torch.manual_seed(0)
    q, k, queue = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), \
        torch.randn(9, 4, dtype=torch.float64)
    (loss, logits), ref = queue_contrastive_loss(q, k, queue, TEMPERATURE), queue_loss_loop(q, k, queue, TEMPERATURE)
    assert logits.shape == (5, 10)
    assert torch.allclose(loss.double(), ref, atol=1e-6)
    loss_grads = _loss_and_grads(lambda a, b: queue_contrastive_loss(a, b, queue, TEMPERATURE)[0], q, k)[1]
    ref_grads = _loss_and_grads(lambda a, b: queue_loss_loop(a, b, queue, TEMPERATURE), q, k)[1]
    for grad, ref_grad in zip(loss_grads, ref_grads, strict=True):
        assert torch.allclose(grad.double(), ref_grad, atol=1e-6)


def make_moco():
    from headstart.backbones.vision import VisionBackboneSpec
    from headstart.data.vision import ImageProcessor
    from headstart.objectives.moco import MoCo

    spec = VisionBackboneSpec(arch={"model_type": "headstart_cnn", "hidden_sizes": [4, 8]})
    spec.bind_processor(ImageProcessor(image_size=8, num_channels=1, image_mean=[0.0], image_std=[1.0]))
    return MoCo(spec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), momentum=0.9, queue_size=5,
                projection_dim=3)


@pytest.fixture()
def moco():
    torch.manual_seed(0)
    return make_moco()


def test_moco_momentum_update_is_an_ema_of_the_query_encoder(moco):
    pairs = [*zip(moco.net.parameters(), moco.key_encoder.parameters(), strict=True),
             *zip(moco.projection.parameters(), moco.key_projection.parameters(), strict=True)]
    assert all(torch.equal(q, k) for q, k in pairs)  # the key encoder starts as a copy
    assert not any(k.requires_grad for _, k in pairs)
    with torch.no_grad():
        for q, _ in pairs:
            q.add_(torch.randn_like(q))
    before = [k.clone() for _, k in pairs]
    moco.momentum_update()
    for (q, k), old in zip(pairs, before, strict=True):
        assert torch.allclose(k, 0.9 * old + 0.1 * q, atol=1e-6)


def test_moco_queue_wraps_around_and_is_checkpointed(moco):
    first, second = F.normalize(torch.randn(3, 3), dim=-1), F.normalize(torch.randn(3, 3), dim=-1)
    initial = moco.queue.clone()
    moco.enqueue(first)
    moco.enqueue(second)  # 6 keys into 5 slots: the oldest key is replaced
    assert int(moco.queue_ptr) == 1
    assert torch.allclose(moco.queue, torch.cat([second[2:], first[1:], second[:2]]))
    assert not torch.allclose(moco.queue, initial)
    state = moco.state_dict()
    assert {"queue", "queue_ptr"} <= set(state)
    assert any(k.startswith("key_encoder.") for k in state)  # resume restores the key encoder too
    fresh = make_moco()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, moco.queue) and int(fresh.queue_ptr) == 1


def test_moco_training_step_trains_the_query_encoder_only(moco):
    moco.train()
    images = torch.randn(4, 1, 8, 8)
    queue = moco.queue.clone()
    loss, values, features = moco.contrastive_step(*TwoViews(ImageAugment())(images))
    loss.backward()
    assert all(p.grad is not None for p in moco.net.parameters())
    assert all(p.grad is None for p in moco.key_encoder.parameters())
    assert int(moco.queue_ptr) == 4 and torch.equal(moco.queue[4], queue[4])  # the step's 4 keys went in
    # (The loss and acc values themselves: tests/test_step_losses.py, against the formula by hand.)
    assert features.shape == (4, 8)  # the backbone features of the first views, for the online probe


# -- kNN monitor ---------------------------------------------------------------------------------
def test_knn_accuracy_leave_one_out():
    centers = F.normalize(torch.eye(3), dim=-1)
    labels = torch.arange(3).repeat_interleave(4)
    features = F.normalize(centers[labels] + 0.05 * torch.randn(12, 3), dim=-1)
    assert float(knn_accuracy(features, labels, k=3)) == 1.0
    # With its own point left out, a lone example of a class is outvoted by its neighbours.
    angles = torch.tensor([0.0, 2.0, 4.0, 30.0]).deg2rad()
    points = torch.stack([angles.cos(), angles.sin()], dim=-1)
    assert float(knn_accuracy(points, torch.tensor([0, 0, 0, 1]), k=3)) == 0.75


# -- augmentations -------------------------------------------------------------------------------
def test_augment_parts_switch_off_and_geometry_is_exact():
    x = torch.randn(4, 2, 10, 10)
    off = ImageAugment(crop_scale=None, rotation=0, translate=0, brightness=0, contrast=0, noise_std=0, erase_prob=0)
    assert torch.equal(off(x), x)
    whole_image = random_affine_theta(x, (1.0, 1.0), (1.0, 1.0), rotation=0, translate=0, hflip_prob=0)
    assert torch.allclose(apply_affine(x, whole_image), x, atol=1e-5)
    flipped = random_affine_theta(x, None, (1.0, 1.0), rotation=0, translate=0, hflip_prob=1.0)
    assert torch.allclose(apply_affine(x, flipped), x.flip(-1), atol=1e-5)
    # A quarter-area crop of an image that is 0 on its left half and 1 on its right half, at a fixed
    # place: the theta's scale is 0.5 and the crop stays inside the image.
    theta = random_affine_theta(x, (0.25, 0.25), (1.0, 1.0), rotation=0, translate=0, hflip_prob=0)
    assert torch.allclose(theta[:, 0, 0], torch.full((4,), 0.5)) and (theta[:, :, 2].abs() <= 0.5 + 1e-6).all()


def test_augment_is_seeded_and_views_differ():
    x = torch.randn(8, 1, 16, 16)
    augment = ImageAugment()
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    torch.manual_seed(3)
    view1, view2 = TwoViews(augment)(x)
    assert not torch.allclose(view1, view2)


def test_random_erasing_fills_a_rectangle():
    x = torch.ones(64, 1, 20, 20)
    erased = random_erasing(x, prob=1.0, scale=(0.1, 0.2), generator=torch.Generator().manual_seed(0))
    share = (erased == 0).float().mean(dim=(1, 2, 3))
    assert (share > 0.03).all() and (share < 0.35).all()
    for image in erased[:, 0]:  # the zeros form one axis-aligned rectangle
        rows, cols = (image == 0).nonzero(as_tuple=True)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(random_erasing(x, prob=0.0, scale=(0.1, 0.2)), x)
