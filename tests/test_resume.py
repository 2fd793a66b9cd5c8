"""Surviving kills: a run killed (SIGKILL) or preempted (SIGTERM) mid-epoch and resumed with the same
command ends with the very weights of a run never stopped; checkpoints are written atomically; the
run directory records what reproduces it, and the same seed gives the same loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, logged, only_run_dir, run_train

TESTS = Path(__file__).resolve().parent

# 600 lines in blocks of 32 tokens, 16 a batch: 18 steps an epoch (the short last batch of blocks is
# dropped); a checkpoint every 5 steps, so the ones at steps 5..35 (but 18 and 36, the epoch ends) are
# mid-epoch. Masking and dropout draw random numbers, so an exact resume needs the generators' states as
# well as the data order.
STEPS_PER_CHECKPOINT = 5


def _mlm_args(corpus: Path) -> list[str]:
    return ["experiment=text_mlm", "data=text_files", f"data.train_files=[{corpus / 'train.txt'}]",
            f"data.val_files=[{corpus / 'val.txt'}]", "data.max_length=32", "data.vocab_size=300",
            "data.batch_size=16", "trainer.max_epochs=2", "logger=csv", "test_after_fit=false",
            "trainer.log_every_n_steps=2", f"callbacks.step_checkpoint.every_n_train_steps={STEPS_PER_CHECKPOINT}",
            *TINY_MODEL]


def _signal_at(step: int, signal_name: str) -> list[str]:
    return ["+callbacks.stop._target_=signal_at_step.SignalAtStep", f"+callbacks.stop.step={step}",
            f"+callbacks.stop.signal_name={signal_name}"]


@pytest.fixture(autouse=True)
def _helper_importable(monkeypatch):
    """train.py's processes import the test's SignalAtStep callback."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_dir, shared_cache) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    proc = run_train(_mlm_args(corpus_dir), root, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(root)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, corpus_dir, shared_cache, uninterrupted):
    run_dir = tmp_path / "run"
    command = [*_mlm_args(corpus_dir), f"hydra.run.dir={run_dir}", "resume=auto"]
    # Killed two steps after the checkpoint of step 10: those two steps are lost and trained again.
    killed = run_train([*command, *_signal_at(12, "SIGKILL")], tmp_path, shared_cache)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 10 and not (run_dir / "results.json").exists()

    resumed = run_train(command, tmp_path, shared_cache)  # the very same command line
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    _assert_same_weights(run_dir, uninterrupted)
    # The loss curve too, the rows logged before the kill kept (up to the checkpoint) and not doubled.
    assert logged(run_dir, "train/loss_step") == logged(uninterrupted, "train/loss_step")
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed_from"] is None and info["resumes"][0]["resumed_from"].endswith("last.ckpt")

    again = run_train(command, tmp_path, shared_cache)  # finished: nothing is trained or written again
    assert again.returncode == 0 and "already finished" in again.stdout
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 36


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "exit_code", "said"), [("SIGTERM", 143, "SIGTERM"),
                                                               ("SIGINT", 130, "Ctrl-C (SIGINT)")])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_that_resume_continues(signal_name, exit_code, said, tmp_path, corpus_dir,
                                                                    shared_cache, uninterrupted):
    run_dir = tmp_path / "run"
    command = [*_mlm_args(corpus_dir), f"hydra.run.dir={run_dir}", "resume=auto"]
    stopped = run_train([*command, *_signal_at(12, signal_name)], tmp_path, shared_cache)
    assert stopped.returncode == exit_code, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert f"stopped by {said} at step 12" in stopped.stderr and "resume=auto" in stopped.stderr
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 12  # saved at the signal, not at the step checkpoint before it

    resumed = run_train(command, tmp_path, shared_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(run_dir, uninterrupted)


@pytest.mark.slow
def test_same_seed_same_loss_curve_and_the_run_is_recorded(tmp_path, corpus_dir, shared_cache, uninterrupted):
    proc = run_train(_mlm_args(corpus_dir), tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = only_run_dir(tmp_path)
    losses = logged(again, "train/loss_step")
    assert len(losses) >= 10 and losses == logged(uninterrupted, "train/loss_step")

    info = json.loads((again / "run_info.json").read_text())
    assert {"started", "command", "cwd", "host", "platform", "git", "packages", "resumed_from"} <= set(info)
    assert info["command"][-1] == f"paths.cache_dir={shared_cache}"
    assert set(info["git"]) == {"commit", "dirty"}
    for package in ("python", "torch", "lightning", "transformers", "hydra-core", "headstart", "tokenizers",
                    "datasets", "torchmetrics", "wandb"):
        assert package in info["packages"], package
    assert info["packages"]["torch"] == torch.__version__
    assert (again / "config.yaml").is_file()


def test_git_state_outside_a_checkout(tmp_path):
    from headstart.pipeline.run_record import git_state

    assert git_state(tmp_path) == {"commit": None, "dirty": None}


# -- atomic checkpoints -------------------------------------------------------------------------
def _save_then_fail_halfway(path: Path, fail) -> None:
    """Save a checkpoint, then write half of the next one and ``fail()`` (crash or kill)."""
    from headstart.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)

    def save_half(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"x" * 4096)  # the start of a zip file, then nothing
        f.flush()
        fail()

    torch.save, real_save = save_half, torch.save
    try:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2}, path)
    finally:
        torch.save = real_save


def _assert_previous_checkpoint_whole(path: Path) -> None:
    from headstart.checkpoints import read_checkpoint
    from headstart.pipeline.resume import latest_checkpoint

    checkpoint = read_checkpoint(str(path))
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.ones(1000))
    assert latest_checkpoint(path.parent.parent) == path  # a half-written temporary file is never taken


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"

    def disk_full():
        raise OSError("No space left on device")

    from headstart.errors import CheckpointError

    with pytest.raises(CheckpointError, match="No space left on device") as failure:
        _save_then_fail_halfway(path, disk_full)
    assert f"the last good checkpoint is {path}" in str(failure.value)
    _assert_previous_checkpoint_whole(path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the temporary file is cleaned up


@pytest.mark.slow
def test_a_process_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    child = ("import os, sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]); import test_resume; "
             "test_resume._save_then_fail_halfway(Path(sys.argv[1]), lambda: os._exit(9))")
    proc = subprocess.run([sys.executable, "-c", child, str(path), str(TESTS)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    _assert_previous_checkpoint_whole(path)
