"""One run directory, one run: a process holds the directory's OS lock for its whole run (resumed runs
too), and any other process started with that directory is refused before it writes anything."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

from conftest import OFFLINE_ENV, TRAIN, assert_user_error, run_train

DIGITS = ["experiment=vision_classification", "model.arch.hidden_sizes=[8,16]", "trainer.max_epochs=1",
          "logger=csv", "test_after_fit=false"]


def test_two_processes_started_on_one_run_dir_train_once(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(TRAIN), f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", *DIGITS]
    env = {**os.environ, **OFFLINE_ENV}
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0, 2], [err[-1500:] for _, err in outcomes]
    refused = next(err for code, err in outcomes if code == 2)
    assert "headstart: error:" in refused and "Traceback" not in refused
    # The directory holds one run: one record of one start, one results file.
    info = json.loads((run_dir / "run_info.json").read_text())
    assert "resumes" not in info
    assert json.loads((run_dir / "results.json").read_text())["completed"]
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]


def test_a_run_dir_in_use_is_refused_even_to_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".headstart.lock", "w") as held:  # another process's run, still going
        held.write("4242 on elsewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_train([*DIGITS, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path)
        assert_user_error(proc, f"{run_dir} is in use by a run that is still going", "4242 on elsewhere")
        assert sorted(p.name for p in run_dir.iterdir()) == [".headstart.lock"]  # nothing written
    # Released (its process ended): the same command runs.
    proc = run_train([*DIGITS, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_run_dir_that_is_a_file_is_named(tmp_path):
    target = tmp_path / "not_a_dir"
    target.write_text("x")
    proc = run_train([*DIGITS, f"hydra.run.dir={target}"], tmp_path)
    assert_user_error(proc, f"hydra.run.dir={target} is a file")
    assert target.read_text() == "x"
