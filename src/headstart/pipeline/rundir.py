"""Run directories: one per run, never written over, with the composed config beside the results."""

from __future__ import annotations

import hashlib
import os
import re
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


LOCK_FILE = ".headstart.lock"
_held_locks: dict[str, int] = {}  # run directory -> open file descriptor, kept for the process's life


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive OS lock on ``run_dir`` for the rest of this process, or refuse: two processes
    started with one run directory would both write into it (and a later resume would trust their
    mixed checkpoints). The lock goes with the process, however it ends (even killed)."""
    import fcntl

    key = str(Path(run_dir).resolve())
    if key in _held_locks:
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"{run_dir} is in use by a run that is still going (process {holder} holds its lock); two runs in one "
            "directory would write over each other. Wait for it to end (then resume=auto continues it if it "
            "stopped early), or leave hydra.run.dir at its default for a directory of this run's own."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} on {os.uname().nodename}".encode())
    _held_locks[key] = fd


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
    if not is_secondary_rank():
        remove_stale_exports(output_dir)


#: ``export.tmp<pid>`` (``export/<task>.tmp<pid>`` for a multi-task run): where an export is written
#: before it is renamed into place (headstart.transfer.export.write_export).
_EXPORT_TMP = re.compile(r"^(?P<name>[^/]+)\.tmp(?P<pid>\d+)$")


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # no such pid can exist
        return False
    return True


def remove_stale_exports(output_dir: Path) -> list[Path]:
    """Remove the half-written exports that a run killed while exporting left in ``output_dir``
    (``export.tmp<pid>/``, and ``export/<task>.tmp<pid>/`` of a multi-task run), which nothing would
    ever remove otherwise. Only those of this process (a restarted container reuses pids) or of a
    process that no longer runs: one of a live process may still be being written. Returns them."""
    import logging
    import shutil

    output_dir = Path(output_dir)
    candidates = [*output_dir.glob("export.tmp*")]
    if (output_dir / "export").is_dir():
        candidates += (output_dir / "export").glob("*.tmp*")
    removed = []
    for path in sorted(candidates):
        match = _EXPORT_TMP.match(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _process_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        logging.getLogger(__name__).warning("Removed %s, an export left half-written by process %d, which was "
                                            "stopped while exporting", path, pid)
    return removed


def config_hash(cfg: DictConfig) -> str:
    """A hash of what the run trains (paths and run names left out, so reruns of one config agree)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "run_name", "run_group", "run_job_type", "run_tags", "logger", "callbacks", "resume"):
        container.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_config(cfg: DictConfig, output_dir: Path, changes: dict | None = None) -> None:
    """``config.yaml``, written once: a resumed run keeps the original, and one that changed a safe
    setting (``changes``) writes its config beside it as ``config.resume<N>.yaml``."""
    original = output_dir / "config.yaml"
    if not original.is_file():
        original.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    elif changes:
        number = 1 + len(list(output_dir.glob("config.resume*.yaml")))
        (output_dir / f"config.resume{number}.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


LATEST = "latest"
#: Settings that name an earlier run; one given through a link is recorded as the run it points at.
LINKED_SETTINGS = ("model.init_from", "resume", "ckpt_path")


def pin_linked_paths(cfg: DictConfig) -> dict[str, str]:
    """Replace a path setting given through a link (``model.init_from=outputs/latest``) by the real path
    it points at now, so the run's config and everything recorded from it name the run it used: the
    link moves with the next run. Paths without a link in them stay as typed. Returns what changed."""
    pinned = {}
    for key in LINKED_SETTINGS:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, str) or value in ("auto", "last", "best") or not Path(value).exists():
            continue
        real = Path(value).resolve()
        if real != Path(value).absolute():
            OmegaConf.update(cfg, key, str(real))
            pinned[key] = str(real)
    return pinned



def point_latest(log_dir: Path, run_dir: Path) -> Path | None:
    """Point ``log_dir/latest`` at ``run_dir`` (a relative symlink, swapped in atomically, so a reader
    never finds it missing) and write its absolute path to ``log_dir/latest.txt`` (for file systems
    without symlinks). Nothing happens for a run directory outside ``log_dir`` (``hydra.run.dir`` set
    elsewhere), and ``latest`` is never put in place of a file or directory that is not such a link.
    Returns the link, or None where none was made."""
    import logging

    log = logging.getLogger(__name__)
    log_dir, run_dir = Path(log_dir).absolute(), Path(run_dir).absolute()
    try:
        relative = run_dir.resolve().relative_to(log_dir.resolve())
    except ValueError:  # not under the log directory: no link there
        return None
    if not log_dir.is_dir() or relative == Path("."):
        return None
    try:
        _replace_atomically(log_dir / f"{LATEST}.txt", lambda tmp: tmp.write_text(f"{run_dir.resolve()}\n"))
    except OSError as err:
        log.debug("%s.txt not written (%s)", LATEST, err)
    link = log_dir / LATEST
    if link.exists() and not link.is_symlink():
        log.warning("%s is not a link; leaving it as it is (the newest run is named in %s.txt)", link, LATEST)
        return None
    try:
        _replace_atomically(link, lambda tmp: os.symlink(relative, tmp, target_is_directory=True))
    except (OSError, NotImplementedError) as err:  # no symlinks here (some Windows setups, some mounts)
        log.debug("no %s link (%s); the newest run is named in %s.txt", link, err, LATEST)
        return None
    return link


def _replace_atomically(path: Path, write) -> None:
    """``write`` a temporary sibling of ``path``, then rename it over ``path`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        raise
