"""Hydra callbacks: checks that must run before Hydra writes anything into the run directory."""

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


def _refuse(message: str) -> None:
    print(f"headstart: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
