"""The headline experiment: label-efficiency pipelines through train.py, their CSV, plot and W&B run;
the stratified label subsets they rest on; and the plot's content."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch
from conftest import assert_user_error, run_train

from headstart.data.subsets import label_subset_indices, random_subset_indices
from headstart.data.vision import ImageDataModule
from headstart.pipeline import label_efficiency


def test_label_subsets_are_stratified_seeded_and_keep_every_class():
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)
    keep = label_subset_indices(labels, 0.1, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [50, 30, 20]
    assert keep == sorted(keep) and keep == label_subset_indices(labels, 0.1, seed=0)
    assert keep != label_subset_indices(labels, 0.1, seed=1)
    # 1% of 200 rounds to 2, of a class of 3 to 0: every class keeps at least one example.
    tiny = torch.tensor([0] * 200 + [1] * 3)
    assert torch.bincount(tiny[label_subset_indices(tiny, 0.01, seed=0)]).tolist() == [2, 1]
    assert label_subset_indices(labels, 1.0, seed=0) == list(range(1000))
    assert len(random_subset_indices(10, 0.01, seed=0, minimum=2)) == 2


def test_summary_and_plot_show_both_curves_with_labels_and_legend(tmp_path, monkeypatch):
    runs = [{"labels": labels, "train_examples": n, "seed": s, "model": m, "metric": "test/acc", "value": v,
             "test_examples": 270, "baseline": 0.1, "output_dir": "x"}
            for labels, n, m, values in (("all", 1200, "finetune", (0.95, 0.97)), ("all", 1200, "scratch", (0.96, 0.96)),
                                         ("5%", 60, "finetune", (0.7, 0.8)), ("5%", 60, "scratch", (0.3, 0.5)))
            for s, v in enumerate(values)]
    summary = label_efficiency.summarize(runs)
    assert [r["labels"] for r in summary] == ["5%", "all"]  # by number of labelled examples
    assert summary[0]["finetune_mean"] == pytest.approx(0.75) and summary[0]["scratch_mean"] == pytest.approx(0.4)
    assert summary[0]["gain"] == pytest.approx(0.35) and summary[0]["scratch_std"] == pytest.approx(statistics.stdev([0.3, 0.5]))
    # Seeds won pair each seed's pretrained and scratch runs: at all labels seed 1 wins (0.97 > 0.96), seed 0 loses.
    assert (summary[0]["seeds_won"], summary[1]["seeds_won"], summary[1]["seeds_paired"]) == (2, 1, 2)
    assert [label_efficiency.amount_label(r) for r in summary] == ["60 (5%)", "1200 (all)"]

    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    context = {"metric": "test/acc", "metric_words": "test accuracy", "data": "digits",
               "model": "ViT (hidden 64, 2 layers)", "objective": "SimCLR", "baseline": {"kind": "majority class"}}
    written = label_efficiency.plot(summary, "test/acc", tmp_path / "plot.png", context)
    assert written == [tmp_path / "plot.png", tmp_path / "plot.pdf"]
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = (tmp_path / "plot.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and b"/FontFile2" in pdf  # TrueType fonts embedded (no Type 3)
    [ax] = figures[0].axes
    # The title names the data, the model and the pretraining objective, and what the bars and dots are.
    title = ax.get_title()
    assert "digits" in title and "ViT (hidden 64, 2 layers)" in title and "SimCLR" in title
    assert "mean ± std over 2 seeds" in title and "single seeds" in title
    assert ax.get_ylabel() == "test accuracy" and "labelled" in ax.get_xlabel()
    # Each tick is the absolute number of labelled examples beside the share asked for.
    assert [t.get_text() for t in ax.get_xticklabels()] == ["60 (5%)", "1200 (all)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "pretrained + fine-tuned", "from scratch", "majority class (0.100)"]
    curves = [line for line in ax.get_lines() if line.get_marker() == "o"]  # not the error bars' caps
    # Side by side at each number of labels (5% apart on the log axis), so no bar hides the other.
    assert [list(line.get_xdata()) for line in curves] == [[pytest.approx(60 * 0.95), pytest.approx(1200 * 0.95)],
                                                           [pytest.approx(60 * 1.05), pytest.approx(1200 * 1.05)]]
    assert [list(line.get_ydata()) for line in curves] == [[0.75, 0.96], [pytest.approx(0.4), 0.96]]
    [chance] = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(chance.get_ydata()) == [0.1, 0.1]
    # Every seed's value as a dot, per model.
    dots = [c.get_offsets()[:, 1].tolist() for c in ax.collections if c.get_offsets().shape == (4, 2)]
    assert dots == [[0.7, 0.8, 0.95, 0.97], [0.3, 0.5, 0.96, 0.96]]


@pytest.mark.slow
def test_label_efficiency_pipeline_runs_every_fraction_and_seed(tmp_path):
    proc = run_train([
        # The small CNN (the default is a tiny ViT), made smaller: the mechanics are what is tested here.
        "experiment=label_efficiency", "logger=default", "model=cnn_small", "model.arch.hidden_sizes=[16,32,64]",
        'pipeline.pretrain.overrides=["trainer.max_epochs=2"]',
        # 19 batches: one epoch of all the labels (the last, partial batch is dropped).
        'pipeline.finetune.overrides=["trainer.max_steps=19","trainer.max_epochs=null"]',
        "pipeline.label_fractions=[0.05,1.0]", "pipeline.seeds=[0,1]",
    ], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [out] = tmp_path.glob("outputs/2*/*/pipeline.json")
    out = out.parent
    with open(out / "label_efficiency.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {(r["label_fraction"], r["seed"], r["model"]) for r in rows} == {
        (f, s, m) for f in ("0.05", "1.0") for s in ("0", "1") for m in ("finetune", "scratch")}
    assert {r["train_examples"] for r in rows if r["label_fraction"] == "0.05"} == {"60"}
    for row in rows:  # each row is the test accuracy its own run reported, with that run's labels and seed
        results = json.loads((out / row["model"] / f"labels{float(row['label_fraction']):g}-seed{row['seed']}"
                              / "results.json").read_text())
        assert float(row["value"]) == pytest.approx(results["metrics"]["test/acc"])
        config = (out / row["model"] / f"labels{float(row['label_fraction']):g}-seed{row['seed']}" / "config.yaml").read_text()
        assert f"label_fraction: {row['label_fraction']}" in config and f"seed: {row['seed']}" in config
    # 5% of each class of the digits' 1257 training images: 6 of each of the 10 classes.
    subset = ImageDataModule(builtin="digits", label_fraction=0.05, seed=0)
    subset.prepare()
    assert torch.bincount(subset.datasets["train"].labels).tolist() == [6] * 10
    assert "Images: {'train': 60, 'validation': 270" in (out / "train.log").read_text()
    assert (out / "label_efficiency.png").stat().st_size > 10_000
    assert (out / "label_efficiency.pdf").read_bytes()[:5] == b"%PDF-"
    record = json.loads((out / "pipeline.json").read_text())
    summary = record["label_efficiency"]
    assert [r["label_fraction"] for r in summary] == [0.05, 1.0] and all(r["finetune_n"] == 2 for r in summary)
    assert all(len(r["finetune_values"]) == len(r["scratch_values"]) == 2 and r["test_examples"] == 270 for r in summary)
    # What the table and figure say beside the numbers, from the stages' records.
    report = record["report"]
    assert (report["metric_words"], report["data"], report["model"], report["objective"]) == (
        "test accuracy", "digits", "CNN (widths 16-32-64)", "SimCLR")
    assert report["test_examples"] == 270 and report["checkpoint"] == "best" and report["n"] == 2
    assert report["baseline"]["kind"] == "majority class" and 0.09 < report["baseline"]["value"] < 0.12
    assert report["figures"] == ["label_efficiency.png", "label_efficiency.pdf"]
    # The table comes after every library's output, written as printed; only headstart's hint on
    # uploading the offline W&B runs (train.py prints it after every run) may follow it.
    table = (out / "results_table.txt").read_text()
    assert table.rstrip() in proc.stdout
    after = proc.stdout.split(table.rstrip(), 1)[1].strip().splitlines()
    assert not after or (len(after) == 2 and after[0].startswith("W&B runs logged offline")), after
    assert "What pretraining bought, by number of labels: test accuracy" in table and "60 (5%)" in table
    assert "majority class" in table and "over n = 2 seeds (0, 1)" in table and "on the 270 test examples" in table
    for row in summary:  # every seed's value under its mean
        assert " ".join(f"{v:.4f}" for v in row["finetune_values"]) in table
    assert "fontTools" not in proc.stdout + proc.stderr
    assert (tmp_path / "outputs" / "latest").resolve() == out.resolve()
    # A W&B run of its own for the report, besides the pretrain run and the 8 downstream runs.
    [report_run] = out.glob("wandb/offline-run-*")
    media = report_run / "files" / "media"
    assert len(list(media.glob("images/label_efficiency/plot_*.png"))) == 1
    [table] = media.glob("table/label_efficiency/runs_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == 8


def test_label_fractions_out_of_range_are_a_user_error(tmp_path):
    proc = run_train(["experiment=label_efficiency", "logger=none", "pipeline.label_fractions=[0.1,1.5]",
                      'pipeline.pretrain.overrides=["trainer.max_epochs=1"]'], tmp_path)
    assert_user_error(proc, "pipeline.label_fractions", "1.5")


def test_both_stages_of_the_headline_experiment_use_the_vit():
    """The default backbone of experiment=label_efficiency (BENCHMARKS.md: where the gain is large);
    model=cnn_small on the command line comes after the stages' own overrides, so it wins."""
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from headstart.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=label_efficiency"])
    assert "model=vit_tiny" in cfg.pipeline.pretrain.overrides and "model=vit_tiny" in cfg.pipeline.finetune.overrides
    assert cfg.model.arch.model_type == "vit" and cfg.pipeline.pretrain.experiment == "vision_simclr"
