"""Reliability pieces in process: the NaN/inf loss guard, resume planning (which checkpoint, which
directory) and the training loader that a resumed run continues mid-epoch."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from headstart.data.resumable import EpochShuffleSampler, ResumableDataLoader
from headstart.errors import ConfigError, TrainingError
from headstart.pipeline.resume import latest_checkpoint, plan_resume
from headstart.training_guards import NonFiniteLossGuard


def _trainer(checkpoint_dir, step: int = 7):
    return SimpleNamespace(global_step=step, current_epoch=1, log_every_n_steps=50,
                           checkpoint_callbacks=[ModelCheckpoint(dirpath=str(checkpoint_dir))])


def test_nan_loss_stops_naming_step_and_last_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    guard, trainer = NonFiniteLossGuard(), _trainer(tmp_path / "checkpoints")
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, 2)
    with pytest.raises(TrainingError, match=r"became nan at step 7 \(epoch 1, batch 3\)") as err:
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 3)
    assert f"last good checkpoint is {tmp_path / 'checkpoints' / 'last.ckpt'}" in str(err.value)


def test_inf_loss_with_warn_goes_on(tmp_path, caplog):
    guard = NonFiniteLossGuard(action="warn")
    with caplog.at_level(logging.WARNING):
        guard.on_train_batch_end(_trainer(tmp_path), None, torch.tensor(float("inf")), None, 0)
    assert "loss is inf at step 7" in caplog.text
    with pytest.raises(ConfigError, match="callbacks.nan_guard.action='skip'"):
        NonFiniteLossGuard(action="skip")


def test_latest_checkpoint_prefers_last_then_newest(tmp_path):
    directory = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    directory.mkdir()
    (directory / "epoch000-step5.ckpt").write_bytes(b"")
    (directory / ".last.ckpt.tmp123").write_bytes(b"")  # a write that was cut short
    assert latest_checkpoint(tmp_path) == directory / "epoch000-step5.ckpt"
    (directory / "last.ckpt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == directory / "last.ckpt"


def test_plan_resume(tmp_path):
    run = tmp_path / "run"
    assert plan_resume(None, "x.ckpt", run).ckpt_path == "x.ckpt"
    with pytest.raises(ConfigError, match="set one"):
        plan_resume("auto", "x.ckpt", run)
    fresh = plan_resume("auto", None, run)  # nothing there yet: start in it
    assert fresh.ckpt_path is None and fresh.output_dir == run and fresh.finished is None
    with pytest.raises(ConfigError, match="does not exist"):
        plan_resume(str(tmp_path / "nope"), None, run)
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        plan_resume(str(run), None, tmp_path / "new")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    elsewhere = plan_resume(str(run), None, tmp_path / "new")  # a run directory goes on in place
    assert elsewhere.ckpt_path == str(run / "checkpoints" / "last.ckpt") and elsewhere.output_dir == run
    as_file = plan_resume(str(run / "checkpoints" / "last.ckpt"), None, tmp_path / "new")
    assert as_file.output_dir == tmp_path / "new"
    (run / "results.json").write_text(json.dumps({"completed": True, "metrics": {}}))
    assert plan_resume("auto", None, run).finished == {"completed": True, "metrics": {}}


def _noisy_batch(examples):
    """A collator that draws random numbers, as masking and augmentation do."""
    return torch.tensor(examples) + torch.rand(len(examples))


def _loader(batches_trained=None) -> ResumableDataLoader:
    loader = ResumableDataLoader(list(range(50)), batch_size=8, sampler=EpochShuffleSampler(50),
                                 collate_fn=_noisy_batch)
    loader.batches_trained = batches_trained
    return loader


def test_resumable_loader_draws_the_order_of_shuffle_true():
    from torch.utils.data import DataLoader

    torch.manual_seed(3)
    plain = [b for _ in range(2) for b in DataLoader(list(range(50)), batch_size=8, shuffle=True,
                                                    collate_fn=_noisy_batch)]
    after_plain = torch.rand(3)
    torch.manual_seed(3)
    resumable = [b for _ in range(2) for b in _loader()]
    assert all(torch.equal(a, b) for a, b in zip(plain, resumable, strict=True))
    assert torch.equal(after_plain, torch.rand(3))  # the same draws from the global generator


def _train_on(batches) -> list[torch.Tensor]:
    """Each batch, then a step that draws random numbers (dropout); then the next epoch's first draw."""
    seen = []
    for batch in batches:
        seen.append(batch)
        torch.rand(5)
    return [*seen, torch.rand(2)]


def test_resumable_loader_goes_on_mid_epoch_with_the_same_batches_and_draws():
    trained = []
    torch.manual_seed(0)
    loader = _loader(lambda: len(trained))
    batches = iter(loader)
    for _ in range(3):
        trained.append(next(batches))
        torch.rand(5)
    position = loader.position()  # a checkpoint after three steps
    uninterrupted = _train_on(batches)

    torch.manual_seed(1234)  # a new process: other generator states, until the position is restored
    resumed = _loader()
    resumed.resume_at(position)
    got = _train_on(resumed)
    assert len(got) == len(uninterrupted) == 5  # 7 batches an epoch, 3 trained, and the draw after
    assert all(torch.equal(a, b) for a, b in zip(got, uninterrupted, strict=True))


def test_resumable_loader_with_a_fetcher_that_reads_ahead():
    """A fetcher one batch ahead has fetched batch 4 when the checkpoint after three steps is written."""
    trained = []
    torch.manual_seed(0)
    loader = _loader(lambda: len(trained))
    batches = iter(loader)
    ahead = next(batches)
    for _ in range(3):
        trained.append(ahead)
        ahead = next(batches)
        torch.rand(5)
    position = loader.position()
    uninterrupted = _train_on([ahead, *batches])

    torch.manual_seed(1234)
    resumed = _loader()
    resumed.resume_at(position)
    fetched = iter(resumed)
    first = next(fetched)  # read ahead at once, as the resumed run's fetcher would
    got = _train_on([first, *fetched])
    assert all(torch.equal(a, b) for a, b in zip(got, uninterrupted, strict=True))
