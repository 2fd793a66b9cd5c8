"""Using a fine-tuned model without training it (``mode=predict`` / ``mode=evaluate``).

``python train.py mode=predict model.init_from=<run or export> data.predict_files=[new.csv]`` labels
every row of the files and writes ``predictions.jsonl`` and ``predictions.csv`` into the run directory;
``mode=evaluate ... data.test_files=[labelled.csv]`` scores the model on a labelled file with the
head's own test metrics (``test/...``) and writes them to ``results.json``.

The fine-tuning run's own data module reads the rows (:mod:`headstart.data.new_rows`): built from the
``data_config`` its export records (columns, delimiter, max_length, batch size, doc_stride, ...), with
the export's tokenizer or image processor and its labels, and the module's collator; Lightning's
Trainer (the config's precision and devices) runs the batches. Data settings given on the command line
(``data.text_column=...``) win over the export's. Every head predicts: a label and its probabilities
(sequence and image classification), values in the data's units (regression), a tag a word and the
entities (token classification), an answer span (question answering); a multi-task run's tasks one
export at a time.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from headstart.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MODES = ("train", "predict", "evaluate")
#: Data settings that say what to read, not how: taken from the command line, never from the export.
_WHAT_TO_READ = ("builtin", "train_files", "val_files", "test_files", "predict_files", "train_dir", "val_dir",
                 "test_dir", "cache_dir", "data_dir", "overlap_files")
#: What a missing word tag is written as in predictions.csv (null in predictions.jsonl).
NO_TAG = "-"


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is unknown; use train (the default), predict (label data.predict_files "
                          "with the fine-tuned model of model.init_from) or evaluate (its metrics on data.test_files).")


def run_inference(cfg: DictConfig) -> dict[str, float]:
    """Predict or evaluate as ``cfg.mode`` says; return the metrics (none for predict)."""
    from hydra.utils import instantiate

    from headstart.pipeline.rundir import save_config
    from headstart.transfer.export import EXPORT_METADATA, load_module_from_export

    check_mode(cfg.mode)
    export_dir, meta = head_export(cfg.model.get("init_from"), cfg.mode)
    split = "predict" if cfg.mode == "predict" else "test"
    paths = files_to_read(cfg.data, split, cfg.mode)
    # What the export says to build is checked before anything is built (its files are data): the data
    # config here, the task config first thing in load_module_from_export.
    data_config = new_data_config(meta, cfg.data, _command_line_keys(), str(cfg.paths.cache_dir),
                                  source=export_dir / EXPORT_METADATA)
    module = load_module_from_export(export_dir)
    processor = load_processor(export_dir, module)
    datamodule = instantiate(data_config, _convert_="all")
    datamodule.bind_model(processor, meta.get("task_kwargs") or {})
    rows = datamodule.read_new_rows(split, paths, labelled=split == "test")
    loader = torch.utils.data.DataLoader(rows.examples, batch_size=datamodule.eval_batch_size, shuffle=False,
                                         collate_fn=module.build_collator(processor))

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False,
                          enable_model_summary=False, default_root_dir=str(output_dir))
    record: dict[str, Any] = {"mode": cfg.mode, "export_dir": str(export_dir.resolve()), "files": paths,
                              "rows": len(rows), "data": data_config}
    if cfg.mode == "predict":
        batches = trainer.predict(module, dataloaders=loader)
        records = prediction_records(rows, [p for batch in batches or [] for p in batch], several_files=len(paths) > 1)
        written = write_predictions(output_dir, records)
        record.update(metrics={}, predictions=[str(p) for p in written])
        print(f"Predictions for {len(rows)} rows: {written[0]} and {written[1]}", flush=True)
    else:
        tested = trainer.test(module, dataloaders=loader, verbose=False)
        record["metrics"] = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
        print(f"Metrics of {export_dir} on {paths} ({len(rows)} rows):", flush=True)
        for name, value in sorted(record["metrics"].items()):
            print(f"  {name}: {value:.6g}", flush=True)
    (output_dir / "results.json").write_text(json.dumps(record, indent=2, default=str))
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


def load_processor(export_dir: Path, module):
    """The export's tokenizer, or its image processor for an image model."""
    if module.hf_task == "image":
        from headstart.data.vision import ImageProcessor

        return ImageProcessor.from_pretrained(export_dir)
    from headstart.data.tokenizer import load_tokenizer

    return load_tokenizer(str(export_dir))


# -- the data ----------------------------------------------------------------------------------------
def files_to_read(data_cfg: DictConfig, split: str, mode: str) -> list[str]:
    """``data.predict_files`` or ``data.test_files`` (``data.test_dir`` in an image data config)."""
    paths = list(data_cfg.get(f"{split}_files") or [])
    if not paths and split == "test" and data_cfg.get("test_dir"):
        paths = [data_cfg.test_dir]
    if not paths:
        example = "data.predict_files=[new.csv]" if split == "predict" else "data.test_files=[labelled.csv]"
        raise ConfigError(
            f"mode={mode} needs the rows to {'label' if split == 'predict' else 'score'}: set {example} (.csv, .tsv, "
            ".jsonl or .parquet with the columns the model was fine-tuned on, labels too for evaluate; for an image "
            "model, image files or folders, with one subfolder per class for evaluate).")
    return [str(p) for p in paths]


def _command_line_keys() -> set[str]:
    """The ``data.*`` keys the command line set (they win over the export's data_config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):  # not under Hydra (a test calling in directly)
        return set()
    return {o.split("=", 1)[0].lstrip("+~").removeprefix("data.") for o in overrides if o.lstrip("+~").startswith("data.")}


def new_data_config(meta: dict[str, Any], data_cfg: DictConfig, given: set[str], cache_dir: str,
                    source: str | Path = "headstart_export.json") -> dict[str, Any]:
    """The fine-tuning run's data config (from the export, read from ``source``: it must build one of
    headstart's data modules and nothing else), with the settings the command line gives winning, and
    this run's cache: what builds the data module that reads the new rows."""
    from headstart.config.allowlist import check_buildable, data_module_targets

    exported = meta.get("data_config") or {}
    if isinstance(exported, dict) and not exported.get("_target_"):
        raise CheckpointError("The export records no data config (its headstart_export.json has no data_config "
                              "with a _target_): it was made by an older headstart. Fine-tune the model again to "
                              "predict or evaluate with it.")
    check_buildable(exported, data_module_targets(), source, "data_config", "data modules")
    exported = dict(exported)
    current = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    for key in sorted(given):
        if key in _WHAT_TO_READ or key not in current:
            continue
        if key not in exported:
            raise ConfigError(f"data.{key} is not a setting of the data the model was fine-tuned on "
                              f"({exported['_target_']}); its settings: "
                              f"{', '.join(k for k in exported if not k.startswith('_'))}.")
        exported[key] = current[key]
    if "cache_dir" in exported:
        exported["cache_dir"] = cache_dir
    return exported


# -- the outputs -------------------------------------------------------------------------------------
def prediction_records(rows, predictions: list[dict[str, Any]], several_files: bool) -> list[dict[str, Any]]:
    """Each row's id (and file, when there are several), what the predictions repeat of it, and the
    head's prediction; a tagger's words also get their entities."""
    records = []
    for i, prediction in enumerate(predictions):
        record = {"id": rows.ids[i], **({"file": rows.files[i]} if several_files else {}), **rows.shown[i],
                  **prediction}
        if "tags" in record and "words" in record:
            _with_entities(record)
        records.append(record)
    cut = sum(1 for r in records if None in (r.get("tags") or ()))
    if cut:
        log.warning("%d rows have more words than fit in data.max_length tokens; their last words have no tag "
                    "(null in predictions.jsonl, %r in predictions.csv). Raise data.max_length to tag them.", cut, NO_TAG)
    return records


def _with_entities(record: dict[str, Any]) -> None:
    """Pad a tagger's tags to every word (None past the model's max_length) and add the entities they
    mark: type, first word, end (one past the last word) and text."""
    from headstart.heads.span_f1 import entity_spans

    words, tags = record["words"], record["tags"]
    missing = len(words) - len(tags)
    record["entities"] = [{"type": kind, "start": first, "end": last + 1, "text": " ".join(words[first:last + 1])}
                          for kind, first, last in sorted(entity_spans(tags), key=lambda s: (s[1], s[2]))]
    record["tags"] = tags + [None] * missing
    record["scores"] = record["scores"] + [None] * missing


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    """A prediction as one table row: probabilities as ``prob_<label>`` columns, several values as
    ``prediction_<i>``, words and tags space-separated, entities as JSON."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key == "probabilities":
            row.update({f"prob_{name}": p for name, p in value.items()})
        elif key == "prediction" and isinstance(value, list):
            row.update({f"prediction_{j}": v for j, v in enumerate(value)})
        elif key == "entities":
            row[key] = json.dumps(value)
        elif isinstance(value, list):
            row[key] = " ".join(NO_TAG if v is None else str(v) for v in value)
        else:
            row[key] = value
    return row


def write_predictions(output_dir: Path, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``predictions.jsonl`` (one object a row) and ``predictions.csv`` (:func:`_csv_row`), in the rows' order."""
    jsonl, table = output_dir / "predictions.jsonl", output_dir / "predictions.csv"
    jsonl.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    flat = [_csv_row(r) for r in records]
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in flat for k in row)) or ["id"])
        writer.writeheader()
        writer.writerows(flat)
    return jsonl, table
