"""One training run: data, model, optional hand-off, Lightning fit/test, export, results."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from headstart.checkpoints import AtomicCheckpointIO, read_checkpoint
from headstart.config.checks import check_values
from headstart.errors import ConfigError, Interrupted, Preempted
from headstart.pipeline.guards import RankAgreement, ReleaseSpawnedProcessGroup
from headstart.pipeline.resume import check_resumed_config, latest_checkpoint, plan_resume
from headstart.pipeline.run_record import write_run_record
from headstart.pipeline.rundir import claim_run_dir, config_hash, is_secondary_rank, save_config
from headstart.speed import apply_speed
from headstart.transfer.handoff import apply_handoff, check_export_modality, resolve_export_dir
from headstart.transfer.modes import apply_transfer

log = logging.getLogger(__name__)


def _instantiate_group(node: DictConfig | None, extra=lambda conf: {}) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict group (loggers, callbacks), each with the keyword
    arguments ``extra(conf)`` adds."""
    if not node:
        return []
    return [instantiate(conf, **extra(conf)) for conf in node.values()
            if isinstance(conf, DictConfig) and "_target_" in conf]


def _instantiate_loggers(node: DictConfig | None, checkpoint: dict[str, Any] | None) -> list[Any]:
    """The loggers; resuming from a checkpoint that recorded a W&B run continues that run."""
    run_id = checkpoint.get("wandb_run_id") if checkpoint else None
    resume = {"id": run_id, "resume": "allow"} if run_id else {}
    return _instantiate_group(node, lambda conf: resume if "wandb" in conf._target_ else {})


def _finish_wandb() -> None:
    """Close the W&B run so the next stage or multirun job starts its own."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


def _adopt_csv_columns(loggers: list[Any]) -> None:
    """Under ddp_spawn the fit ran in child processes, so this process's CSV logger has not seen the
    columns they wrote to metrics.csv; Lightning would then rewrite the file with its own, shorter
    header when the test metrics come, and fail. Take the columns over from the file."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if isinstance(logger, CSVLogger) and Path(logger.experiment.metrics_file_path).is_file():
            with open(logger.experiment.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            keys = logger.experiment.metrics_keys
            keys.extend(k for k in header if k not in keys)
            keys.sort()


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


def _keep_csv_history(loggers: list[Any], resumed_step: int) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv when it starts; a resumed run keeps the
    rows its earlier attempt logged up to the checkpoint it continues (later ones are logged again)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if path is None or not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], [r for r in reader if not r.get("step") or
                                                     int(float(r["step"])) < resumed_step]
        logger.experiment  # noqa: B018 - creating the writer is what deletes the file
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
    _adopt_csv_columns(loggers)


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (what the OS had to give the run), in MiB."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def _train_examples(datamodule) -> int | None:
    """How many training examples the run had (after data.label_fraction / label_count)."""
    try:
        return len(datamodule.datasets["train"])
    except (AttributeError, KeyError, TypeError):
        return None


def run_stage(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as ``cfg`` says; return its results (also written to results.json)."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden

    check_values(cfg)
    plan = plan_resume(cfg.resume, cfg.ckpt_path, Path(cfg.paths.output_dir))
    if str(plan.output_dir) != cfg.paths.output_dir:  # resume=<run dir>: the run goes on in its own directory
        cfg.paths.output_dir = str(plan.output_dir)
    output_dir = plan.output_dir
    resuming = cfg.resume is not None or cfg.ckpt_path is not None
    # Checked before anything is written: a refused resume leaves the run's record as it was.
    changes = check_resumed_config(cfg, output_dir) if cfg.resume is not None else {}
    if plan.finished is not None:
        if changes:
            last = latest_checkpoint(output_dir)
            raise ConfigError(
                f"{output_dir} already finished, so its changed settings ({', '.join(changes)}) would not apply. To "
                f"train it further, start a new run from its last checkpoint: ckpt_path={last} with the new settings "
                "(and without resume)."
            )
        return plan.finished
    # Read as data only, before Lightning opens it: a damaged or code-carrying checkpoint stops here.
    checkpoint = read_checkpoint(plan.ckpt_path, "ckpt_path" if cfg.ckpt_path else "resume") if plan.resuming else None
    claim_run_dir(output_dir, resuming=resuming)
    pl.seed_everything(cfg.seed, workers=True)

    # Trainer first: a bad trainer/logger/callback setting fails before any data is tokenized.
    loggers = _instantiate_loggers(cfg.logger, checkpoint)
    if checkpoint is not None and not is_secondary_rank():
        _keep_csv_history(loggers, checkpoint["global_step"])
    del checkpoint  # Lightning reads it again to restore
    cfg_hash = config_hash(cfg)
    agreement = RankAgreement(cfg_hash)
    # Checkpoints written atomically (a kill mid-write keeps the previous one), unless the config
    # brings its own checkpoint plugins.
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    callbacks = _instantiate_group(cfg.callbacks)
    if not loggers:  # logger=none: nothing to log learning rates to (Lightning would refuse the monitor)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, logger=loggers or False,
                          callbacks=[*callbacks, agreement, ReleaseSpawnedProcessGroup()], **plugins)
    spec = instantiate(cfg.model)
    export_dir = resolve_export_dir(spec.init_from) if spec.init_from else None
    _check_writable(Path(cfg.paths.cache_dir), "paths.cache_dir")
    datamodule = instantiate(cfg.data)
    if export_dir:
        from headstart.data.vision import ImageDataModule

        check_export_modality(export_dir, text_task=not isinstance(datamodule, ImageDataModule))
    # The processor (tokenizer): data.tokenizer if given, else the checkpoint's or the model's, else a
    # distillation teacher's (its logits index its vocabulary), else trained.
    teacher = cfg.task.get("teacher")
    datamodule.prepare(cfg.data.get("tokenizer") or (str(export_dir) if export_dir else spec.name_or_path)
                       or (str(resolve_export_dir(teacher, "task.teacher")) if teacher else None))
    spec.bind(datamodule)
    from_data = datamodule.task_kwargs()
    _check_not_set_by_hand(cfg.task, from_data)
    module = instantiate(cfg.task, backbone=spec, **from_data, _convert_="all")
    datamodule.set_collator(module.build_collator(datamodule.processor))

    # transfer=scratch keeps the checkpoint's tokenizer but not its weights: the from-scratch baseline.
    handoff = None
    if export_dir and cfg.transfer.mode != "scratch":
        handoff = apply_handoff(module, str(export_dir), getattr(spec, "init_scope", "backbone"),
                                getattr(spec, "allow_incomplete", False))
    transfer = apply_transfer(module, **cfg.transfer)
    speed = apply_speed(module, **cfg.speed)
    if trainer.is_global_zero:
        save_config(cfg, output_dir, changes)
        write_run_record(output_dir, plan.ckpt_path, changes)
        datamodule.save_processor(output_dir)
        if handoff:
            (output_dir / "handoff_report.json").write_text(json.dumps(handoff, indent=2))
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["config_hash"] = cfg_hash
    if handoff:
        hparams["handoff"] = {k: (len(v) if isinstance(v, list) else v) for k, v in handoff.items()}
    for logger in loggers:
        logger.log_hyperparams(hparams)

    extracted = None
    # Which checkpoint the metrics come from: "last" (the end of training) unless the best on validation
    # was tested, in which case the val/ metrics are that checkpoint's too (last_epoch keeps the others).
    metrics_source: dict[str, Any] = {"val": "last", "train": "last"}
    try:
        if module.trains:
            _fit(trainer, module, datamodule, plan.ckpt_path)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            if cfg.test_after_fit and datamodule.has_test and is_overridden("test_step", module):
                if trainer.is_global_zero:  # the CSV logger writes on rank 0 only
                    _adopt_csv_columns(loggers)
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
                tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False,
                                      weights_only=True)
                metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
        else:
            extracted, metrics = module.extract(trainer, datamodule, output_dir), {}
    finally:
        _finish_wandb()

    results = {
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
        "metrics": metrics,
        "metrics_source": metrics_source,
        "monitor": {"metric": cfg.task.get("monitor"), "mode": cfg.task.get("monitor_mode")},
        "handoff": {k: len(v) for k, v in handoff.items() if isinstance(v, list)} if handoff else None,
        "train_examples": _train_examples(datamodule),
        "tokenizer_fingerprint": _tokenizer_fingerprint(datamodule),
        "peak_rss_mb": _peak_rss_mb(),
    }
    first_step = [c.time_to_first_step for c in trainer.callbacks if getattr(c, "time_to_first_step", None)]
    if first_step:
        results["time_to_first_step"] = first_step[0]
    if extracted is not None:
        results["features"] = extracted
    if trainer.is_global_zero:
        if cfg.export_backbone and module.exports_backbone:
            module.export(str(output_dir / "export"), datamodule.processor, {
                "source_run": str(output_dir.resolve()), "config_hash": cfg_hash, "completed": results["completed"],
                "global_step": trainer.global_step,
            })
            results["export_dir"] = str((output_dir / "export").resolve())
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        log.info("Outputs: %s", output_dir.resolve())
    return results
