"""How long a user waits, and how much memory the default experiment takes.

- ``--help``: wall time of ``python train.py --help`` (median of 3).
- Time to the first optimizer step of the default experiment (``python train.py``), as headstart
  logs it (from the process's start). Cold: a fresh project folder, so the built-in text is written
  out, the tokenizer trained and the text tokenized first; warm: a user's second and later runs in
  the same folder, with all of that cached. The warm runs are stopped once the first step is logged.
- Peak resident memory of the default experiment (pretrain, finetune and scratch stages), from the
  cold run, which runs every stage with one epoch each (memory does not grow with epochs).

    python bench/startup_memory.py          # about 2.5 min on 2 CPU cores

Writes bench/results/startup_memory.json and the "startup_memory" table of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OFFLINE, REPO, machine, markdown_table, measured_on, write_results  # noqa: E402

FIRST_STEP = re.compile(r"First optimizer step ([\d.]+) s after the process started")
ONE_EPOCH = ['pipeline.pretrain.overrides=["trainer.max_epochs=1"]', 'pipeline.finetune.overrides=["trainer.max_epochs=1"]']


def help_time() -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def default_run(root: Path, shared: Path, stop_at_first_step: bool) -> dict:
    """Run the default experiment; the first step's time as logged, and (when run to the end) the
    peak RSS over its stages and its wall time."""
    root.mkdir(parents=True)
    # The data and cache folders are shared, as they are between a user's runs in one project folder.
    cmd = [sys.executable, str(REPO / "train.py"), f"paths.root_dir={root}", f"paths.data_dir={shared / 'data'}",
           f"paths.cache_dir={shared / 'cache'}", *ONE_EPOCH]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **OFFLINE}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first_step = None
    for line in proc.stdout:
        match = FIRST_STEP.search(line)
        if match and first_step is None:
            first_step = float(match.group(1))
            if stop_at_first_step:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    result = {"first_step_s": first_step, "wall_s": round(time.perf_counter() - start, 1)}
    if not stop_at_first_step:
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed")
        stages = [json.loads(p.read_text()) for p in root.glob("outputs/2*/*/*/results.json")]
        result["peak_rss_mb"] = max(s["peak_rss_mb"] for s in stages)
    return result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="headstart-startup-"))
    cold = default_run(work / "cold", work, stop_at_first_step=False)
    warm = [default_run(work / f"warm{i}", work, stop_at_first_step=True)["first_step_s"] for i in range(3)]
    payload = {"machine": machine(), "help_s": round(help_time(), 2), "cold": cold, "warm_first_step_s": warm,
               "command": "python train.py " + " ".join(ONE_EPOCH)}
    rows = [
        ["`python train.py --help`", f"{payload['help_s']:.2f} s", "–"],
        ["first optimizer step, warm cache (median of 3)", f"{statistics.median(warm):.1f} s",
         f"{min(warm):.1f}–{max(warm):.1f} s"],
        ["first optimizer step, cold cache (tokenizer trained, text tokenized)", f"{cold['first_step_s']:.1f} s", "–"],
        ["peak RSS of the default experiment (all stages)", f"{cold['peak_rss_mb']:.0f} MiB", "–"],
        ["wall time of the default experiment, 1 epoch per stage, cold", f"{cold['wall_s']:.0f} s", "–"],
    ]
    table = markdown_table(["measure", "value", "spread"], rows)
    table += measured_on(payload["machine"], "python bench/startup_memory.py",
                         after=" (times from the process's start, as `train.py` logs them)")
    write_results("startup_memory", payload, table)
    print(table)


if __name__ == "__main__":
    main()
