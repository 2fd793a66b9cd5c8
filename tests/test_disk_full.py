"""A full disk (here: a file-size limit, which fails writes the same way, with an OSError) while a
checkpoint or an export is written: one message naming the file, its directory and the last good
checkpoint; no partial file or export.tmp directory is left behind."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from conftest import OFFLINE_ENV, TRAIN

pytestmark = pytest.mark.slow


def run_with_file_size_limit(args: list[str], root, limit_bytes: int) -> subprocess.CompletedProcess:
    """train.py where no file may grow past ``limit_bytes`` (Python ignores SIGXFSZ, so the write fails)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    root.mkdir(parents=True, exist_ok=True)
    # Hydra's own record (.hydra/hydra.yaml) is larger than the limits used here: not written.
    return subprocess.run([sys.executable, str(TRAIN), f"paths.root_dir={root}", "hydra.output_subdir=null", *args],
                          cwd=root, text=True,
                          capture_output=True, env={**os.environ, **OFFLINE_ENV}, timeout=600, preexec_fn=limit)


def test_a_checkpoint_that_cannot_be_written_is_named_and_leaves_nothing_partial(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_with_file_size_limit(["experiment=vision_classification", "model.arch.hidden_sizes=[8,16]",
                                     "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run_dir}"],
                                    tmp_path, 20_000)  # the checkpoint is ~42 kB, every other file a few kB
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "headstart: error: could not write the checkpoint" in proc.stderr, proc.stderr[-3000:]
    assert str(run_dir / "checkpoints") in proc.stderr and "no checkpoint of this run was written" in proc.stderr
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.suffix == ".ckpt"]


def test_an_export_that_cannot_be_written_is_named_and_leaves_no_temporary_directory(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_with_file_size_limit(["experiment=vision_dae", "model.arch.hidden_sizes=[8,16]", "callbacks=none",
                                     "trainer.enable_checkpointing=false",
                                     "trainer.max_epochs=1", "logger=none", "test_after_fit=false",
                                     f"hydra.run.dir={run_dir}"], tmp_path, 4_000)  # the weights are ~6 kB
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"headstart: error: could not write the export {run_dir / 'export'}" in proc.stderr, proc.stderr[-3000:]
    assert not [p for p in run_dir.iterdir() if p.name.startswith("export")]
