"""What every benchmark script shares: the machine description, running ``train.py``, reading a
run's logged metrics, and writing results (``bench/results/<name>.json``) and their table in
``BENCHMARKS.md`` (between ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``)."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TOKENIZERS_PARALLELISM": "false"}


def machine() -> dict:
    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def measured_on(machine: dict, command: str, before: str = "", after: str = "") -> str:
    """The line under a results table: what was run, on what, when, and the command that reruns it."""
    where = machine["cuda_device"] or f"{machine['cpu_count']} CPUs"
    return f"\n\n{before}{where}, torch {machine['torch']}, {machine['date']}; `{command}`{after}."


def chosen(parser, names: list[str], known, what: str) -> list[str]:
    """The ``names`` given on the command line, all of ``known`` when none; an unknown one is an error."""
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return names or list(known)


def run_train(args: list[str], root: Path, timeout: int = 1800,
              results_glob: str = "outputs/*/*/results.json") -> tuple[Path, float]:
    """Run ``python train.py`` with outputs under ``root``; return the run directory (where
    ``results_glob`` finds its results file) and the wall time."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "train.py"), f"paths.root_dir={root}", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env={**os.environ, **OFFLINE}, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    [results] = root.glob(results_glob)
    return results.parent, wall


def logged(run_dir: Path, name: str) -> list[float]:
    """Every value the CSV logger wrote under ``name``, in order."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def write_results(name: str, payload: dict, table: str) -> None:
    """Save ``bench/results/<name>.json`` and put ``table`` into BENCHMARKS.md between the markers."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{start}\n{table.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    BENCHMARKS_MD.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
