"""What a run's results need to be read in a paper: the metric in words, the score of the trivial
baseline on the same test split (predicting the training split's majority class; for regression,
its mean), the size of that split, which checkpoint each metric comes from, and the run described in
a few words (data, model, task). Recorded in results.json by each stage and used by the pipeline's
tables and figure; a printed table is written beside the outputs too."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# Metric names (the last part of ``test/acc``) in words; F1 depends on the task (below).
_METRIC_WORDS = {
    "acc": "accuracy", "f1": "F1", "mse": "MSE", "mae": "MAE", "pearson": "Pearson r", "spearman": "Spearman ρ",
    "exact_match": "exact match", "precision": "precision", "recall": "recall", "loss": "loss",
    "knn_acc": "kNN accuracy", "probe_acc": "linear-probe accuracy", "perplexity": "perplexity",
}
_F1_BY_TASK = {"SequenceClassifier": "macro-F1", "ImageClassifier": "macro-F1", "Classifier": "macro-F1",
               "TokenClassifier": "entity-level F1", "QuestionAnswering": "token F1"}
_SPLIT_WORDS = {"test": "test", "val": "validation", "train": "training"}

# What a run trains (its module's class), in words.
_TASK_WORDS = {
    "MaskedLanguageModeling": "masked LM", "CausalLanguageModeling": "causal LM",
    "MaskedLMDistillation": "masked-LM distillation", "Word2Vec": "word2vec", "SimCSE": "SimCSE",
    "SimCLR": "SimCLR", "MoCo": "MoCo v2", "DenoisingAutoencoder": "denoising autoencoder",
    "VariationalAutoencoder": "variational autoencoder", "MaskedAutoencoder": "masked autoencoder",
    "SequenceClassifier": "text classification", "ImageClassifier": "image classification",
    "TokenClassifier": "token classification", "QuestionAnswering": "extractive QA", "Regressor": "regression",
    "MultiTaskModel": "multi-task", "FeatureExtractor": "feature export",
}
_WORD2VEC_MODES = {"document": "document context", "skipgram": "skip-gram", "cbow": "CBOW"}
_MODEL_TYPES = {"vit": "ViT", "bert": "BERT", "gpt2": "GPT-2", "headstart_word2vec": "word2vec embeddings",
                "headstart_cnn": "CNN", "resnet": "ResNet", "roberta": "RoBERTa", "distilbert": "DistilBERT"}

SPREAD = "std"
SPREAD_WORDS = "the sample standard deviation (n−1)"
TABLE_NAME = "results_table.txt"


def metric_words(metric: str, task: str | None = None) -> str:
    """``test/acc`` -> "test accuracy", ``test/f1`` of a classifier -> "test macro-F1", ``val/mse`` ->
    "validation MSE", ``test/part/acc`` (multi-task) -> "test accuracy (part)"."""
    parts = metric.split("/")
    split = _SPLIT_WORDS.get(parts[0], parts[0]) if len(parts) > 1 else ""
    name = parts[-1]
    words = _F1_BY_TASK.get(task or "", "F1") if name == "f1" else _METRIC_WORDS.get(name, name.replace("_", " "))
    inner = f" ({'/'.join(parts[1:-1])})" if len(parts) > 2 else ""
    return f"{split} {words}{inner}".strip()


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is the better one (errors and losses)."""
    return metric.rsplit("/", 1)[-1] in ("mse", "mae", "loss", "perplexity")


def task_words(task: str | None, mode: str | None = None) -> str | None:
    """A module's class name in words (``Word2Vec`` with mode ``document`` -> "word2vec (document context)")."""
    if not task:
        return None
    words = _TASK_WORDS.get(task, task)
    return f"{words} ({_WORD2VEC_MODES.get(mode, mode)})" if task == "Word2Vec" and mode else words


def describe_setup(cfg, module) -> dict[str, str | None]:
    """The run in a few words, for titles and captions: its data, model and task."""
    task_cfg = cfg.get("task") or {}
    return {"data": _data_words(cfg.get("data") or {}), "model": _model_words(cfg.get("model") or {}),
            "task": task_words(type(module).__name__, task_cfg.get("mode") if hasattr(task_cfg, "get") else None)}


def _data_words(data) -> str | None:
    if data.get("builtin"):
        return str(data.get("builtin"))
    files = [Path(str(f)).name for f in (data.get("train_files") or [])]
    if files:
        return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    if data.get("train_dir"):
        return Path(str(data.get("train_dir"))).name
    if data.get("tasks"):
        return "tasks " + ", ".join(str(k) for k in data.get("tasks"))
    return None


def _model_words(model) -> str | None:
    arch = model.get("arch") or {}
    if not arch.get("model_type"):
        name = model.get("name_or_path")
        return Path(str(name)).name if name else None
    kind = _MODEL_TYPES.get(arch["model_type"], arch["model_type"])
    sizes = []
    if arch.get("hidden_sizes"):
        sizes.append("widths " + "-".join(str(s) for s in arch["hidden_sizes"]))
    elif arch.get("hidden_size"):
        sizes.append(f"{arch['hidden_size']}-d" if arch["model_type"] == "headstart_word2vec"
                     else f"hidden {arch['hidden_size']}")
    if arch.get("num_hidden_layers"):
        sizes.append(f"{arch['num_hidden_layers']} layers")
    return f"{kind} ({', '.join(sizes)})" if sizes else kind


# -- the test split and its trivial baseline --------------------------------------------------------
def split_size(datamodule, split: str) -> int | None:
    """How many examples ``split`` has (None: no such split)."""
    try:
        return len(datamodule.datasets[split])
    except (AttributeError, KeyError, TypeError):
        return None


def split_labels(dataset):
    """A split's labels as a tensor: an image split's ``labels``, a text split's ``labels`` column
    (regression with several targets: one row per example). None where it has none."""
    import numpy as np
    import torch

    labels = getattr(dataset, "labels", None)
    if labels is None:
        if "labels" not in (getattr(dataset, "column_names", None) or []):
            return None
        from headstart.data.subsets import column_array

        labels = column_array(dataset, "labels")
        if labels.dtype == object:  # lists: several targets, or a label per token
            try:
                labels = np.stack([np.asarray(v) for v in labels])
            except ValueError:  # ragged (a label per token): no per-example label
                return None
    return labels if isinstance(labels, torch.Tensor) else torch.tensor(np.array(labels))


def trivial_baseline(module, datamodule) -> dict[str, Any] | None:
    """The test-split scores of the trivial predictor, computed with the same metrics the module
    reports: for a classifier, predicting the training split's most frequent class (ties: the first
    class) for every test example; for a tagger, its most frequent tag for every word; for regression,
    predicting the training split's mean. None for other tasks (QA), or without a test split."""
    from headstart.heads.classification import Classifier
    from headstart.heads.regression import Regressor
    from headstart.heads.token_classification import TokenClassifier

    datasets = getattr(datamodule, "datasets", None) or {}
    if "train" not in datasets or "test" not in datasets:
        return None
    if isinstance(module, TokenClassifier):
        return _majority_tag(module, datasets["train"]["labels"], datasets["test"]["labels"])
    if not isinstance(module, Classifier | Regressor):
        return None
    train, test = split_labels(datasets["train"]), split_labels(datasets["test"])
    if train is None or test is None or not len(train) or not len(test):
        return None
    if isinstance(module, Classifier):
        return _majority_class(train.long(), test.long(), module.num_classes, getattr(module, "label_names", None))
    return _training_mean(train.float(), test.float())


def _majority_class(train, test, num_classes: int, names: list[str] | None) -> dict[str, Any]:
    import torch
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    counts = torch.bincount(train, minlength=num_classes)
    majority = int(counts.argmax())  # the first of equal counts
    predicted = torch.full_like(test, majority)
    return {
        "kind": "majority class",
        "description": "predicting the training split's most frequent class for every test example",
        "class": names[majority] if names and majority < len(names) else majority,
        "train_share": float(counts[majority]) / len(train),
        "metrics": {
            "test/acc": float(MulticlassAccuracy(num_classes=num_classes, average="micro")(predicted, test)),
            "test/f1": float(MulticlassF1Score(num_classes=num_classes, average="macro")(predicted, test)),
        },
    }


def _majority_tag(module, train_rows, test_rows) -> dict[str, Any] | None:
    """Every labelled position of the test split tagged with the training split's most frequent tag,
    scored by the tagger's own test metrics (token accuracy, entity F1/precision/recall)."""
    import torch

    from headstart.heads.token_classification import IGNORE_INDEX

    train = torch.cat([torch.as_tensor(row).flatten() for row in train_rows])
    train = train[train != IGNORE_INDEX]
    if not len(train) or not len(test_rows):
        return None
    counts = torch.bincount(train, minlength=len(module.label_names))
    majority = int(counts.argmax())  # the first of equal counts
    target = torch.full((len(test_rows), max(len(row) for row in test_rows)), IGNORE_INDEX)
    for i, row in enumerate(test_rows):
        target[i, :len(row)] = torch.as_tensor(row)
    metrics = module.test_metrics.clone()
    metrics.reset()
    metrics.update(torch.full_like(target, majority), target)
    return {
        "kind": "majority tag",
        "description": "tagging every word with the training split's most frequent tag",
        "class": module.label_names[majority],
        "train_share": float(counts[majority]) / len(train),
        "metrics": {name: float(value) for name, value in module.metric_values(metrics.compute()).items()},
    }


def _training_mean(train, test) -> dict[str, Any]:
    mean = train.mean(0)
    predicted = mean.expand_as(test)
    return {
        "kind": "training mean",
        "description": "predicting the training split's mean target for every test example",
        "value": mean.tolist(),
        "metrics": {"test/mse": float(((predicted - test) ** 2).mean()), "test/mae": float((predicted - test).abs().mean())},
    }


def baseline_value(record: dict[str, Any] | None, metric: str) -> float | None:
    """The baseline's score in ``metric`` of a results.json record (None: none recorded for it)."""
    return ((record or {}).get("baseline") or {}).get("metrics", {}).get(metric)


# -- which checkpoint each metric comes from ---------------------------------------------------------
def checkpoint_provenance(trainer, metrics: dict[str, float], source: dict[str, Any]) -> dict[str, Any]:
    """results.json's ``checkpoints``: from which weights the test/, val/ and train/ metrics come
    ("best": the checkpoint best on validation; "last": the end of training; None: not measured),
    the paths of both checkpoints, the monitor and its best score, and the validation metrics of the
    checkpoint that was tested."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, ModelCheckpoint)]
    best = next((c for c in callbacks if c.best_model_path), None)
    # last.ckpt by its name: testing the best checkpoint restores the callbacks' state as it was then,
    # when last_model_path may not have been set yet.
    lasts = [Path(c.dirpath) / f"{c.CHECKPOINT_NAME_LAST}{c.FILE_EXTENSION}" for c in callbacks if c.save_last and c.dirpath]
    lasts += [Path(c.last_model_path) for c in callbacks if c.last_model_path]
    last = next((p for p in lasts if p.is_file()), None)
    tested = source.get("test")
    record = {
        "test": tested,
        "val": source.get("val") if any(k.startswith("val/") for k in metrics) else None,
        "train": source.get("train") if any(k.startswith("train/") for k in metrics) else None,
        "best": str(Path(best.best_model_path).resolve()) if best else None,
        "last": str(Path(last).resolve()) if last else None,
        "monitor": best.monitor if best else None,
        "best_score": float(best.best_model_score) if best and best.best_model_score is not None else None,
    }
    if tested:
        # The val/ metrics are those of the tested checkpoint: re-validated when it is the best one.
        record["tested"] = record["best"] if tested == "best" else (record["last"] or "the weights at the end of training")
        record["tested_val_metrics"] = {k: v for k, v in metrics.items() if k.startswith("val/")}
    return record


# -- numbers over seeds -----------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, Any]:
    """Mean, std (sample, n−1; 0 for one value), min, max and n of ``values``."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def mean_cell(values: list[float], digits: int = 4) -> str:
    """"0.8123 ± 0.0120" over the values (a single value: itself), and on a second line every value."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    stats = spread(values)
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}\n" + " ".join(f"{v:.{digits}f}" for v in values)


def one_value(values) -> Any:
    """The value all of ``values`` share (None missing ones ignored), else None."""
    found = {v for v in values if v is not None}
    return found.pop() if len(found) == 1 else None


def emit(table, notes: list[str], out: Path) -> None:
    """Print ``table`` and its notes (last, after every library's output) and write the same text to
    ``out/results_table.txt``."""
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    (out / TABLE_NAME).write_text(console.export_text())


# -- what a pipeline's table and figure say about themselves ------------------------------------------
def pipeline_context(stages: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """What a pipeline's table and figure say beside the numbers, from its stages' results.json
    records: the metric in words, the data, model and pretraining objective, the trivial baseline's
    kind, the size of the test split and which checkpoint the test metrics come from."""
    pretrain = stages.get("pretrain") or {}
    downstream = [r for name, r in stages.items() if name != "pretrain" and isinstance(r, dict)]
    setup = next((r["setup"] for r in downstream if r.get("setup")), {})
    objective = (pretrain.get("setup") or {}).get("task") or \
        task_words((pretrain.get("export_metadata") or {}).get("objective"))
    task = next((r.get("task") for r in downstream if r.get("task")), None)
    baseline = next((r["baseline"] for r in downstream if baseline_value(r, metric) is not None), None)
    tested = {(r.get("checkpoints") or {}).get("test") for r in downstream} - {None}
    # Every downstream run reads the same dev and test files (label amounts subset the training split
    # after the check), so their records of shared rows agree: the first stands for all.
    split_overlap = next((r["split_overlap"] for r in downstream if r.get("split_overlap")), None)
    return {
        "metric": metric, "metric_words": metric_words(metric, task), "lower_is_better": lower_is_better(metric),
        "data": setup.get("data"), "model": setup.get("model"), "task": setup.get("task"), "objective": objective,
        "test_examples": one_value(r.get("test_examples") for r in downstream),
        "baseline": {"kind": baseline["kind"], "description": baseline["description"],
                     "value": one_value(baseline_value(r, metric) for r in downstream)} if baseline else None,
        "checkpoint": tested.pop() if len(tested) == 1 else ("mixed" if tested else None),
        "spread": SPREAD, "spread_words": SPREAD_WORDS, "split_overlap": split_overlap,
    }


_CHECKPOINT_WORDS = {"best": "each run's best checkpoint on validation", "last": "the end of each run's training",
                     "mixed": "the best checkpoint on validation where a run had one, else the end of training"}


def value_note(context: dict[str, Any]) -> str:
    """"Values: test accuracy (test/acc) on the 270 test examples, from each run's best checkpoint on validation."."""
    n_test = context.get("test_examples")
    where = f" on the {n_test} test examples" if n_test else ""
    source = _CHECKPOINT_WORDS.get(context.get("checkpoint") or "")
    return f"Values: {context['metric_words']} ({context['metric']}){where}" + (f", from {source}" if source else "") + \
        (" (lower is better)." if context.get("lower_is_better") else ".")


def baseline_note(context: dict[str, Any]) -> str:
    baseline = context.get("baseline")
    if not baseline:
        return f"No trivial baseline for {context['metric']} (computed for accuracy and macro-F1 of classifiers, " \
               "MSE and MAE of regression)."
    return f"{baseline['kind']}: the score of {baseline['description']}."


def setup_note(context: dict[str, Any]) -> str | None:
    parts = [f"data {context['data']}" if context.get("data") else None,
             f"model {context['model']}" if context.get("model") else None,
             f"pretrained with {context['objective']}" if context.get("objective") else None]
    parts = [p for p in parts if p]
    return "Setup: " + "; ".join(parts) + "." if parts else None
