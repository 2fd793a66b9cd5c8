"""Every CPU benchmark row, one after another, then one summary table with the ratios and their spread.

    python bench/run_all.py          # about 17 min on 2 CPU cores; needs the bench extra (accelerate)

Runs bench/lm_throughput.py (train.py vs a plain PyTorch loop vs HF Trainer, 3 repeats),
bench/startup_memory.py (--help, time to the first step, peak RSS), bench/data_pipeline.py
(tokenization throughput and the cache) and bench/speed_switches.py (every speed switch, DDP 2 vs 1
process). Each writes its JSON under bench/results/ and its table in BENCHMARKS.md; the longer runs
(every objective, label efficiency) have their own scripts. GPU rows need a GPU machine:
``python bench/gpu_mfu.py`` there.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, markdown_table  # noqa: E402

SCRIPTS = ["lm_throughput.py", "startup_memory.py", "data_pipeline.py", "speed_switches.py"]


def summary() -> str:
    rows = []
    lm = json.loads((RESULTS / "lm_throughput.json").read_text())
    for objective, result in lm["objectives"].items():
        for name, key, target in (("plain PyTorch loop", "ratio_vs_plain", 0.97), ("HF Trainer", "ratio_vs_hf_trainer", 1.2)):
            values = result[key]
            ratio = statistics.median(values)  # a shared machine has outliers
            rows.append([f"{objective.upper()} tokens/s, train.py / {name} (median of repeats)", f"{ratio:.3f}x",
                         f"{min(values):.3f}–{max(values):.3f}", f">= {target}x", "met" if ratio >= target else "not met"])
    startup = json.loads((RESULTS / "startup_memory.json").read_text())
    warm = startup["warm_first_step_s"]
    rows.append(["first optimizer step of `python train.py` (warm cache)", f"{statistics.median(warm):.1f} s",
                 f"{min(warm):.1f}–{max(warm):.1f} s", "<= 8 s", "met" if statistics.median(warm) <= 8 else "not met"])
    rows.append(["`python train.py --help`", f"{startup['help_s']:.2f} s", "–", "–", "–"])
    rows.append(["peak RSS of the default experiment", f"{startup['cold']['peak_rss_mb']:.0f} MiB", "–", "–", "–"])
    data = json.loads((RESULTS / "data_pipeline.json").read_text())
    for run in data["runs"]:
        if not run["from_cache"]:
            rows.append([f"tokenization, num_proc={run['num_proc']}", f"{run['tokens_per_s']:,} tokens/s", "–", "–", "–"])
    rows.append(["second preparation skips tokenization", "yes" if all(r["from_cache"] for r in data["runs"][1::2])
                 else "no", "–", "–", "–"])
    switches = json.loads((RESULTS / "speed_switches.json").read_text())
    for row in switches["switches"]:
        if row["ratio"]:
            rows.append([row["about"], f"{row['ratio']:.2f}x", "–", "–", "–"])
    return markdown_table(["measure", "value", "spread", "target", ""], rows)


def main() -> None:
    start = time.perf_counter()
    for script in SCRIPTS:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent / script)], check=True)
        print(f"{script}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(summary())
    print(f"\nAll CPU rows in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
