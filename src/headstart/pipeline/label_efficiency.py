"""The label-efficiency report of a pipeline that fine-tunes at several label fractions and seeds:
the downstream metric of the pretrained and the from-scratch model at each amount of labels (mean,
standard deviation and every seed's value), written as ``label_efficiency.csv`` (one row per run),
``label_efficiency.png`` and ``.pdf`` (metric against the number of labelled examples, both curves,
the seeds and the trivial baseline) and ``results_table.txt`` (the table, also printed last), and
logged to W&B when the pipeline's logger config has a W&B logger."""

from __future__ import annotations

import csv
import logging
import statistics
from pathlib import Path
from typing import Any

from headstart.data import overlap
from headstart.pipeline import intervals
from headstart.pipeline import report as results_report

log = logging.getLogger(__name__)

CSV_NAME = "label_efficiency.csv"
SUMMARY_CSV_NAME = "label_efficiency_summary.csv"
PLOT_NAME = "label_efficiency.png"
PLOT_PDF_NAME = "label_efficiency.pdf"
MODELS = {"finetune": "pretrained + fine-tuned", "scratch": "from scratch"}
DODGE = (0.95, 1.05)  # each model's points are drawn at these multiples of the number of labels (log axis)


def summarize(runs: list[dict[str, Any]], lower_is_better: bool = False) -> list[dict[str, Any]]:
    """Per amount of labels (``labels``: "5%", "100", "all"), in order of the number of labelled
    examples: each model's mean, std (sample, n−1; 0 for one seed), min, max and per-seed values
    (``<model>_values`` in the order of ``<model>_seeds``), the gain of pretraining (difference of the
    means) with its 95% interval (``gain_low``, ``gain_high``, ``gain_interval``: how it was computed,
    see ``intervals.gain_interval``), on how many seeds the pretrained model beat the scratch one of the
    same seed (``lower_is_better``: for errors and losses, beat means scored lower; a tie is no win), the
    size of the test split and the trivial baseline's score (``baseline``, the mean over the runs where
    they differ)."""
    rows = []
    for labels in dict.fromkeys(r["labels"] for r in runs):
        group = [r for r in runs if r["labels"] == labels]
        sizes = [r["train_examples"] for r in group if r.get("train_examples") is not None]
        baselines = [r["baseline"] for r in group if r.get("baseline") is not None]
        row: dict[str, Any] = {"labels": labels, "label_fraction": group[0].get("label_fraction"),
                               "label_count": group[0].get("label_count"),
                               "train_examples": round(statistics.fmean(sizes)) if sizes else None,
                               "test_examples": results_report.one_value(r.get("test_examples") for r in group),
                               "baseline": statistics.fmean(baselines) if baselines else None}
        for model in MODELS:
            ordered = sorted((r for r in group if r["model"] == model), key=lambda r: r["seed"])
            if ordered:
                values = [r["value"] for r in ordered]
                stats = results_report.spread(values)
                row.update({f"{model}_{k}": stats[k] for k in ("mean", "std", "min", "max", "n")})
                row[f"{model}_values"] = values
                row[f"{model}_seeds"] = [r["seed"] for r in ordered]
        if "finetune_mean" in row and "scratch_mean" in row:
            row["gain"] = row["finetune_mean"] - row["scratch_mean"]
            by_seed = {(r["model"], r["seed"]): r["value"] for r in group}
            paired = [s for m, s in by_seed if m == "finetune" and ("scratch", s) in by_seed]
            better = (lambda a, b: a < b) if lower_is_better else (lambda a, b: a > b)
            row["seeds_won"] = sum(better(by_seed[("finetune", s)], by_seed[("scratch", s)]) for s in paired)
            row["seeds_paired"] = len(paired)
            interval = intervals.gain_interval([r for r in group if r["model"] == "finetune"],
                                               [r for r in group if r["model"] == "scratch"], group[0]["metric"])
            if interval:
                row.update(gain_low=interval["low"], gain_high=interval["high"], gain_interval=interval["method"])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["train_examples"] is None, r["train_examples"] or 0))


def amount_label(row: dict[str, Any]) -> str:
    """"100", "85 (5%)", "1700 (all)": the number of labelled examples, and the share asked for; a
    count larger than the training split (every example kept) as "1700 (all; 5000 asked)"."""
    n, labels = row.get("train_examples"), row["labels"]
    if n is None:
        return labels
    count = row.get("label_count")
    if count is not None and n < count:  # fewer than asked: the split ran out (per class too: see subsets)
        return f"{n} (all; {labels} asked)"
    return str(n) if labels == str(n) else f"{n} ({labels})"


def write_csv(runs: list[dict[str, Any]], path: Path) -> None:
    """One row per run (``test_outputs``: its per-example test predictions, ``test_outputs.npz``)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["labels", "label_fraction", "label_count", "train_examples", "seed",
                                               "model", "learning_rate", "metric", "value", "test_examples",
                                               "baseline", "output_dir", "test_outputs"])
        writer.writeheader()
        writer.writerows(runs)


SUMMARY_COLUMNS = ["labels", "train_examples", "finetune_mean", "finetune_std", "finetune_n", "scratch_mean",
                   "scratch_std", "scratch_n", "gain", "gain_low", "gain_high", "gain_interval", "seeds_won",
                   "seeds_paired", "test_examples", "baseline"]


def write_summary_csv(summary: list[dict[str, Any]], path: Path) -> None:
    """One row per amount of labels: each model's mean, std and n, the gain with its 95% interval, the
    seeds won, the test split's size and the trivial baseline."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)


def plot(summary: list[dict[str, Any]], metric: str, path: Path,
         context: dict[str, Any] | None = None) -> list[Path]:
    """Metric against the number of labelled examples (log axis, each tick the number with the share
    asked for), one line per model (mean ± std over seeds) with every seed's value as a dot, and the
    trivial baseline as a dashed line; the title names the data, model and pretraining objective
    (``context``: see ``report.pipeline_context``). Written as ``path`` (PNG) and beside it as PDF
    (TrueType fonts, which publishers accept); returns both paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    context = context or {}
    words = context.get("metric_words") or results_report.metric_words(metric)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # embedding fonts in the PDF logs every table it subsets
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
        shown = [row for row in summary if row.get("train_examples")]
        handles = []  # the legend's order: the models, then the baseline
        for i, (model, label) in enumerate(MODELS.items()):
            dodge = DODGE[i]  # side by side at each amount, so neither model's bars hide the other's
            points = [(row["train_examples"] * dodge, row[f"{model}_mean"], row[f"{model}_std"])
                      for row in shown if f"{model}_mean" in row]
            if not points:
                continue
            x, y, err = zip(*points, strict=True)
            handles.append(ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=f"C{i}"))
            # Each seed's value a little further out than its model's bar, so the bar does not hide it.
            seeds = [(row["train_examples"] * dodge ** 1.6, v) for row in shown for v in row.get(f"{model}_values") or []]
            if seeds:
                ax.scatter(*zip(*seeds, strict=True), s=14, alpha=0.45, color=f"C{i}", edgecolors="none", zorder=3,
                           label="_nolegend_")
        baselines = [(row["train_examples"], row["baseline"]) for row in shown if row.get("baseline") is not None]
        if baselines:
            kind = (context.get("baseline") or {}).get("kind") or "trivial baseline"
            if len({v for _, v in baselines}) == 1:
                handles.append(ax.axhline(baselines[0][1], color="0.45", linestyle="--", linewidth=1,
                                          label=f"{kind} ({baselines[0][1]:.3f})"))
            else:
                handles.extend(ax.plot(*zip(*baselines, strict=True), color="0.45", linestyle="--", linewidth=1,
                                       label=kind))
        ax.set_xscale("log")
        if shown:  # room on both sides of the outer amounts (one amount alone would fill the axis)
            ax.set_xlim(min(r["train_examples"] for r in shown) / 1.6, max(r["train_examples"] for r in shown) * 1.6)
        ax.set_xticks([row["train_examples"] for row in shown], [amount_label(row) for row in shown], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("labelled training examples (share of the training labels)")
        ax.set_ylabel(words)
        ax.set_title(_title(summary, context), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(handles=handles, fontsize=8)
        fig.tight_layout()
        pdf = path.with_suffix(".pdf")
        fig.savefig(path)
        fig.savefig(pdf)
    plt.close(fig)
    return [path, pdf]


def _title(summary: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """Three lines: the data; the model and its pretraining objective against scratch; the spread shown."""
    seeds = max((row.get("finetune_n", row.get("scratch_n", 1)) for row in summary), default=1)
    first = "Label efficiency" + (f" on {context['data']}" if context.get("data") else "")
    model = context.get("model") or "the model"
    objective = f", pretrained with {context['objective']}," if context.get("objective") else " pretrained"
    import textwrap

    spread = f"mean ± std over {seeds} seeds; dots: single seeds" if seeds > 1 else "one seed each"
    return "\n".join([first, textwrap.fill(f"{model}{objective} vs from scratch", 70), spread])


def print_summary(summary: list[dict[str, Any]], metric: str, out: Path, context: dict[str, Any] | None = None) -> None:
    """The table of the report, printed (last: after every library's output) and written to
    ``results_table.txt``: per amount of labels each model's mean ± std with every seed's value, the
    gain, the seeds won and the trivial baseline; notes say what the numbers are."""
    from rich.table import Table

    context = context or {"metric": metric, "metric_words": results_report.metric_words(metric)}
    table = Table(title=f"What pretraining bought, by number of labels: {context['metric_words']}")
    table.add_column("labelled examples", justify="right")
    for label in MODELS.values():
        table.add_column(label, justify="right")
    table.add_column("gain [95% interval]", justify="right")
    table.add_column("seeds won", justify="right")
    kind = (context.get("baseline") or {}).get("kind")
    if kind:
        table.add_column(kind, justify="right")
    tests = {row.get("test_examples") for row in summary}
    if len(tests) > 1:  # the same test split throughout, normally: then the notes give its size
        table.add_column("test examples", justify="right")
    for row in summary:
        cells = [results_report.mean_cell(row.get(f"{m}_values") or []) if f"{m}_mean" in row else "–" for m in MODELS]
        gain = f"{row['gain']:+.4f}" if "gain" in row else "–"
        if "gain_low" in row:
            gain += f"\n[{row['gain_low']:+.4f}, {row['gain_high']:+.4f}]"
        won = f"{row['seeds_won']}/{row['seeds_paired']}" if "seeds_won" in row else "–"
        extra = [f"{row['baseline']:.4f}" if row.get("baseline") is not None else "n/a"] if kind else []
        if len(tests) > 1:
            extra.append(str(row.get("test_examples") or "?"))
        table.add_row(amount_label(row), *cells, gain, won, *extra)
    seeds = sorted({s for row in summary for m in MODELS for s in row.get(f"{m}_seeds") or []})
    n = max((row.get(f"{m}_n", 0) for row in summary for m in MODELS), default=0)
    notes = [results_report.value_note(context)]
    if n > 1:
        notes.append(f"mean ± std: {results_report.SPREAD_WORDS} over n = {n} seeds ({', '.join(map(str, seeds))}); "
                     "the line below gives each seed's value, in that order.")
    else:
        notes.append(f"One seed ({', '.join(map(str, seeds))}): no spread.")
    notes.append("gain: the pretrained model's mean minus the scratch model's; seeds won: seeds on which the pretrained "
                 f"model scored {'lower' if context.get('lower_is_better') else 'higher'} than the scratch model of "
                 "the same seed.")
    methods = {row["gain_interval"] for row in summary if row.get("gain_interval")}
    notes.extend(intervals.METHOD_NOTE[m] for m in sorted(methods))
    notes.append(overlap.dropped_note(context.get("split_overlap")) or "")
    notes.append(overlap.pairs_note(context.get("split_overlap")) or "")
    notes.append(results_report.baseline_note(context))
    notes.append(results_report.setup_note(context) or "")
    notes.append(f"Label-efficiency outputs: {out.resolve()} ({results_report.TABLE_NAME}, {CSV_NAME}, "
                 f"{SUMMARY_CSV_NAME}, {PLOT_NAME}, {PLOT_PDF_NAME}, pipeline.json)")
    results_report.emit(table, [n for n in notes if n], out)


def log_to_wandb(cfg, runs: list[dict[str, Any]], summary: list[dict[str, Any]], out: Path, group: str) -> None:
    """One W&B run of the pipeline's group with the per-run table, the summary table and the plot,
    through the pipeline's own W&B logger config (its mode, project, entity)."""
    from hydra.utils import instantiate

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    import wandb
    from omegaconf import OmegaConf

    logger = instantiate(wandb_cfg, name=f"{group}-label_efficiency", group=group, save_dir=str(out),
                         job_type="label-efficiency", tags=[cfg.task_name])
    try:
        # The pipeline's whole config goes with it: what was compared, with which settings. (Not as
        # instantiate(config=...): that is instantiate's own first argument.)
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
        columns = list(runs[0])
        summary_columns = sorted({k for row in summary for k in row}, key=lambda k: (k != "labels", k))
        logger.experiment.log({
            "label_efficiency/runs": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in runs]),
            "label_efficiency/summary": wandb.Table(columns=summary_columns,
                                                    data=[[_cell(row.get(c)) for c in summary_columns]
                                                          for row in summary]),
            "label_efficiency/plot": wandb.Image(str(out / PLOT_NAME)),
        })
    finally:
        wandb.finish()


def _cell(value: Any) -> Any:
    """A W&B table cell: lists (the per-seed values) as text."""
    return ", ".join(map(str, value)) if isinstance(value, list) else value


def report(cfg, runs: list[dict[str, Any]], metric: str, out: Path, group: str,
           context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Write, log and print (last) the label-efficiency results of ``runs``; return the summary rows.
    ``context``: what the table and figure say beside the numbers (``report.pipeline_context``)."""
    context = context or {"metric": metric, "metric_words": results_report.metric_words(metric)}
    summary = summarize(runs, lower_is_better=bool(context.get("lower_is_better")))
    write_csv(runs, out / CSV_NAME)
    write_summary_csv(summary, out / SUMMARY_CSV_NAME)
    plot(summary, metric, out / PLOT_NAME, context)
    log_to_wandb(cfg, runs, summary, out, group)
    print_summary(summary, metric, out, context)
    return summary
