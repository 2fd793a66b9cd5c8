"""Every pretraining objective's default experiment, run as a user runs it: throughput on this
machine (examples and tokens or images per second, from the throughput monitor, median over the
run), wall time, and the final training and validation loss.

    python bench/objectives.py                      # all objectives (about 20 min on 2 CPU cores)
    python bench/objectives.py vision_simclr text_clm   # some of them

Writes bench/results/objectives.json and the "objectives" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import chosen, logged, machine, markdown_table, median, run_train, write_results  # noqa: E402

# experiment -> (objective, what an item is)
OBJECTIVES = {
    "text_mlm": ("masked LM (BERT)", "tokens"),
    "text_mlm_nsp": ("masked LM + next-sentence prediction", "tokens"),
    "text_clm": ("causal LM (GPT)", "tokens"),
    "text_simcse": ("SimCSE (unsupervised)", "tokens"),
    "text_word2vec": ("word2vec (skip-gram)", "tokens"),
    "text_distillation": ("distillation (MLM teacher -> 1-layer student)", "tokens"),
    "vision_simclr": ("SimCLR", "images"),
    "vision_moco": ("MoCo v2", "images"),
    "vision_dae": ("denoising autoencoder", "images"),
    "vision_vae": ("variational autoencoder", "images"),
    "vision_mae": ("masked autoencoder (ViT-MAE)", "images"),
}


def measure(experiment: str, root: Path, teacher: Path | None) -> dict:
    args = [f"experiment={experiment}", "logger=csv", "trainer.enable_progress_bar=false"]
    if experiment == "text_distillation":
        args.append(f"task.teacher={teacher}")
    run_dir, wall = run_train(args, root / experiment)
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "experiment": experiment,
        "objective": OBJECTIVES[experiment][0],
        "items": OBJECTIVES[experiment][1],
        "command": f"python train.py experiment={experiment}" + (" task.teacher=<text_mlm run>" if teacher and
                                                                   experiment == "text_distillation" else ""),
        "wall_s": round(wall, 1),
        "steps": results["global_step"],
        "samples_per_s": median(logged(run_dir, "train/device/samples_per_sec")),
        "items_per_s": median(logged(run_dir, "train/device/items_per_sec")),
        "first_val_loss": (logged(run_dir, "val/loss") or [None])[0],
        "final_val_loss": results["metrics"].get("val/loss"),
        "final_train_loss": (logged(run_dir, "train/loss_epoch") or [None])[-1],
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help=f"some of: {', '.join(OBJECTIVES)}")
    args = parser.parse_args()
    args.experiments = chosen(parser, args.experiments, OBJECTIVES, "experiments")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-objectives-") as tmp:
        root, teacher = Path(tmp), None
        for experiment in args.experiments:
            if experiment == "text_distillation" and teacher is None:
                teacher, _ = run_train(["experiment=text_mlm", "logger=none", "trainer.enable_progress_bar=false"],
                                       root / "teacher")
            row = measure(experiment, root, teacher)
            if experiment == "text_mlm":
                teacher = Path(row["run_dir"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    previous = {}
    path = Path(__file__).resolve().parent / "results" / "objectives.json"
    if path.exists():  # a partial run keeps the other objectives' rows
        previous = {r["experiment"]: r for r in json.loads(path.read_text())["rows"]}
    previous.update({r["experiment"]: r for r in rows})
    ordered = [previous[e] for e in OBJECTIVES if e in previous]
    for row in ordered:
        row.pop("run_dir", None)
    table = markdown_table(
        ["experiment", "objective", "examples/s", "items/s", "steps", "wall (s)", "val loss first → final",
         "final train loss"],
        [[f"`{r['experiment']}`", r["objective"], r["samples_per_s"],
          None if r["items_per_s"] is None else f"{r['items_per_s']:,.0f} {r['items']}", r["steps"], r["wall_s"],
          f"{r['first_val_loss']:.3f} → {r['final_val_loss']:.3f}", r["final_train_loss"]] for r in ordered],
    )
    write_results("objectives", {"machine": machine(), "rows": ordered}, table)
    print(table)


if __name__ == "__main__":
    main()
