"""Multi-process safety: refuse launches whose extra processes would train something else, and
check at the start of training that every rank holds the same config."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from headstart.errors import ConfigError

# Strategies whose extra local processes Lightning starts by re-running `python train.py <same args>`.
_RELAUNCHING = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "fsdp",
                "deepspeed")


def _local_processes(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, int):
        return devices if devices > 0 else max(torch.cuda.device_count(), 1)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if not isinstance(devices, str):  # a list of device indices
        return len(devices)
    return max(torch.cuda.device_count(), 1) if trainer_cfg.get("accelerator") in ("auto", "gpu", "cuda") else 1


def _launched_externally() -> bool:
    """torchrun, SLURM or a Lightning parent started this process: no re-execution will happen here."""
    return any(v in os.environ for v in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")) or (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1)


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse a re-executing DDP launch inside a Hydra multirun or a pipeline."""
    strategy = cfg.trainer.get("strategy")
    if not isinstance(strategy, str) or strategy not in _RELAUNCHING or _launched_externally():
        return
    if _local_processes(cfg.trainer) <= 1:
        return
    where = "a Hydra multirun (-m)" if multirun else ("a pipeline" if cfg.get("pipeline") else None)
    if where is None:
        return
    raise ConfigError(
        f"trainer.strategy={strategy} starts its extra processes by re-running `python train.py` with the same "
        f"arguments; inside {where} each of them would run the whole {'sweep' if multirun else 'pipeline'}, so the "
        "ranks would train different jobs. Use trainer.strategy=ddp_spawn (processes started inside each job), "
        "or launch each job on its own with torchrun or srun."
    )


class RankAgreement(pl.Callback):
    """Stop at the start of fitting when the ranks of a multi-process job hold different configs."""

    def __init__(self, config_hash: str) -> None:
        self.config_hash = config_hash
        self.rank_hashes = [config_hash[:15]]  # 15 hex digits fit an int64 for the all-gather

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        mine = torch.tensor([int(self.config_hash[:15], 16)], dtype=torch.int64, device=pl_module.device)
        hashes = [f"{h:015x}" for h in trainer.strategy.all_gather(mine).flatten().tolist()]
        self.rank_hashes = hashes
        if len(set(hashes)) != 1:
            raise ConfigError(
                f"The {trainer.world_size} processes of this job hold different configs (hashes {hashes}); "
                "each rank would train with other settings. Launch every rank with the same arguments."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"config_hash": self.config_hash}


class ReleaseSpawnedProcessGroup(pl.Callback):
    """Close the process group at the end of each ddp_spawn launch.

    ddp_spawn starts fresh worker processes for every fit/validate/test call. Left open, a worker's gloo
    group can still hold a live thread when the worker exits while rank 0 is saving its results, and
    the worker dies with SIGABRT ("terminate called without an active exception"). Waiting for every
    rank and destroying the group first makes the exit clean. Re-executing launchers (torchrun, ddp)
    keep one group for the whole process, so they are left alone.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

        launcher = getattr(trainer.strategy, "launcher", None)
        if not isinstance(launcher, _MultiProcessingLauncher) or not torch.distributed.is_initialized():
            return
        trainer.strategy.barrier("release-process-group")
        torch.distributed.destroy_process_group()
