"""Using a fine-tuned model without training it (``mode=predict`` / ``mode=evaluate``).

``python train.py mode=predict model.init_from=<run or export> data.predict_files=[new.csv]`` labels
every row of the files and writes ``predictions.jsonl`` and ``predictions.csv`` into the run directory;
``mode=evaluate ... data.test_files=[labelled.csv]`` scores the model on a labelled file with the
head's own test metrics (``test/...``) and writes them to ``results.json``.

The rows are read and tokenized as the fine-tuning run read its data: its ``data_config`` (text and
label columns, delimiter, max_length, batch size) from the export's ``headstart_export.json``, the
export's tokenizer, the module's collator; Lightning's Trainer (the config's precision and devices)
runs the batches. Settings given on the command line (``data.text_column=...``) win over the export's.
Text heads that read one text per row are supported: sequence classification and regression.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from headstart.data.text_regression import parse_target
from headstart.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

MODES = ("train", "predict", "evaluate")
#: Data settings the export's data_config gives, unless the command line sets them.
DATA_SETTINGS = ("text_column", "label_column", "delimiter", "max_length", "batch_size", "eval_batch_size",
                 "drop_missing_labels")
_SUPPORTED = "sequence classification (experiment=text_classification) and regression (experiment=text_regression)"


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is unknown; use train (the default), predict (label data.predict_files "
                          "with the fine-tuned model of model.init_from) or evaluate (its metrics on data.test_files).")


def run_inference(cfg: DictConfig) -> dict[str, float]:
    """Predict or evaluate as ``cfg.mode`` says; return the metrics (none for predict)."""
    from hydra.utils import instantiate

    from headstart.data.tokenizer import load_tokenizer
    from headstart.pipeline.rundir import save_config
    from headstart.transfer.export import load_module_from_export

    check_mode(cfg.mode)
    export_dir, meta = head_export(cfg.model.get("init_from"), cfg.mode)
    settings = data_settings(meta.get("data_config") or {}, cfg.data, _command_line_keys())
    split = "predict" if cfg.mode == "predict" else "test"
    paths = [str(p) for p in (cfg.data.get(f"{split}_files") or [])]
    if not paths:
        example = "data.predict_files=[new.csv]" if split == "predict" else "data.test_files=[labelled.csv]"
        raise ConfigError(f"mode={cfg.mode} needs the rows to {'label' if split == 'predict' else 'score'}: set "
                          f"{example} (.csv, .tsv, .jsonl or .parquet with a {settings['text_column']!r} column"
                          f"{'' if split == 'predict' else ' and a ' + repr(settings['label_column']) + ' column'}).")
    module = load_module_from_export(export_dir)
    kind = head_kind(module, export_dir)
    tokenizer = load_tokenizer(str(export_dir))
    tokenizer.model_max_length = settings["max_length"]
    cache_dir = str(Path(cfg.paths.cache_dir) / "hf_datasets")
    rows = read_rows(split, paths, settings, cache_dir, kind if split == "test" else None, module)
    features = _tokenize(tokenizer, rows, settings["max_length"])
    loader = torch.utils.data.DataLoader(features, batch_size=settings["eval_batch_size"] or settings["batch_size"],
                                         shuffle=False, collate_fn=module.build_collator(tokenizer))

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False,
                          enable_model_summary=False, default_root_dir=str(output_dir))
    record: dict[str, Any] = {"mode": cfg.mode, "export_dir": str(export_dir.resolve()), "files": paths,
                              "rows": len(rows["text"]), "data": settings}
    if cfg.mode == "predict":
        outputs = trainer.predict(module, dataloaders=loader)
        written = write_predictions(output_dir, rows, _decoded(module, kind, outputs), several_files=len(paths) > 1)
        record.update(metrics={}, predictions=[str(p) for p in written])
        print(f"Predictions for {len(rows['text'])} rows: {written[0]} and {written[1]}", flush=True)
    else:
        tested = trainer.test(module, dataloaders=loader, verbose=False)
        record["metrics"] = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
        print(f"Metrics of {export_dir} on {paths} ({len(rows['text'])} rows):", flush=True)
        for name, value in sorted(record["metrics"].items()):
            print(f"  {name}: {value:.6g}", flush=True)
    (output_dir / "results.json").write_text(json.dumps(record, indent=2))
    log.info("Outputs: %s", output_dir.resolve())
    return record["metrics"]


# -- the model ---------------------------------------------------------------------------------------
def head_export(init_from: str | None, mode: str) -> tuple[Path, dict[str, Any]]:
    """The export of a fine-tuned head that ``model.init_from`` names, with its metadata."""
    from headstart.transfer.export import read_metadata
    from headstart.transfer.handoff import resolve_export_dir

    if not init_from:
        raise ConfigError(f"mode={mode} needs a fine-tuned model: set model.init_from=<fine-tuned run directory or "
                          "its export/ directory>.")
    earlier = _inference_run_export(Path(init_from))
    if earlier is not None:  # a predict/evaluate run (outputs/latest after one): the model it used
        init_from = str(earlier)
    export_root = Path(init_from) / "export"
    tasks = sorted(p.parent.name for p in export_root.glob("*/config.json"))
    if tasks and not (export_root / "config.json").is_file():
        raise ConfigError(f"model.init_from={init_from!r} is a multi-task run with one export per task; name one: "
                          + ", ".join(f"model.init_from={export_root / t}" for t in tasks) + ".")
    export_dir = resolve_export_dir(str(init_from))
    meta = read_metadata(export_dir)
    if meta.get("export_kind") != "head":
        objective = meta.get("objective") or "an unknown objective"
        raise CheckpointError(
            f"model.init_from={init_from!r} is the export of a pretraining run ({objective}): a backbone without a "
            f"task head, which has nothing to {mode}. Fine-tune it first (e.g. python train.py "
            f"experiment=text_classification data.train_files=[train.csv] model.init_from={init_from}), then point "
            "model.init_from at that run."
        )
    return export_dir, meta


def _inference_run_export(run_dir: Path) -> Path | None:
    """The export a predict or evaluate run used (its results.json says), or None for any other path."""
    try:
        record = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("mode") in ("predict", "evaluate") and record.get("export_dir"):
        return Path(record["export_dir"])
    return None


def head_kind(module, export_dir: Path) -> str:
    """``classification`` or ``regression``; other heads are refused, naming what is supported."""
    from headstart.heads.classification import Classifier
    from headstart.heads.regression import Regressor

    if isinstance(module, Regressor):
        return "regression"
    if isinstance(module, Classifier) and module.hf_task == "sequence":
        return "classification"
    what = {"span": "question answering", "token": "token classification", "image": "image classification"}.get(
        module.hf_task, type(module).__name__)
    raise ConfigError(f"{export_dir} is a {what} model; predict and evaluate are not supported for {what} yet, "
                      f"only for {_SUPPORTED}. Its export loads with transformers (see its README.md).")


# -- the data ----------------------------------------------------------------------------------------
def _command_line_keys() -> set[str]:
    """The ``data.*`` keys the command line set (they win over the export's data_config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):  # not under Hydra (a test calling in directly)
        return set()
    return {o.split("=", 1)[0].lstrip("+~").removeprefix("data.") for o in overrides if o.lstrip("+~").startswith("data.")}


def data_settings(exported: dict[str, Any], data_cfg: DictConfig, given: set[str]) -> dict[str, Any]:
    """How the rows are read: the fine-tuning run's data settings, those the command line sets winning."""
    current = OmegaConf.to_container(data_cfg, resolve=False) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    settings = {}
    for key in DATA_SETTINGS:
        if key in given and key in current:
            settings[key] = current[key]
        elif key in exported:
            settings[key] = exported[key]
        else:
            settings[key] = current.get(key)
    settings["text_column"] = settings["text_column"] or "text"
    settings["label_column"] = settings["label_column"] or "label"
    settings["max_length"] = settings["max_length"] or 128
    settings["batch_size"] = settings["batch_size"] or 32
    return settings


def read_rows(split: str, paths: list[str], settings: dict[str, Any], cache_dir: str, kind: str | None,
              module=None) -> dict[str, list]:
    """Every row of ``paths``: ``text``, ``id`` (the file's id column, else the row's index in its file),
    ``file`` and, for evaluation (``kind`` given), ``labels`` as the head takes them. Evaluation drops
    rows without text, as training did; prediction keeps every row."""
    from headstart.data import files

    text_column, label_column = settings["text_column"], settings["label_column"]
    rows: dict[str, list] = {"text": [], "id": [], "file": [], **({"labels": []} if kind else {})}
    label_ids = {name: i for i, name in enumerate(getattr(module, "label_names", None) or [])}
    for path in paths:
        builder = files.check_files(split, [path])
        ds = files.read_dataset(split, [path], builder, cache_dir, settings["delimiter"])
        column = "text" if builder == "text" else text_column
        wanted = [column, label_column] if kind else [column]
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:
            raise DataError(
                f"data.{split}_files: {path!r} has no column {missing[0]!r} (its columns: {ds.column_names}). The model "
                f"was fine-tuned reading the text from {text_column!r}"
                f"{' and the label from ' + repr(label_column) if kind else ''}; rename the file's column, or set "
                f"data.{'text' if missing[0] == column else 'label'}_column=<its name>.")
        ids = ds["id"] if "id" in ds.column_names else list(range(len(ds)))
        labels = ds[label_column] if kind else [None] * len(ds)
        for number, (text, row_id, label) in enumerate(zip(ds[column], ids, labels, strict=True), start=1):
            has_text = isinstance(text, str) and text.strip() != ""
            if kind:
                if not has_text:
                    continue
                if label is None:
                    if settings.get("drop_missing_labels"):
                        continue
                    raise DataError(f"data.{split}_files: {path!r} row {number} (text {text[:50]!r}) has no "
                                    f"{label_column!r}; give every row a label, or drop the unlabelled ones with "
                                    "data.drop_missing_labels=true.")
                rows["labels"].append(_label(split, path, number, label, kind, label_ids, label_column, module))
            rows["text"].append(text if isinstance(text, str) else "" if text is None else str(text))
            rows["id"].append(row_id)
            rows["file"].append(path)
    if not rows["text"]:
        raise DataError(f"data.{split}_files: {paths} hold no rows with text. Point the config at such data.")
    return rows


def _label(split: str, path: str, number: int, value, kind: str, label_ids: dict[str, int], column: str, module):
    """A row's label as the head takes it: a class id, or the target(s) as floats."""
    if kind == "classification":
        if str(value) not in label_ids:
            raise DataError(f"data.{split}_files: {path!r} row {number} has {column!r} = {value!r}, a label the model "
                            f"was not trained on (its labels: {list(label_ids)[:20]}). Drop those rows, or fine-tune "
                            "a model that knows the label.")
        return label_ids[str(value)]
    target = parse_target(value)
    if target is None or len(target) != module.num_targets:
        raise DataError(f"data.{split}_files: {path!r} row {number} has {column!r} = {value!r}, where the model "
                        f"predicts {module.num_targets} number(s). Give every row a finite number (or a list of "
                        f"{module.num_targets}).")
    return target[0] if module.num_targets == 1 else target


def _tokenize(tokenizer, rows: dict[str, list], max_length: int) -> list[dict[str, Any]]:
    """The examples as the fine-tuning data module tokenized them (truncated at ``max_length``)."""
    encoded = tokenizer(rows["text"], truncation=True, max_length=max_length)
    tokenizer.backend_tokenizer.no_truncation()
    keys = list(encoded.keys())
    examples = [{k: encoded[k][i] for k in keys} for i in range(len(rows["text"]))]
    for example, label in zip(examples, rows.get("labels") or [], strict=False):
        example["labels"] = label
    return examples


# -- the outputs -------------------------------------------------------------------------------------
def _decoded(module, kind: str, outputs: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Each row's prediction: a label and every label's probability, or the value(s) in the data's units."""
    if not outputs:
        return []
    out = torch.cat([o.float().cpu() for o in outputs])
    if kind == "regression":
        values = module.unscale(out).tolist()
        return [{"prediction": v[0] if len(v) == 1 else v} for v in values]
    names = list(module.label_names or [str(i) for i in range(out.size(-1))])
    probabilities = out.softmax(-1).tolist()
    return [{"label": names[max(range(len(p)), key=p.__getitem__)],
             "probabilities": dict(zip(names, p, strict=True))} for p in probabilities]


def write_predictions(output_dir: Path, rows: dict[str, list], predictions: list[dict[str, Any]],
                      several_files: bool) -> tuple[Path, Path]:
    """``predictions.jsonl`` (one object a row) and ``predictions.csv`` (probabilities as ``prob_<label>``
    columns, several targets as ``prediction_<i>``), in the rows' order."""
    records = []
    for i, prediction in enumerate(predictions):
        record = {"id": rows["id"][i], **({"file": rows["file"][i]} if several_files else {}), **prediction}
        records.append(record)
    jsonl, table = output_dir / "predictions.jsonl", output_dir / "predictions.csv"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    flat = []
    for record in records:
        row = {k: v for k, v in record.items() if k not in ("probabilities", "prediction")}
        for name, p in (record.get("probabilities") or {}).items():
            row[f"prob_{name}"] = p
        value = record.get("prediction")
        if isinstance(value, list):
            row.update({f"prediction_{j}": v for j, v in enumerate(value)})
        elif value is not None:
            row["prediction"] = value
        flat.append(row)
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["id"])
        writer.writeheader()
        writer.writerows(flat)
    return jsonl, table
