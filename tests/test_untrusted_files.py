"""Untrusted files: a checkpoint built to run code is refused before anything unpickles it, headstart
reads checkpoints as data only, and no API key ends up in a run's files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_user_error, only_run_dir, run_train

SRC = REPO / "src" / "headstart"


class _RunsCode:
    """Unpickling this creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    # Everything a Lightning checkpoint has, plus the payload.
    torch.save({"state_dict": {}, "global_step": 3, "epoch": 0, "loops": {}, "payload": _RunsCode(marker)}, path)
    return path, marker


def test_read_checkpoint_refuses_code_and_names_it(malicious_checkpoint):
    from headstart.checkpoints import read_checkpoint
    from headstart.errors import CheckpointError

    path, marker = malicious_checkpoint
    with pytest.raises(CheckpointError, match="posix.system|os.system") as err:
        read_checkpoint(str(path))
    assert str(path) in str(err.value) and "weights_only=True" in str(err.value)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["ckpt_path", "resume"])
def test_train_refuses_a_malicious_checkpoint(tmp_path, malicious_checkpoint, setting):
    path, marker = malicious_checkpoint
    # resume=<run dir> finds its checkpoints/last.ckpt, as resume=auto would.
    override = f"ckpt_path={path}" if setting == "ckpt_path" else f"resume={path.parent.parent}"
    proc = run_train(["experiment=vision_classification", "logger=csv", override], tmp_path)
    assert_user_error(proc, str(path), "not a plain checkpoint", "system")
    assert not marker.exists(), "the checkpoint's code ran"


def test_headstart_loads_checkpoints_as_data_only():
    """Every torch.load in headstart's code says weights_only=True (Lightning's goes through
    AtomicCheckpointIO, which forces it)."""
    calls = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start():text.index(")", match.start()) + 1]
            calls.append((path.relative_to(SRC), "weights_only=True" in call))
    assert calls and all(safe for _, safe in calls), calls


@pytest.mark.slow
def test_no_api_key_in_the_run_directory(tmp_path):
    key = "hs0fake0wandb0key0" + "7" * 22  # the 40 characters of a W&B key
    os.environ["WANDB_API_KEY"] = key
    try:
        proc = run_train(["experiment=vision_classification", "logger=default", "trainer.max_epochs=1",
                          "model.arch.hidden_sizes=[8,16,32]", "callbacks.step_checkpoint.every_n_train_steps=5"],
                         tmp_path)
    finally:
        del os.environ["WANDB_API_KEY"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    leaking = [str(p.relative_to(run_dir)) for p in files if key.encode() in p.read_bytes()]
    assert not leaking, leaking
    assert key not in proc.stdout + proc.stderr
