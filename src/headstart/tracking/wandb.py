"""W&B logging that never hangs (online only with an API key and a reachable server), and the W&B
run's lifecycle: continued on resume, closed at the end of each stage."""

from __future__ import annotations

import logging
import netrc
import os
import socket
import sys
from typing import Any
from urllib.parse import urlparse

from headstart.errors import ConfigError

log = logging.getLogger(__name__)

_MODES = ("auto", "online", "offline", "disabled")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _server_reachable(timeout_s: float = 2.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """The W&B mode to use: WANDB_MODE wins, then an explicit mode, then auto-detection."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        env_mode = "offline" if env_mode == "dryrun" else env_mode
        if env_mode not in _MODES[1:]:
            raise ConfigError(f"WANDB_MODE={env_mode!r} is not a W&B mode; set it to online, offline or disabled.")
        return env_mode
    if mode not in _MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is not a W&B mode; use one of {', '.join(_MODES)}.")
    if mode != "auto":
        return mode
    if not _has_api_key():
        log.info("W&B: no API key found, logging offline (sync later with `wandb sync`).")
        return "offline"
    if not _server_reachable():
        log.info("W&B: server unreachable, logging offline (sync later with `wandb sync`).")
        return "offline"
    return "online"


_CONSOLE = ("full", "quiet", "silent")


def wandb_logger(mode: str = "auto", save_dir: str = ".", console_output: str = "quiet", **kwargs: Any):
    """A Lightning ``WandbLogger`` with the mode resolved; extra kwargs go to ``wandb.init``.
    ``console_output``: what W&B itself prints: ``full`` (its run history and summary at the end of
    each run), ``quiet`` (where the run is, nothing at its end: the default, so a pipeline's table is
    not buried) or ``silent`` (nothing). Settings passed as ``settings`` win."""
    from lightning.pytorch.loggers import WandbLogger

    if console_output not in _CONSOLE:
        raise ConfigError(f"logger.wandb.console_output={console_output!r} is not one of {', '.join(_CONSOLE)}.")
    resolved = resolve_wandb_mode(mode)
    os.makedirs(save_dir, exist_ok=True)
    if console_output != "full" and "settings" not in kwargs:
        import wandb

        kwargs["settings"] = wandb.Settings(**{console_output: True})
    if resolved == "offline" and kwargs.get("id"):
        kwargs = _offline_resume(kwargs)
    return WandbLogger(save_dir=save_dir, mode=resolved, offline=resolved == "offline", **kwargs)


def _offline_resume(kwargs: dict[str, Any]) -> dict[str, Any]:
    """W&B cannot continue a run offline: it would write a second ``offline-run-*-<id>`` directory, and
    ``wandb sync`` of the two keeps only one. A resumed offline run is therefore a new W&B run in the
    same group, named ``<name>-resumed``, whose config names the run it continues."""
    previous = kwargs.pop("id")
    kwargs.pop("resume", None)
    config = {**(kwargs.pop("config", None) or {}), "headstart/resumed_from": previous}
    name = kwargs.get("name")
    return {**kwargs, "config": config, "name": f"{name}-resumed" if name else None}


def attached_run_id(loggers) -> str | None:
    """The id of the W&B run among a module's loggers, if any (what a checkpoint records)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return logger.version
    return None


def resume_settings(checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """The ``wandb.init`` arguments that continue the W&B run a checkpoint (read as data) recorded;
    none for a fresh run or a checkpoint without one."""
    run_id = checkpoint.get("wandb_run_id") if checkpoint else None
    return {"id": run_id, "resume": "allow"} if run_id else {}


def finish_wandb() -> None:
    """Close the W&B run, if one is open, so the next stage or multirun job starts its own."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()
