"""One training run: data, model, optional hand-off, Lightning fit/test, export, results."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from omegaconf import DictConfig, OmegaConf

from headstart.checkpoints import AtomicCheckpointIO, read_checkpoint
from headstart.config.checks import check_values
from headstart.errors import ConfigError, Interrupted, Preempted
from headstart.pipeline.guards import RankAgreement, ReleaseSpawnedProcessGroup
from headstart.pipeline.resume import ResumePlan, check_resumed_config, latest_checkpoint, plan_resume
from headstart.pipeline.run_record import write_run_record
from headstart.pipeline.rundir import claim_run_dir, config_hash, is_secondary_rank, save_config
from headstart.progress import ProgressBar
from headstart.speed import apply_speed
from headstart.tracking.artifacts import declare_use, exported_artifact, log_model_artifacts, wandb_run
from headstart.tracking.loggers import adopt_csv_columns, build_loggers
from headstart.tracking.wandb import finish_wandb
from headstart.transfer.handoff import apply_handoff, check_export_modality, resolve_export_dir
from headstart.transfer.modes import apply_transfer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """What one stage produced. ``record`` is its results.json as written (for a run that had already
    finished, the one on disk); the fields are the parts of it callers act on."""

    output_dir: Path
    metrics: dict[str, float]
    monitor: str | None = None  # the task's validation metric (task.monitor), which chooses between runs
    monitor_mode: str | None = None  # "min" or "max"
    best_checkpoint: Path | None = None  # the checkpoint tested, best on validation; None: the end of training
    export_dir: Path | None = None  # the exported backbone, for a later stage's model.init_from
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, record: dict[str, Any], output_dir: Path) -> StageResult:
        """The result a results.json record describes (``output_dir``: where it lies, if it does not say)."""
        monitor = record.get("monitor") or {}
        best = (record.get("metrics_source") or {}).get("checkpoint")
        return cls(output_dir=Path(record.get("output_dir") or output_dir), metrics=record.get("metrics", {}),
                   monitor=monitor.get("metric"), monitor_mode=monitor.get("mode"),
                   best_checkpoint=Path(best) if best else None,
                   export_dir=Path(record["export_dir"]) if record.get("export_dir") else None, record=record)


@dataclass
class _Trained:
    """What fitting and testing (or, for a module that does not train, extracting) gave."""

    metrics: dict[str, float]
    # Which checkpoint the metrics come from: "last" (the end of training) unless the best on validation
    # was tested, in which case the val/ metrics are that checkpoint's too (last_epoch keeps the others).
    metrics_source: dict[str, Any] = field(default_factory=lambda: {"val": "last", "train": "last"})
    features: Any = None
    test_outputs: dict[str, Any] | None = None  # every test example's prediction and target (arrays)


def run_stage(cfg: DictConfig) -> StageResult:
    """Train one stage as ``cfg`` says; return its result (its record also written to results.json)."""
    import lightning.pytorch as pl

    started = time.perf_counter()
    check_values(cfg)
    plan, changes = _plan(cfg)
    if plan.finished is not None:
        return StageResult.from_record(plan.finished, plan.output_dir)
    output_dir = plan.output_dir
    # Read as data only, before Lightning opens it: a damaged or code-carrying checkpoint stops here.
    checkpoint = read_checkpoint(plan.ckpt_path, "ckpt_path" if cfg.ckpt_path else "resume") if plan.resuming else None
    claim_run_dir(output_dir, resuming=cfg.resume is not None or cfg.ckpt_path is not None)
    pl.seed_everything(cfg.seed, workers=True)

    # Trainer first: a bad trainer/logger/callback setting fails before any data is tokenized.
    loggers = build_loggers(cfg.logger, checkpoint, keep_history=not is_secondary_rank())
    del checkpoint  # Lightning reads it again to restore
    cfg_hash = config_hash(cfg)
    trainer, agreement = _build_trainer(cfg, loggers, cfg_hash)

    spec = instantiate(cfg.model)
    export_dir = resolve_export_dir(spec.init_from) if spec.init_from else None
    datamodule = _prepare_data(cfg, spec, export_dir)
    module = _build_module(cfg, spec, datamodule)
    handoff = _hand_off(cfg, module, spec, export_dir)
    transfer = apply_transfer(module, **cfg.transfer)
    speed = apply_speed(module, **cfg.speed)
    if speed["compile"] and module.compiles_step and hasattr(datamodule, "use_static_shapes"):
        datamodule.use_static_shapes()  # one graph: no shape for it to compile again
    if trainer.is_global_zero:
        _save_setup(cfg, plan, changes, datamodule, handoff)
    _log_hyperparams(loggers, cfg, cfg_hash, handoff)

    run = wandb_run(loggers) if trainer.is_global_zero else None
    if run is not None and export_dir and cfg.transfer.mode != "scratch":
        declare_use(run, exported_artifact(export_dir), output_dir)  # pretrain -> finetune lineage
    try:
        trained = _train(cfg, trainer, module, datamodule, plan.ckpt_path, output_dir)
        record = _results_record(cfg, cfg_hash, output_dir, trainer, module, datamodule, agreement=agreement,
                                 transfer=transfer, speed=speed, handoff=handoff, trained=trained)
        if trainer.is_global_zero:
            if cfg.export_backbone and (module.exports_backbone or module.exports_head):
                record["exports"] = _export(cfg, trainer, module, datamodule, output_dir, record)
                record["export_dir"] = str((output_dir / "export").resolve())
            if run is not None:  # logged before the W&B run is finished
                record["wandb_artifacts"] = log_model_artifacts(
                    run, cfg.run_name or f"{cfg.task_name}-{output_dir.name}",
                    {task: Path(path) for task, path in record.get("exports", {}).items()},
                    _best_checkpoint(trainer, record), {"config_hash": cfg_hash, "metrics": record["metrics"]})
            record["wall_s"] = round(time.perf_counter() - started, 1)  # this stage, data preparation included
            if trained.test_outputs is not None:  # for the pipeline's intervals (headstart.pipeline.intervals)
                record["test_outputs"] = _save_test_outputs(trained.test_outputs, output_dir, module)
            (output_dir / "results.json").write_text(json.dumps(record, indent=2))
            log.info("Outputs: %s", output_dir.resolve())
    finally:
        finish_wandb()
    return StageResult.from_record(record, output_dir)


TEST_OUTPUTS = "test_outputs.npz"


def _save_test_outputs(outputs: dict[str, Any], output_dir: Path, module) -> dict[str, Any]:
    """Every test example's prediction and target, in the test split's order, as ``test_outputs.npz``
    (with a classifier's number of classes, which macro-F1 averages over); returns its record."""
    import numpy as np

    arrays = dict(outputs)
    if hasattr(module, "num_classes"):
        arrays["num_classes"] = np.array(module.num_classes)
    path = output_dir / TEST_OUTPUTS
    np.savez_compressed(path, **arrays)
    return {"file": str(path.resolve()), "examples": len(outputs["targets"]), "metrics": list(module.per_example_metrics)}


def _best_checkpoint(trainer, record: dict[str, Any]) -> Path | None:
    """The checkpoint best on validation: the one tested, else the checkpoint callback's best (a run
    without a test split, e.g. pretraining)."""
    tested = (record.get("metrics_source") or {}).get("checkpoint")
    callback = trainer.checkpoint_callback
    best = tested or (callback.best_model_path if callback is not None and callback.monitor else None)
    return Path(best) if best else None


def _plan(cfg: DictConfig) -> tuple[ResumePlan, dict[str, Any]]:
    """Where the run goes (resume=<run dir>: on in its own directory, which ``cfg`` then names) and what
    it continues, with the settings a resumed run changed. Checked before anything is written: a
    refused resume leaves the run's record as it was."""
    plan = plan_resume(cfg.resume, cfg.ckpt_path, Path(cfg.paths.output_dir))
    if str(plan.output_dir) != cfg.paths.output_dir:
        cfg.paths.output_dir = str(plan.output_dir)
    changes = check_resumed_config(cfg, plan.output_dir) if cfg.resume is not None else {}
    if plan.finished is not None and changes:
        last = latest_checkpoint(plan.output_dir)
        raise ConfigError(
            f"{plan.output_dir} already finished, so its changed settings ({', '.join(changes)}) would not apply. To "
            f"train it further, start a new run from its last checkpoint: ckpt_path={last} with the new settings "
            "(and without resume)."
        )
    return plan, changes


def _build_trainer(cfg: DictConfig, loggers: list[Any], cfg_hash: str) -> tuple[Any, RankAgreement]:
    """The Trainer, with the config's callbacks and the checks that the ranks agree on ``cfg_hash``."""
    agreement = RankAgreement(cfg_hash)
    # Checkpoints written atomically (a kill mid-write keeps the previous one), unless the config
    # brings its own checkpoint plugins.
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    callbacks = [instantiate(conf) for conf in (cfg.callbacks or {}).values()
                 if isinstance(conf, DictConfig) and "_target_" in conf]
    if not loggers:  # logger=none: nothing to log learning rates to (Lightning would refuse the monitor)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBarBase)
                                                                       for c in callbacks):
        callbacks.append(ProgressBar())  # reads the shown loss at logging steps, not every step
    trainer = instantiate(cfg.trainer, logger=loggers or False,
                          callbacks=[*callbacks, agreement, ReleaseSpawnedProcessGroup()], **plugins)
    return trainer, agreement


def _prepare_data(cfg: DictConfig, spec, export_dir: Path | None):
    """The datamodule, its data read and tokenized with the processor ``_processor_source`` names."""
    _check_writable(Path(cfg.paths.cache_dir), "paths.cache_dir")
    datamodule = instantiate(cfg.data)
    if export_dir:
        from headstart.data.vision import ImageDataModule

        check_export_modality(export_dir, text_task=not isinstance(datamodule, ImageDataModule))
    datamodule.prepare(_processor_source(cfg, spec, export_dir))
    return datamodule


def _processor_source(cfg: DictConfig, spec, export_dir: Path | None) -> str | None:
    """Where the processor (tokenizer) comes from: data.tokenizer if given, else the checkpoint's or the
    model's, else where the task's class says (``HeadstartModule.processor_source``: a distillation
    teacher's, whose logits index its vocabulary), else None: trained on the data."""
    source = cfg.data.get("tokenizer") or (str(export_dir) if export_dir else spec.name_or_path)
    if source:
        return source
    return get_class(cfg.task._target_).processor_source(cfg.task)


def _build_module(cfg: DictConfig, spec, datamodule):
    """The task's module on the backbone ``spec``, with what the data decides (number of classes, ...);
    the datamodule then batches with the module's collator."""
    spec.bind(datamodule)
    from_data = datamodule.task_kwargs()
    _check_not_set_by_hand(cfg.task, from_data)
    module = instantiate(cfg.task, backbone=spec, **from_data, _convert_="all")
    datamodule.set_collator(module.build_collator(datamodule.processor))
    return module


def _hand_off(cfg: DictConfig, module, spec, export_dir: Path | None) -> dict[str, Any] | None:
    """Load the export's weights into ``module``; the hand-off report (None: nothing handed off).
    transfer=scratch keeps the checkpoint's tokenizer but not its weights: the from-scratch baseline."""
    if not export_dir or cfg.transfer.mode == "scratch":
        return None
    return apply_handoff(module, str(export_dir), getattr(spec, "init_scope", "backbone"),
                         getattr(spec, "allow_incomplete", False))


def _save_setup(cfg: DictConfig, plan: ResumePlan, changes: dict[str, Any], datamodule,
                handoff: dict[str, Any] | None) -> None:
    """What the run starts from, in its directory: config, run record, processor, hand-off report."""
    save_config(cfg, plan.output_dir, changes)
    write_run_record(plan.output_dir, plan.ckpt_path, changes)
    datamodule.save_processor(plan.output_dir)
    if handoff:
        (plan.output_dir / "handoff_report.json").write_text(json.dumps(handoff, indent=2))


def _log_hyperparams(loggers: list[Any], cfg: DictConfig, cfg_hash: str, handoff: dict[str, Any] | None) -> None:
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["config_hash"] = cfg_hash
    if handoff:
        hparams["handoff"] = {k: (len(v) if isinstance(v, list) else v) for k, v in handoff.items()}
    for logger in loggers:
        logger.log_hyperparams(hparams)


def _train(cfg: DictConfig, trainer, module, datamodule, ckpt_path: str | None, output_dir: Path) -> _Trained:
    """Fit the module (and test it, as test_after_fit says); a module that does not train extracts."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if not module.trains:
        return _Trained({}, features=module.extract(trainer, datamodule, output_dir))
    _fit(trainer, module, datamodule, ckpt_path)
    trained = _Trained({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.test_after_fit and datamodule.has_test and is_overridden("test_step", module):
        _test(trainer, module, datamodule, trained)
    return trained


def _tokenizer_fingerprint(datamodule) -> str | None:
    """A hash of how the run's tokenizer splits text (None for image data): equal in two runs of one
    command, however fresh their processes and caches."""
    from headstart.data.tokenizer import tokenizer_fingerprint

    processor = getattr(datamodule, "processor", None)
    return tokenizer_fingerprint(processor) if hasattr(processor, "backend_tokenizer") else None


def _check_writable(directory: Path, setting: str) -> None:
    """A directory headstart writes to is one it can write to; else the message names the setting, not
    the first file that happened to be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{setting}={str(directory)!r} cannot be written to ({err.strerror}: {err.filename}). Point "
                          f"{setting} at a directory you can write to.") from None


def _check_not_set_by_hand(task_cfg: DictConfig, from_data: dict[str, Any]) -> None:
    """Settings the data decides (number and names of classes, targets) are not the config's: one given
    by hand that disagrees would be recorded in config.yaml yet not used."""
    for key, value in from_data.items():
        given = task_cfg.get(key)
        if given is not None and given != value:
            shown = value if not isinstance(value, list) or len(value) <= 10 else f"{len(value)} entries"
            raise ConfigError(f"task.{key}={given!r}, but the data gives {shown!r}; task.{key} is read from the data. "
                              f"Drop the task.{key} override (or fix the data if it is the data that is wrong).")


def _fit(trainer, module, datamodule, ckpt_path: str | None) -> None:
    """``trainer.fit``; SIGTERM or Ctrl-C ends it with a checkpoint saved (CheckpointOnSigterm) and a
    non-zero exit (143 or 130) that says how to resume."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from headstart.training_guards import CheckpointOnSigterm

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        stopper = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnSigterm)), None)
        by = (stopper.stopped_by if stopper else None) or "SIGTERM"
        saved = f"its checkpoint is in {Path(trainer.default_root_dir) / 'checkpoints'}" if stopper else \
            "no checkpoint was saved at the signal (callbacks.sigterm_checkpoint is off)"
        raise (Interrupted if by == "SIGINT" else Preempted)(
            f"stopped by {'Ctrl-C (SIGINT)' if by == 'SIGINT' else by} at step {trainer.global_step}; {saved}. Run "
            f"the same command with resume=auto and hydra.run.dir={trainer.default_root_dir} to continue it."
        ) from None


def _test(trainer, module, datamodule, trained: _Trained) -> None:
    """Test the checkpoint best on validation (without one, the end of training) and add its metrics;
    the val/ metrics become that checkpoint's too, the last epoch's kept in metrics_source."""
    if trainer.is_global_zero:  # the CSV logger writes on rank 0 only
        adopt_csv_columns(trainer.loggers)
    metrics, metrics_source = trained.metrics, trained.metrics_source
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics_source["test"] = "best" if best else "last"
    if best:
        # The validation metrics of the checkpoint that is tested, not of the last epoch.
        metrics_source["last_epoch"] = {k: v for k, v in metrics.items() if k.startswith("val/")}
        fit_loggers, trainer.loggers = trainer.loggers, []  # for results.json; the logs keep the fit's
        try:
            validated = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False,
                                         weights_only=True)
        finally:
            trainer.loggers = fit_loggers
        metrics.update({k: float(v) for k, v in (validated[0] if validated else {}).items()})
        metrics_source.update(val="best", checkpoint=str(Path(best).resolve()))
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    if hasattr(module, "per_example_test_outputs"):
        trained.test_outputs = module.per_example_test_outputs()


def _results_record(cfg: DictConfig, cfg_hash: str, output_dir: Path, trainer, module, datamodule, *,
                    agreement: RankAgreement, transfer, speed, handoff: dict[str, Any] | None,
                    trained: _Trained) -> dict[str, Any]:
    """What results.json records of the run (the export's directory is added once it is written):
    besides the metrics, which checkpoint each comes from (``checkpoints``), the test split's size and
    the trivial baseline's score on it (``baseline``), and the run in words (``setup``)."""
    from headstart.pipeline import report

    record = {
        "output_dir": str(output_dir.resolve()),
        "task": type(module).__name__,
        "config_hash": cfg_hash,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "completed": not trainer.interrupted,
        "world_size": trainer.world_size,
        "transfer": transfer,
        "speed": speed,
        "rank_config_hashes": agreement.rank_hashes,
        "metrics": trained.metrics,
        "metrics_source": trained.metrics_source,
        "checkpoints": report.checkpoint_provenance(trainer, trained.metrics, trained.metrics_source),
        "monitor": {"metric": cfg.task.get("monitor"), "mode": cfg.task.get("monitor_mode")},
        "handoff": {k: len(v) for k, v in handoff.items() if isinstance(v, list)} if handoff else None,
        "train_examples": _train_examples(datamodule),
        "split_overlap": getattr(datamodule, "split_overlap", None),
        "test_examples": report.split_size(datamodule, "test") if "test" in trained.metrics_source else None,
        "baseline": report.trivial_baseline(module, datamodule) if "test" in trained.metrics_source else None,
        "setup": report.describe_setup(cfg, module),
        "tokenizer_fingerprint": _tokenizer_fingerprint(datamodule),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": _peak_gpu_mb(),
    }
    first_step = [c.time_to_first_step for c in trainer.callbacks if getattr(c, "time_to_first_step", None)]
    if first_step:
        record["time_to_first_step"] = first_step[0]
    if trained.features is not None:
        record["features"] = trained.features
    return record


def _export(cfg: DictConfig, trainer, module, datamodule, output_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    """Export the model with its processor and a model card to ``output_dir/export``: a pretraining
    objective's backbone as the run left it, a downstream head with the weights of the checkpoint best
    on validation (a multi-task model: one export per task, ``export/<task>``). Returns the export
    directories, ``{task: path}`` (the task "" for a single export)."""
    import shlex

    directory = output_dir / "export"
    checkpoint, kind = _exported_checkpoint(trainer, module, output_dir, record)
    module.export(str(directory), datamodule.processor, {
        "source_run": record["output_dir"], "config_hash": record["config_hash"], "completed": record["completed"],
        "global_step": record["global_step"], "checkpoint": checkpoint, "checkpoint_kind": kind,
        "init_from": _lineage(cfg),
        "command": shlex.join(sys.argv),
        "metrics": {k: v for k, v in record["metrics"].items() if k.startswith(("val/", "test/"))},
        "data": _data_summary(cfg.data, datamodule),
        "task_kwargs": datamodule.task_kwargs(),
        **{f"{section}_config": OmegaConf.to_container(cfg[section], resolve=True) for section in ("task", "data", "model")},
    })
    if (directory / "config.json").is_file():
        return {"": str(directory.resolve())}
    return {path.name: str(path.resolve()) for path in sorted(directory.iterdir()) if (path / "config.json").is_file()}


def _exported_checkpoint(trainer, module, output_dir: Path, record: dict[str, Any]) -> tuple[str | None, str]:
    """Which checkpoint the export holds, and whether it is the ``best`` on validation or the ``last``
    (the end of training). A head is given the best checkpoint's weights here: after fit the module
    holds the last ones, and the best only if the test split was run on it. A pretraining export keeps
    what the module holds (the best after a test, as before)."""
    tested = (record.get("metrics_source") or {}).get("checkpoint")
    best = _best_checkpoint(trainer, record) if module.exports_head else tested
    if best and module.exports_head:
        module.load_state_dict(read_checkpoint(best, "the best checkpoint")["state_dict"])
    if best:
        return str(Path(best).resolve()), "best"
    last = output_dir / "checkpoints" / "last.ckpt"
    return (str(last.resolve()) if last.is_file() else None), "last"


def _lineage(cfg: DictConfig) -> dict[str, Any] | None:
    """The export the run started from (``model.init_from``), with its config hashes; None: none."""
    from headstart.data.files import file_sha256
    from headstart.transfer.export import read_metadata

    init_from = cfg.model.get("init_from")
    if not init_from:
        return None
    source = resolve_export_dir(init_from)
    meta = read_metadata(source)
    return {"path": str(source.resolve()), "config_hash": meta.get("config_hash"),
            "config_sha256": meta.get("config_sha256") or file_sha256(source / "config.json"),
            "source_run": meta.get("source_run"), "objective": meta.get("objective"),
            # What was loaded from it: transfer=scratch keeps its tokenizer only.
            "loaded": None if cfg.transfer.mode == "scratch" else cfg.model.get("init_scope", "backbone")}


_SPLIT_SOURCES = {"train": ("train_files", "train_dir"), "validation": ("val_files", "val_dir"),
                  "test": ("test_files", "test_dir")}


def _data_summary(data_cfg: DictConfig, datamodule) -> dict[str, Any]:
    """The run's data for the model card: built-in set or files per split, and examples per split (a
    multi-task run: one such summary per task, under ``tasks``)."""
    tasks = getattr(datamodule, "tasks", None)
    if isinstance(tasks, dict):
        return {"tasks": {name: _data_summary(data_cfg.tasks[name], data) for name, data in tasks.items()}}
    files = {}
    for split, keys in _SPLIT_SOURCES.items():
        for key in keys:
            value = data_cfg.get(key)
            if value:
                files[split] = value if isinstance(value, str) else [str(v) for v in value]
    examples = {split: len(data) for split, data in (getattr(datamodule, "datasets", None) or {}).items()}
    return {"builtin": data_cfg.get("builtin"), "files": files, "examples": examples}


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (what the OS had to give the run), in MiB."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def _peak_gpu_mb() -> float | None:
    """The most GPU memory this process's tensors held (torch's allocator), in MiB; None without CUDA."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def _train_examples(datamodule) -> int | None:
    """How many training examples the run had (after data.label_fraction / label_count)."""
    try:
        return len(datamodule.datasets["train"])
    except (AttributeError, KeyError, TypeError):
        return None
