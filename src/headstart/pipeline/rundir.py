"""Run directories: one per run, never written over, with the composed config beside the results."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from headstart.errors import ConfigError

# What a finished or started run leaves behind; a new run refuses a directory holding any of these.
RUN_MARKERS = ("results.json", "checkpoints", "export", "csv", "handoff_report.json")


def is_secondary_rank() -> bool:
    """A process that joins rank 0's run (DDP child, torchrun/SLURM rank > 0) and so shares its directory."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) > 0


def run_stamp() -> str:
    """The run directory's last part. Processes started together by torchrun or SLURM must agree on
    it, so it comes from their shared job id there; otherwise the time to the microsecond."""
    from datetime import datetime

    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_STEP_ID', '0')}"
    return datetime.now().strftime("%H-%M-%S-%f")


def claim_run_dir(output_dir: Path, resuming: bool) -> None:
    """Refuse to start a fresh run in a directory that already holds another run's outputs."""
    found = [m for m in RUN_MARKERS if (output_dir / m).exists()]
    if found and not resuming and not is_secondary_rank():
        raise ConfigError(
            f"{output_dir} already holds the outputs of an earlier run ({', '.join(found)}); headstart never "
            "writes over a run. Leave hydra.run.dir / paths.output_dir at their defaults for a new directory, "
            "or continue that run with resume=auto (or resume=<its directory>)."
        )
    output_dir.mkdir(parents=True, exist_ok=True)


def config_hash(cfg: DictConfig) -> str:
    """A hash of what the run trains (paths and run names left out, so reruns of one config agree)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "run_name", "run_group", "logger", "callbacks", "resume"):
        container.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_config(cfg: DictConfig, output_dir: Path) -> None:
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
