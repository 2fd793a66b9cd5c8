"""The README's commands: every `python train.py ...` line in its code blocks composes as written (a
config Hydra accepts, from a fresh directory), and the first command, the default experiment, runs
exactly as written and shows what pretraining bought."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
from conftest import OFFLINE_ENV, REPO, TRAIN, two_at_a_time


def readme_train_commands() -> list[list[str]]:
    """The arguments of every `python train.py` command in the README's bash blocks (continuation
    lines joined, comments dropped, placeholders such as <date> filled with their names)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            # Placeholders (<date>/<time>, <run>) stand for a value the reader types.
            words = shlex.split(re.sub(r"<(\w+)>", r"\1", line), comments=True)
            if words[:2] == ["python", "train.py"]:
                commands.append(words[2:])
    return commands


COMMANDS = readme_train_commands()


def test_the_readme_has_its_commands():
    assert [] in COMMANDS  # the default, bare
    assert any("experiment=label_efficiency_text_files" in c for c in COMMANDS)
    assert len(COMMANDS) >= 15


def test_every_readme_command_composes(tmp_path):
    def compose(args: list[str]) -> subprocess.CompletedProcess:
        if "-m" in args or "--multirun" in args:  # --cfg cannot go with --multirun: compose the sweep's first job
            args = [a.split(",")[0] if "=" in a and "[" not in a else a for a in args if a not in ("-m", "--multirun")]
        return subprocess.run([sys.executable, str(TRAIN), *args, "--cfg", "job"], cwd=tmp_path, text=True,
                              capture_output=True, env={**__import__("os").environ, **OFFLINE_ENV}, timeout=120)

    cases = []
    for i, args in enumerate(COMMANDS):
        def case(args=args):
            return compose(args)
        case.__name__ = f"command {i}: {' '.join(args)}"
        cases.append(case)
    results = two_at_a_time(lambda case: case(), cases)
    failed = {name: proc.stderr[-600:] for name, proc in results.items() if proc.returncode != 0}
    assert not failed, failed


@pytest.mark.slow
def test_the_default_experiment_runs_as_written_and_pretraining_pays(tmp_path):
    """`python train.py` in an empty directory (its own data, tokenizer and cache): the table of test
    accuracy over 3 seeds, with pretrained + fine-tuned above scratch on average."""
    proc = subprocess.run([sys.executable, str(TRAIN)], cwd=tmp_path, text=True, capture_output=True,
                          env={**__import__("os").environ, **OFFLINE_ENV}, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [record] = tmp_path.glob("outputs/*/*/pipeline.json")
    [row] = json.loads(record.read_text())["label_efficiency"]
    assert row["train_examples"] == 100 and row["finetune_n"] == row["scratch_n"] == 3
    assert row["gain"] > 0.02, row
    assert "What pretraining bought" in proc.stdout and "seeds won" in proc.stdout
    assert str(record.parent) in proc.stdout.replace("\n", "")


@pytest.mark.slow
def test_the_readme_sweep_runs_as_written_from_any_directory(tmp_path):
    """The README's multirun example, as written, from a fresh directory: no paths.root_dir (the sweep
    directory resolves before Hydra's runtime config exists), one finished job per value."""
    [sweep] = [c for c in COMMANDS if "-m" in c]
    proc = subprocess.run([sys.executable, str(TRAIN), *sweep], cwd=tmp_path, text=True, capture_output=True,
                          env={**__import__("os").environ, **OFFLINE_ENV}, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import yaml

    jobs = sorted(tmp_path.glob("outputs/multirun/*/*/*/results.json"))
    rates = [yaml.safe_load((job.parent / "config.yaml").read_text())["task"]["optimizer"]["lr"] for job in jobs]
    assert rates == [3e-4, 1e-3], jobs
    assert all(json.loads(job.read_text())["completed"] for job in jobs)


def test_cfg_job_resolve_prints_the_resolved_config(tmp_path):
    proc = subprocess.run([sys.executable, str(TRAIN), "--cfg", "job", "--resolve"], cwd=tmp_path, text=True,
                          capture_output=True, env={**__import__("os").environ, **OFFLINE_ENV}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"root_dir: {tmp_path}" in proc.stdout and "${" not in proc.stdout
