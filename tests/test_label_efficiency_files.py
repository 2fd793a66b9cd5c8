"""experiment=label_efficiency_text_files end to end through train.py, on test-made .tsv files with quoted
multi-line reviews: label counts, learning rates chosen on dev for each model, stage overrides added to
the experiment's, and a second run that reuses the first one's pretraining (pipeline.pretrain.from)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TOPICS, assert_user_error, logged, make_sentence, run_train, write_corpus

from headstart.pipeline import intervals
from headstart.pipeline.runner import candidate_name


def write_reviews(path, n_rows: int, seed: int) -> None:
    """Topic-labelled rows as a .tsv with a header, each text over two lines (quoted), as Python's csv writes."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sentence", "label"])
        for _ in range(n_rows):
            topic = rng.choice(sorted(TOPICS))
            writer.writerow([f"{make_sentence(rng, topic, 6)}\n\t{make_sentence(rng, topic, 6)}", topic])


@pytest.fixture(scope="module")
def review_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reviews")
    write_corpus(root / "corpus.txt", 400, seed=0)
    for split, rows, seed in (("train", 90, 1), ("dev", 45, 2), ("test", 60, 3)):
        write_reviews(root / f"{split}.tsv", rows, seed)
    return root


def files_overrides(root) -> list[str]:
    return [f"pipeline.files.corpus=[{root / 'corpus.txt'}]", f"pipeline.files.train=[{root / 'train.tsv'}]",
            f"pipeline.files.dev=[{root / 'dev.tsv'}]", f"pipeline.files.test=[{root / 'test.tsv'}]",
            "pipeline.files.text_column=sentence", "model.arch.hidden_size=16", "logger=csv"]


def pipeline_dir(root):
    [path] = root.glob("outputs/*/*/pipeline.json")
    return path.parent


@pytest.mark.slow
def test_files_pipeline_counts_labels_chooses_rates_on_dev_and_reuses_its_pretraining(review_files, tmp_path):
    first = tmp_path / "first"
    proc = run_train(["experiment=label_efficiency_text_files", *files_overrides(review_files),
                      'pipeline.pretrain.overrides=["trainer.max_epochs=2"]',
                      # Added to the experiment's own finetune overrides; max_steps replaces the experiment's 200.
                      'pipeline.finetune.overrides=["trainer.max_steps=30","data.batch_size=8"]',
                      "pipeline.label_counts=[6,all]", "pipeline.seeds=[0]", "pipeline.learning_rates=[0.001,0.1]",
                      # The fine-tuned model also has its embeddings' rate chosen on dev; scratch has no such setting.
                      'pipeline.finetune.search=["transfer.layer_lr_decay=0.1,0.3"]'],
                     first)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = pipeline_dir(first)
    with open(out / "label_efficiency.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["labels"], r["train_examples"], r["model"]) for r in rows) == [
        ("6", "6", "finetune"), ("6", "6", "scratch"), ("all", "90", "finetune"), ("all", "90", "scratch")]
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    for row in rows:
        run = stages[f"{row['model']}/labels-{'n6' if row['labels'] == '6' else 'all'}-seed0"]
        # The kept settings are those whose best checkpoint did best on dev; the value is that run's test accuracy.
        by_candidate = run["validation_by_candidate"]
        rates = {"lr0.001", "lr0.1"}
        assert set(by_candidate) == ({f"{r}-layer_lr_decay{d}" for r in rates for d in ("0.1", "0.3")}
                                     if row["model"] == "finetune" else rates)
        chosen = candidate_name(run["selected"])
        assert by_candidate[chosen] == max(by_candidate.values())
        assert run["selected"]["task.optimizer.lr"] == float(row["learning_rate"])
        assert float(row["value"]) == pytest.approx(run["metrics"]["test/acc"])
        assert run["metrics_source"]["val"] == "best" and run["metrics"]["val/acc"] == max(by_candidate.values())
        # results.json's val/acc is the tested (best) checkpoint's, the last evaluation's is kept beside it.
        val_accs = logged(Path(run["output_dir"]), "val/acc")
        assert run["metrics"]["val/acc"] == pytest.approx(max(val_accs))
        assert run["metrics_source"]["last_epoch"]["val/acc"] == pytest.approx(val_accs[-1])
        config = yaml.safe_load((out / row["model"] / f"labels-{'n6' if row['labels'] == '6' else 'all'}-seed0"
                                 / chosen / "config.yaml").read_text())
        # The experiment's overrides and the command line's, merged.
        assert config["trainer"]["max_steps"] == 30 and config["data"]["batch_size"] == 8
        assert config["trainer"]["val_check_interval"] == 20 and config["data"]["text_column"] == "sentence"
        assert config["data"]["train_files"] == [str(review_files / "train.tsv")]
        assert config["data"]["drop_eval_overlap"] and config["data"]["overlap_files"] == [str(review_files / "corpus.txt")]
        transfer = (config["transfer"]["mode"], config["transfer"]["layer_lr_decay"])
        assert transfer == (("finetune", run["selected"]["transfer.layer_lr_decay"]) if row["model"] == "finetune"
                            else ("scratch", 1.0))
    assert "labelled examples" in proc.stdout and "seeds won" in proc.stdout
    pretrain = out / "pretrain"
    assert json.loads((pretrain / "results.json").read_text())["task"] == "Word2Vec"

    second = tmp_path / "second"
    proc = run_train(["experiment=label_efficiency_text_files", *files_overrides(review_files),
                      f"pipeline.pretrain.from={out}", 'pipeline.finetune.overrides=["trainer.max_steps=10"]',
                      "pipeline.label_counts=[6]", "pipeline.seeds=[0,1]", "pipeline.learning_rates=null",
                      "pipeline.finetune.search=null"], second)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reused = pipeline_dir(second)
    assert not (reused / "pretrain").exists()
    record = json.loads((reused / "pipeline.json").read_text())
    assert record["stages"]["pretrain"]["reused_from"] == str(out)
    assert record["stages"]["pretrain"]["export_dir"] == str(pretrain / "export")
    handoff = json.loads((reused / "finetune" / "labels-n6-seed1" / "handoff_report.json").read_text())
    assert handoff["loaded"] == ["embeddings.weight"] and handoff["source_run"] == str(pretrain)
    assert len(record["runs"]) == 4 and {r["seed"] for r in record["runs"]} == {0, 1}


def test_pretrain_from_a_directory_without_an_export_is_a_user_error(review_files, tmp_path):
    proc = run_train(["experiment=label_efficiency_text_files", *files_overrides(review_files),
                      f"pipeline.pretrain.from={tmp_path}"], tmp_path)
    assert_user_error(proc, "pipeline.pretrain.from", "holds no exported model")
    assert not list(tmp_path.glob("outputs/*/*/finetune"))


def test_files_pipeline_without_its_files_names_them(tmp_path):
    proc = run_train(["experiment=label_efficiency_text_files", "logger=none"], tmp_path)
    assert_user_error(proc, "pipeline.files.corpus")


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def _texts(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return [_normalized(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="", encoding="utf-8") as f:
        return [_normalized(row["sentence"]) for row in csv.DictReader(f, delimiter="\t")]


def _test_file_with_copies(review_files: Path, path: Path, new_rows: int) -> Path:
    """The training file's rows, then the dev file's, then ``new_rows`` new ones: a test file like the
    first shared reviews' (whose test file was their train and dev files)."""
    rows = []
    for source in ("train.tsv", "dev.tsv"):
        with open(review_files / source, newline="", encoding="utf-8") as f:
            rows.extend(list(csv.reader(f, delimiter="\t"))[1:])
    write_reviews(path.with_suffix(".new.tsv"), new_rows, seed=7)
    with open(path.with_suffix(".new.tsv"), newline="", encoding="utf-8") as f:
        rows.extend(list(csv.reader(f, delimiter="\t"))[1:])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_test_rows_that_repeat_the_train_or_dev_file_are_dropped_counted_per_pair_and_reported(review_files, tmp_path):
    test_file = _test_file_with_copies(review_files, tmp_path / "test_plus.tsv", new_rows=150)
    proc = run_train(["experiment=label_efficiency_text_files", *files_overrides(review_files),
                      f"pipeline.files.test=[{test_file}]", 'pipeline.pretrain.overrides=["trainer.max_epochs=1"]',
                      'pipeline.finetune.overrides=["trainer.max_steps=10"]', "pipeline.label_counts=[6]",
                      "pipeline.seeds=[0,1]", "pipeline.learning_rates=null", "pipeline.finetune.search=null"],
                     tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = pipeline_dir(tmp_path / "run")

    # Shared rows per pair, computed here from the files.
    texts = {"train": _texts(review_files / "train.tsv"), "validation": _texts(review_files / "dev.tsv"),
             "test": _texts(test_file), "corpus": _texts(review_files / "corpus.txt")}
    names = list(texts)
    expected_pairs = {f"{a}/{b}": {a: sum(t in set(texts[b]) for t in texts[a]),
                                   b: sum(t in set(texts[a]) for t in texts[b])}
                      for i, a in enumerate(names) for b in names[i + 1:]}
    assert expected_pairs["train/test"]["test"] >= 90 and expected_pairs["validation/test"]["test"] >= 45
    kept = [t for t in texts["test"] if t not in set(texts["train"]) | set(texts["validation"]) | set(texts["corpus"])]
    from_dev = sum(t in set(texts["validation"]) and t not in set(texts["train"]) for t in texts["test"])
    assert len(kept) >= 100 and from_dev >= 40

    record = json.loads((out / "pipeline.json").read_text())
    for name in ("finetune/labels-n6-seed0", "scratch/labels-n6-seed1"):
        run = record["stages"][name]
        overlap = run["split_overlap"]
        assert overlap["pairs"] == expected_pairs
        assert overlap["rows"] == {split: len(t) for split, t in texts.items()}
        dropped = overlap["dropped"]["test"]
        assert dropped["of"] == len(texts["test"]) and dropped["kept"] == len(kept) == run["test_examples"]
        assert dropped["by"]["validation"] == from_dev  # the dev copies are dropped too
        assert dropped["by"]["train"] + dropped["by"]["validation"] + dropped["by"].get("corpus", 0) == dropped["rows"]
        # Every kept test example's prediction is on disk; they give the logged test accuracy.
        outputs = np.load(run["test_outputs"]["file"])
        assert len(outputs["targets"]) == len(kept)
        assert float((outputs["predictions"] == outputs["targets"]).mean()) == pytest.approx(run["metrics"]["test/acc"],
                                                                                             abs=1e-6)
    assert record["report"]["split_overlap"] == record["stages"]["finetune/labels-n6-seed0"]["split_overlap"]
    [row] = record["label_efficiency"]
    assert row["gain_interval"] == intervals.BOOTSTRAP and row["gain_low"] <= row["gain"] <= row["gain_high"]
    with open(out / "label_efficiency_summary.csv") as f:
        [summary] = list(csv.DictReader(f))
    assert float(summary["gain_low"]) == pytest.approx(row["gain_low"])

    table = (out / "results_table.txt").read_text()
    flat = " ".join(table.split())
    assert (f"Test rows dropped: {dropped['rows']} of the test file's {len(texts['test'])}, because their text is also "
            f"in (training split {dropped['by']['train']}, dev (validation) split {from_dev}") in flat, table
    assert f"on the {len(kept)} test examples" in flat and "95% interval of the gain: a paired bootstrap" in flat


def test_a_test_file_left_too_small_by_dropping_copies_stops_the_pipeline_before_it_trains(review_files, tmp_path):
    test_file = _test_file_with_copies(review_files, tmp_path / "test_plus.tsv", new_rows=20)
    proc = run_train(["experiment=label_efficiency_text_files", *files_overrides(review_files),
                      f"pipeline.files.test=[{test_file}]"], tmp_path)
    assert_user_error(proc, f"rows of the test split ({test_file})", "would leave 20 test rows",
                      "data.min_test_rows=100", f"the dev (validation) split ({review_files / 'dev.tsv'})")
    assert not list(tmp_path.glob("outputs/*/*/pretrain")), "the pipeline trained before refusing its test file"
