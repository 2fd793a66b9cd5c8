"""The headline experiment as a user runs it: `python train.py experiment=label_efficiency` (SimCLR
pretraining on the digits, then fine-tuned vs from-scratch image classifiers at 1/5/10/100% of the
labels, 3 seeds each). Records the per-fraction means, spreads and gains, the wall time and where
the plot is.

    python bench/label_efficiency.py [extra train.py overrides ...]     # about 5 minutes on 2 CPU cores
    python bench/label_efficiency.py model=cnn_small                     # the small CNN instead of the ViT

Writes bench/results/label_efficiency.json (and a copy of the plot, label_efficiency.png, beside it)
and the "label_efficiency" table of BENCHMARKS.md; with a ``model=<name>`` override, the files and the
table are named ``label_efficiency_<name>``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, run_train, write_results  # noqa: E402

from headstart.pipeline.label_efficiency import amount_label  # noqa: E402


def main() -> None:
    extra = sys.argv[1:]
    models = [a.split("=", 1)[1] for a in extra if a.startswith("model=")]
    name = f"label_efficiency_{models[-1]}" if models else "label_efficiency"
    with tempfile.TemporaryDirectory(prefix="bench-label-efficiency-") as tmp:
        run_dir, wall = run_train(["experiment=label_efficiency", "logger=csv", *extra], Path(tmp),
                                  results_glob="outputs/*/*/pipeline.json")
        pipeline = json.loads((run_dir / "pipeline.json").read_text())
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "label_efficiency.png", RESULTS / f"{name}.png")
    summary = pipeline["label_efficiency"]
    command = " ".join(["python train.py experiment=label_efficiency", *extra])
    table = markdown_table(
        ["labels", "pretrained + fine-tuned", "from scratch", "gain (points)"],
        [[amount_label(row), f"{row['finetune_mean']:.3f} ± {row['finetune_std']:.3f}",
          f"{row['scratch_mean']:.3f} ± {row['scratch_std']:.3f}", f"{row['gain'] * 100:+.1f}"] for row in summary],
    ) + f"\n\n`{command}`: {wall / 60:.1f} min wall, {summary[0]['finetune_n']} seeds; plot: " \
        f"[bench/results/{name}.png](bench/results/{name}.png)"
    write_results(name, {"machine": machine(), "command": command, "wall_s": round(wall, 1),
                                       "metric": pipeline["metric"], "summary": summary, "runs": pipeline["runs"]},
                  table)
    print(table)


if __name__ == "__main__":
    main()
