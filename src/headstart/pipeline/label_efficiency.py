"""The label-efficiency report of a pipeline that fine-tunes at several label fractions and seeds:
the downstream metric of the pretrained and the from-scratch model at each fraction (mean and
standard deviation over seeds), written as ``label_efficiency.csv`` (one row per run) and
``label_efficiency.png`` (metric against label fraction, both curves), printed as a table and logged
to W&B when the pipeline's logger config has a W&B logger."""

from __future__ import annotations

import csv
import logging
import statistics
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CSV_NAME = "label_efficiency.csv"
PLOT_NAME = "label_efficiency.png"
MODELS = {"finetune": "pretrained + fine-tuned", "scratch": "from scratch"}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per amount of labels (``labels``: "5%", "100", "all"), in order of the number of labelled
    examples: mean and std of each model's metric over its seeds, the gain of pretraining (difference
    of the means) and on how many seeds the pretrained model beat the scratch one of the same seed."""
    rows = []
    for labels in dict.fromkeys(r["labels"] for r in runs):
        group = [r for r in runs if r["labels"] == labels]
        sizes = [r["train_examples"] for r in group if r.get("train_examples") is not None]
        row: dict[str, Any] = {"labels": labels, "label_fraction": group[0].get("label_fraction"),
                               "label_count": group[0].get("label_count"),
                               "train_examples": round(statistics.fmean(sizes)) if sizes else None}
        for model in MODELS:
            values = [r["value"] for r in group if r["model"] == model]
            if values:
                row[f"{model}_mean"] = statistics.fmean(values)
                row[f"{model}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"{model}_n"] = len(values)
        if "finetune_mean" in row and "scratch_mean" in row:
            row["gain"] = row["finetune_mean"] - row["scratch_mean"]
            by_seed = {(r["model"], r["seed"]): r["value"] for r in group}
            paired = [s for m, s in by_seed if m == "finetune" and ("scratch", s) in by_seed]
            row["seeds_won"] = sum(by_seed[("finetune", s)] > by_seed[("scratch", s)] for s in paired)
            row["seeds_paired"] = len(paired)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["train_examples"] is None, r["train_examples"] or 0))


def amount_label(row: dict[str, Any]) -> str:
    """"100", "85 (5%)", "1700 (all)": the number of labelled examples, and the share asked for."""
    n, labels = row.get("train_examples"), row["labels"]
    if n is None:
        return labels
    return str(n) if labels == str(n) else f"{n} ({labels})"


def write_csv(runs: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["labels", "label_fraction", "label_count", "train_examples", "seed",
                                               "model", "learning_rate", "metric", "value", "output_dir"])
        writer.writeheader()
        writer.writerows(runs)


def plot(summary: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Metric against the number of labelled examples (log axis), one line per model with its seed spread."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    shown = [row for row in summary if row.get("train_examples")]
    for model, label in MODELS.items():
        points = [(row["train_examples"], row[f"{model}_mean"], row[f"{model}_std"])
                  for row in shown if f"{model}_mean" in row]
        if points:
            x, y, err = zip(*points, strict=True)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks([row["train_examples"] for row in shown], [amount_label(row) for row in shown], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(metric)
    seeds = max((row.get("finetune_n", row.get("scratch_n", 1)) for row in summary), default=1)
    ax.set_title(f"Label efficiency: {metric} (mean ± std over {seeds} seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_summary(summary: list[dict[str, Any]], metric: str, out: Path, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or f"What pretraining bought, by number of labels ({metric}, mean ± std over seeds)")
    table.add_column("labelled examples", justify="right")
    for label in MODELS.values():
        table.add_column(label, justify="right")
    table.add_column("gain", justify="right")
    table.add_column("seeds won", justify="right")
    for row in summary:
        cells = [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" if f"{m}_mean" in row else "–" for m in MODELS]
        gain = f"{row['gain']:+.4f}" if "gain" in row else "–"
        won = f"{row['seeds_won']}/{row['seeds_paired']}" if "seeds_won" in row else "–"
        table.add_row(amount_label(row), *cells, gain, won)
    console = Console(width=140)
    console.print(table)
    console.print(f"Label-efficiency outputs: {(out / CSV_NAME).resolve()}, {(out / PLOT_NAME).resolve()}")


def log_to_wandb(cfg, runs: list[dict[str, Any]], summary: list[dict[str, Any]], out: Path, group: str) -> None:
    """One W&B run of the pipeline's group with the per-run table, the summary table and the plot,
    through the pipeline's own W&B logger config (its mode, project, entity)."""
    from hydra.utils import instantiate

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    import wandb

    logger = instantiate(wandb_cfg, name=f"{group}-label_efficiency", group=group, save_dir=str(out))
    try:
        columns = list(runs[0])
        summary_columns = sorted({k for row in summary for k in row}, key=lambda k: (k != "labels", k))
        logger.experiment.log({
            "label_efficiency/runs": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in runs]),
            "label_efficiency/summary": wandb.Table(columns=summary_columns,
                                                    data=[[row.get(c) for c in summary_columns] for row in summary]),
            "label_efficiency/plot": wandb.Image(str(out / PLOT_NAME)),
        })
    finally:
        wandb.finish()


def report(cfg, runs: list[dict[str, Any]], metric: str, out: Path, group: str) -> list[dict[str, Any]]:
    """Write, print and log the label-efficiency results of ``runs``; return the summary rows."""
    summary = summarize(runs)
    write_csv(runs, out / CSV_NAME)
    plot(summary, metric, out / PLOT_NAME)
    print_summary(summary, metric, out)
    log_to_wandb(cfg, runs, summary, out, group)
    return summary
