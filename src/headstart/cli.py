"""The body of train.py: run a stage or a pipeline, and turn user mistakes into one clear message."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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


def run(cfg: DictConfig) -> float | None:
    """Run what ``cfg`` describes; return ``cfg.optimized_metric`` for hyperparameter search."""
    with user_errors_reported():
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
