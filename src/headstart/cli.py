"""The body of train.py: run a stage or a pipeline, and turn user mistakes into one clear message."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from headstart.errors import ConfigError, HeadstartError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def user_errors_reported() -> Iterator[None]:
    """Print a user's mistake as one paragraph and exit non-zero; let real bugs raise."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except HeadstartError as err:
        _fail(err)
    except KeyboardInterrupt:  # Ctrl-C outside training (there it stops after the batch, with a checkpoint)
        print("headstart: interrupted (Ctrl-C) before training started or after it ended; no checkpoint was "
              "written by this stop.", file=sys.stderr, flush=True)
        sys.exit(130)
    except MissingMandatoryValue as err:
        _fail(ConfigError(f"{err.full_key} has no value (???). Set it on the command line: {err.full_key}=..."))
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, HeadstartError):
            _fail(cause)
        if isinstance(cause, (TypeError, ValueError)):
            _fail(ConfigError(f"{str(err).splitlines()[0]} ({cause}). Check that key's spelling and value in the config."))
        raise


def _fail(err: HeadstartError) -> None:
    print(f"headstart: error: {err}", file=sys.stderr, flush=True)
    sys.exit(err.exit_code)


def _route_library_logs() -> None:
    """One copy of each Lightning message, through Hydra's handlers (console and the run's log file),
    without the advertising and the warnings that do not apply to headstart's choices."""
    import logging
    import warnings

    import lightning  # noqa: F401 - its import adds the console handler removed here

    logging.getLogger("lightning").handlers.clear()

    class _DropTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "💡 Tip" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    # Tokenized data is cached and collation is cheap: worker processes would cost more than they save.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


# Hydra's own flags; any other `--key=value` is an override written the way W&B's agent writes it.
_HYDRA_FLAGS = {"--help", "--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run", "--multirun",
                "--shell-completion", "--config-path", "--config-name", "--config-dir", "--experimental-rerun",
                "--info"}


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``--trainer.max_epochs=3`` as well as Hydra's ``trainer.max_epochs=3``."""
    return [argv[0]] + [a[2:] if a.startswith("--") and "=" in a and a.split("=", 1)[0] not in _HYDRA_FLAGS else a
                        for a in argv[1:]]


def _name_sweep_job(cfg: DictConfig) -> bool:
    """In a multirun, give each job its own W&B run, named by its overrides and grouped by sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return False
    sweep = f"sweep-{Path(hydra_cfg.sweep.dir).name}"
    if cfg.run_group is None:
        cfg.run_group = sweep
    if cfg.run_name is None:
        cfg.run_name = f"{sweep}-{hydra_cfg.job.num}" + _short_overrides(hydra_cfg.overrides.task)
    return True


def _short_overrides(overrides: list[str], limit: int = 60) -> str:
    """The swept settings that tell a multirun's jobs apart, short: values that are paths (files,
    directories) left out, the rest cut at ``limit`` characters."""
    kept = [o for o in overrides
            if "=" in o and "/" not in o.split("=", 1)[1] and not o.startswith(("paths.", "hydra."))]
    text = ",".join(kept)
    return f"-{text[:limit]}" if text else ""


def _print_wandb_sync(output_dir: Path) -> None:
    """The one command that uploads every offline W&B run this run made (and declares their lineage)."""
    from headstart.pipeline.rundir import is_secondary_rank
    from headstart.tracking.artifacts import sync_command

    command = None if is_secondary_rank() else sync_command(output_dir)
    if command:
        print(f"W&B runs logged offline; upload them (and their artifacts' lineage) with:\n  {command}", flush=True)


def run(cfg: DictConfig) -> float | None:
    """Run what ``cfg`` describes; return ``cfg.optimized_metric`` for hyperparameter search."""
    _route_library_logs()
    with user_errors_reported():
        from headstart.pipeline.guards import check_launch
        from headstart.pipeline.rundir import pin_linked_paths

        check_launch(cfg, multirun=_name_sweep_job(cfg))
        for key, real in pin_linked_paths(cfg).items():
            log.info("%s is a link; recorded as the run it points at now: %s", key, real)
        if cfg.mode != "train":  # predict / evaluate with a fine-tuned model: nothing is trained
            from headstart.pipeline.inference import run_inference

            metrics = run_inference(cfg)
        elif cfg.get("pipeline"):
            from headstart.pipeline.runner import run_pipeline

            metrics = run_pipeline(cfg)["metrics"]
        else:
            from headstart.pipeline.stage import run_stage

            metrics = run_stage(cfg).metrics
        _print_wandb_sync(Path(cfg.paths.output_dir))
        metric = cfg.get("optimized_metric")
        if metric is None:
            return None
        if metric not in metrics:
            raise ConfigError(
                f"optimized_metric={metric!r} was not logged; the run logged {sorted(metrics)}. "
                "Set optimized_metric to one of those."
            )
        return metrics[metric]


def wants_help(argv: list[str]) -> bool:
    return any(a in ("--help", "-h") for a in argv[1:])


def print_help(config_dir: Path, argv: list[str]) -> None:
    """``python train.py [overrides] --help``: the template of ``conf/hydra/help/headstart.yaml`` filled
    in with the config groups found in ``config_dir`` and the config the overrides compose. Hydra's
    own help would rebuild its config repository once per group (seconds, with headstart's many
    structured schemas) and list the internal ``schema/*`` groups too."""
    import yaml
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from headstart.config import register_configs

    register_configs()
    groups = {}
    for path in sorted(config_dir.rglob("*.yaml")):
        group = path.parent.relative_to(config_dir).as_posix()
        if group != "." and not group.startswith("hydra"):
            groups.setdefault(group, []).append(path.stem)
    group_lines = "\n".join(f"{group}: {', '.join(sorted(options))}" for group, options in sorted(groups.items()))
    overrides = [a for a in argv[1:] if a not in ("--help", "-h")]
    with user_errors_reported(), initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = compose(config_name="train", overrides=overrides)
        except Exception as err:  # noqa: BLE001 - a bad override: say which, as a run would
            _fail(ConfigError(f"{str(err).splitlines()[0]} Check the override against the groups and keys of "
                              "`python train.py --help` alone."))
    help_cfg = yaml.safe_load((config_dir / "hydra" / "help" / "headstart.yaml").read_text())
    template = help_cfg["template"].replace("${hydra.help.header}", help_cfg["header"]).replace(
        "${hydra.help.footer}", help_cfg["footer"])
    print(template.replace("$APP_CONFIG_GROUPS", group_lines + "\n").replace("$CONFIG", OmegaConf.to_yaml(cfg)))
