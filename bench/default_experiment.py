"""The default experiment as a new user meets it: `python train.py` in a fresh directory (fresh data,
tokenizer and cache), once per pretraining seed. Each run fine-tunes and trains from scratch at its
own 3 seeds; the table has every run's means, gain, seeds won and wall time.

    python bench/default_experiment.py [--seeds 42 1 2] [extra train.py overrides ...]   # ~8 min on 2 CPU cores

Writes bench/results/default_experiment.json and the "default_experiment" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, measured_on, run_train, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[42, 1, 2],
                        help="top-level seeds (pretraining); 42 is the default command's")
    args, extra = parser.parse_known_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
            overrides = [] if seed == 42 else [f"seed={seed}"]
            run_dir, wall = run_train([*overrides, *extra], Path(tmp), results_glob="outputs/*/*/pipeline.json")
            pipeline = json.loads((run_dir / "pipeline.json").read_text())
        [row] = pipeline["label_efficiency"]
        per_seed = {(r["model"], r["seed"]): r["value"] for r in pipeline["runs"]}
        runs.append({"seed": seed, "wall_s": round(wall, 1), "summary": row, "runs": pipeline["runs"],
                     "gains_by_seed": {s: per_seed[("finetune", s)] - per_seed[("scratch", s)]
                                       for m, s in per_seed if m == "finetune"}})
    rows = [[" ".join(["python train.py", *([] if r["seed"] == 42 else [f"seed={r['seed']}"]), *extra]),
             f"{r['summary']['finetune_mean']:.3f} ± {r['summary']['finetune_std']:.3f}",
             f"{r['summary']['scratch_mean']:.3f} ± {r['summary']['scratch_std']:.3f}",
             f"{r['summary']['gain'] * 100:+.1f} [{r['summary']['gain_low'] * 100:+.1f}, "
             f"{r['summary']['gain_high'] * 100:+.1f}]",
             ", ".join(f"{g * 100:+.1f}" for g in r["gains_by_seed"].values()),
             f"{r['summary']['seeds_won']}/{r['summary']['seeds_paired']}", f"{r['wall_s'] / 60:.1f} min"]
            for r in runs]
    table = markdown_table(["command (fresh directory and cache)", "pretrained + fine-tuned", "from scratch",
                            "gain (points) [95% interval]", "gain per fine-tuning seed", "seeds won", "wall"], rows)
    command = " ".join(["python bench/default_experiment.py", *extra])
    table += measured_on(machine(), command, before="Test accuracy on the 150 test paragraphs, 100 labelled "
                                                    "training paragraphs, mean ± std over 3 fine-tuning seeds; ")
    write_results("default_experiment", {"machine": machine(), "command": command, "runs": runs}, table)
    print(table)


if __name__ == "__main__":
    main()
