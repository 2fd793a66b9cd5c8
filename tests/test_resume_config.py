"""Resuming checks the command's config against the run's recorded one before writing anything: a
change to what is trained is refused naming the keys, a safe one (training longer) is allowed and
recorded beside the original config.yaml, never over it; a damaged results.json is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, run_train

from headstart.pipeline.resume import config_changes

DIGITS = ["experiment=vision_classification", "model.arch.hidden_sizes=[8,16]", "trainer.max_epochs=1",
          "logger=csv", "test_after_fit=false"]


def snapshot(run_dir: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


def test_config_changes_compare_what_is_trained():
    recorded = {"trainer": {"max_epochs": 1, "default_root_dir": "/a"}, "model": {"arch": {"hidden_size": 128}},
                "paths": {"output_dir": "/a"}, "logger": {"csv": {"save_dir": "/a"}}}
    current = {"trainer": {"max_epochs": 3, "default_root_dir": "/b"}, "model": {"arch": {"hidden_size": 64}},
               "paths": {"output_dir": "/b"}, "logger": None, "task": {"new_key": 1}}
    assert config_changes(recorded, current) == {"model.arch.hidden_size": (128, 64), "task.new_key": ("<absent>", 1),
                                                 "trainer.max_epochs": (1, 3)}


@pytest.fixture
def unfinished_run(tmp_path) -> tuple[list[str], Path]:
    """A run that stopped after its first epoch's checkpoint (its results.json gone, as if killed)."""
    run_dir = tmp_path / "run"
    command = [*DIGITS, f"hydra.run.dir={run_dir}", "resume=auto"]
    proc = run_train(command, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir / "results.json").unlink()
    return command, run_dir


@pytest.mark.slow
def test_resume_with_another_architecture_is_refused_and_writes_nothing(unfinished_run, tmp_path):
    command, run_dir = unfinished_run
    before = snapshot(run_dir)
    proc = run_train([*command, "model.arch.hidden_sizes=[8,32]"], tmp_path)
    [attempt] = {p.parent for p in set(snapshot(run_dir)) - set(before) if ".hydra" in p.parts}  # Hydra's, its own
    assert_user_error(proc, "was trained with another config", "model.arch.hidden_sizes: [8, 16] -> [8, 32]",
                      "config.yaml")
    after = snapshot(run_dir)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p) and p.parent != attempt}
    # Only Hydra's log of the attempt and the lock it held: the config, records, metrics and checkpoints stay.
    assert changed <= {run_dir / "train.log", run_dir / ".headstart.lock"}, changed


@pytest.mark.slow
def test_training_longer_on_resume_is_allowed_and_recorded_beside_the_config(unfinished_run, tmp_path):
    command, run_dir = unfinished_run
    original = (run_dir / "config.yaml").read_bytes()
    proc = run_train([*command, "trainer.max_epochs=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "config.yaml").read_bytes() == original
    assert "max_epochs: 2" in (run_dir / "config.resume1.yaml").read_text()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumes"][0]["config_changes"] == {"trainer.max_epochs": [1, 2]}
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 2

    # Finished now: a further change would not apply, and says how to train on from its checkpoint.
    proc = run_train([*command, "trainer.max_epochs=3"], tmp_path)
    assert_user_error(proc, "already finished", "trainer.max_epochs", "ckpt_path=")


@pytest.mark.slow
def test_a_damaged_results_file_is_named(unfinished_run, tmp_path):
    command, run_dir = unfinished_run
    (run_dir / "results.json").write_text('{"completed": tr')
    proc = run_train(command, tmp_path)
    assert_user_error(proc, f"{run_dir / 'results.json'} is damaged", "move the file away")
