"""Hydra callbacks: checks that must run before Hydra writes anything into the run directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class GuardRunDir(Callback):
    """Refuse to start a new run in a directory that already holds files (an earlier run's outputs).

    Hydra writes ``.hydra/`` and ``train.log`` before the task runs, so this check cannot wait for
    the task: it runs in ``on_run_start``. Resuming (``ckpt_path`` or ``resume`` set) and the extra processes that
    DDP launches into rank 0's directory are let through.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from headstart.pipeline.rundir import is_secondary_rank

        if config.get("ckpt_path") is not None or config.get("resume") is not None or is_secondary_rank():
            return
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the run dir may interpolate ${hydra:...}
        run_dir = Path(config.hydra.run.dir)
        if run_dir.is_dir() and any(run_dir.iterdir()):
            print(
                f"headstart: error: {run_dir} already holds the outputs of an earlier run; headstart never writes "
                "over a run. Leave hydra.run.dir at its default for a new directory, or continue that run with "
                "resume=auto.",
                file=sys.stderr, flush=True,
            )
            sys.exit(2)
