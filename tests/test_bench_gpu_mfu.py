"""bench/gpu_mfu.py, the GPU benchmark, before a GPU is at hand: its help says how to run it on the lent
device machine, a machine without CUDA gets one clear line, and ``--smoke`` runs every row and system
end to end on the CPU with tiny models, writing only where it is told."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import OFFLINE_ENV, REPO, write_corpus

SCRIPT = REPO / "bench" / "gpu_mfu.py"
ROWS = ("mlm", "clm512", "clm1024", "small")
SYSTEMS = ("headstart", "plain", "hf_trainer")


def run_script(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_help_says_how_to_run_it_on_the_device_and_how_long_it_takes():
    proc = run_script("--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "PYTHONPATH=src:.gpu_deps" in text and "--corpus .gpu_deps/data/tinyshakespeare.txt --out $OUT" in text
    assert 'carry [".gpu_deps"]' in text
    assert "minutes" in text and "--smoke" in text and "--table-from" in text


def test_without_cuda_it_stops_with_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = run_script()
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "CUDA" in lines[0] and "--smoke" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def _digest(path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.slow
def test_smoke_runs_every_row_and_system_on_the_cpu(tmp_path):
    """About a minute on 2 cores: four train.py runs and eight in-process baselines, each a few steps of a
    2-layer, 64-wide model. The HF Trainer needs accelerate (the ``bench`` extra); without it that system
    is left out here."""
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=1500, seed=0)
    systems = SYSTEMS if importlib.util.find_spec("accelerate") else SYSTEMS[:2]
    kept = {path: _digest(path) for path in (REPO / "BENCHMARKS.md", REPO / "bench" / "results" / "gpu_mfu.json")}
    out = tmp_path / "out"
    proc = run_script("--smoke", "--corpus", str(corpus), "--out", str(out), "--systems", *systems, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((out / "gpu_mfu.json").read_text())
    assert payload["smoke"] is True
    assert set(payload["rows"]) == set(ROWS)
    for name in ROWS:
        row = payload["rows"][name]
        assert row["facts"]["model_vocab"] > 0
        for system in systems:
            run = row["systems"][system]
            assert "error" not in run and "skipped" not in run, (name, system, run)
            assert run["tokens_per_s"] > 0 and run["steps_per_s"] > 0, (name, system, run)
        if len(systems) == 3:
            assert row["ratios"]["vs_plain"] > 0 and row["ratios"]["vs_hf_trainer"] > 0
    table = (out / "gpu_mfu.md").read_text()
    assert all(f"| {name} |" in table for name in ROWS)
    assert {path: _digest(path) for path in kept} == kept  # BENCHMARKS.md and bench/results left alone
