"""The body of train.py: run a stage or a pipeline, and turn user mistakes into one clear message."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from headstart.errors import ConfigError, HeadstartError


@contextlib.contextmanager
def user_errors_reported() -> Iterator[None]:
    """Print a user's mistake as one paragraph and exit non-zero; let real bugs raise."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except HeadstartError as err:
        _fail(err)
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
        cfg.run_name = f"{sweep}-{hydra_cfg.job.num}" + (f"-{hydra_cfg.job.override_dirname}"
                                                          if hydra_cfg.job.override_dirname else "")
    return True


def run(cfg: DictConfig) -> float | None:
    """Run what ``cfg`` describes; return ``cfg.optimized_metric`` for hyperparameter search."""
    _route_library_logs()
    with user_errors_reported():
        from headstart.pipeline.guards import check_launch

        check_launch(cfg, multirun=_name_sweep_job(cfg))
        if cfg.get("pipeline"):
            from headstart.pipeline.runner import run_pipeline

            results = run_pipeline(cfg)
        else:
            from headstart.pipeline.stage import run_stage

            results = run_stage(cfg)
        metric = cfg.get("optimized_metric")
        if metric is None:
            return None
        if metric not in results["metrics"]:
            raise ConfigError(
                f"optimized_metric={metric!r} was not logged; the run logged {sorted(results['metrics'])}. "
                "Set optimized_metric to one of those."
            )
        return results["metrics"][metric]
