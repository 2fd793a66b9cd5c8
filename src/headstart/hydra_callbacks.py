"""Hydra callbacks: checks that must run before Hydra writes anything into the run directory, and
the ``latest`` link in the log directory to the newest run once it has run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class GuardRunDir(Callback):
    """Refuse to start a new run in a directory that already holds files (an earlier run's outputs),
    and take the run directory's lock (see ``lock_run_dir``) for the whole run, resumed ones too.

    Hydra writes ``.hydra/`` and ``train.log`` before the task runs, so this cannot wait for the task:
    it runs in ``on_run_start``. Resuming (``ckpt_path`` or ``resume`` set) passes the first check; the
    extra processes that DDP launches into rank 0's directory pass both.

    When a run's process ends (a multirun: when its last job has run), ``paths.log_dir/latest``
    points at the run's directory (a multirun's: the sweep directory), so ``outputs/latest/results.json``
    can be typed; see ``point_latest``. It moves only when a run ends, so ``model.init_from=outputs/latest``
    names the run before; a run refused for a bad setting leaves it where it was.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from headstart.errors import ConfigError
        from headstart.pipeline.rundir import LOCK_FILE, is_secondary_rank, lock_run_dir

        if is_secondary_rank():
            return
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the run dir may interpolate ${hydra:...}
        run_dir = Path(config.hydra.run.dir)
        if run_dir.exists() and not run_dir.is_dir():
            _refuse(f"hydra.run.dir={run_dir} is a file, not a directory. Give a directory (it is created if "
                    "missing), or leave hydra.run.dir at its default.")
        resuming = config.get("ckpt_path") is not None or config.get("resume") is not None
        # A new run leaves a directory with an earlier run's files untouched (the lock file included).
        if not resuming and run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            _refuse(f"{run_dir} already holds the outputs of an earlier run; headstart never writes over a run. Leave "
                    "hydra.run.dir at its default for a new directory, or continue that run with resume=auto.")
        try:
            lock_run_dir(run_dir)  # held for the whole run, resumed runs included
        except ConfigError as err:
            _refuse(str(err))
        except OSError as err:
            _refuse(f"cannot write to hydra.run.dir={run_dir} ({err.strerror}). Give a directory you can write to, "
                    "or leave hydra.run.dir at its default.")
        _point_latest_at_exit(config, run_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            log_dir, sweep_dir = Path(config.paths.log_dir), Path(config.hydra.sweep.dir)
        except Exception:  # noqa: BLE001 - no log directory to name: no link
            return
        _point_latest(log_dir, sweep_dir)


def _point_latest_at_exit(config: DictConfig, run_dir: Path) -> None:
    """When this process ends, however it ends (finished, a user error, preempted, Ctrl-C), point
    ``latest`` at the run if it ran: its directory holds more than Hydra's record and log (a run
    refused for a bad setting leaves ``latest`` where it was; one stopped with a checkpoint moves it)."""
    import atexit

    from headstart.pipeline.rundir import LOCK_FILE

    resume = config.get("resume")
    # resume=<run dir> goes on in that directory, not in the one Hydra made for this start.
    target = Path(str(resume)) if resume not in (None, "auto") and Path(str(resume)).is_dir() else run_dir
    try:
        target, log_dir = target.absolute(), Path(config.paths.log_dir).absolute()
    except Exception:  # noqa: BLE001 - no log directory to name: no link
        return
    hydra_files = {".hydra", "train.log", LOCK_FILE}

    def point_if_it_ran() -> None:
        if target.is_dir() and any(p.name not in hydra_files for p in target.iterdir()):
            _point_latest(log_dir, target)

    atexit.register(point_if_it_ran)


def _point_latest(log_dir: Path, run_dir: Path) -> None:
    """``log_dir/latest`` -> ``run_dir``; never a reason for a run to fail."""
    import logging

    from headstart.pipeline.rundir import point_latest

    try:
        point_latest(log_dir, run_dir)
    except Exception as err:  # noqa: BLE001 - a convenience link: say so, and let the run's exit code stand
        logging.getLogger(__name__).warning("could not point %s/latest at %s: %s", log_dir, run_dir, err)


def _refuse(message: str) -> None:
    print(f"headstart: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
