"""Lightning checkpoints that survive kills and never run code: written atomically, read as data only."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from headstart.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync it, then rename it over the target.

    A process killed mid-write leaves the previous checkpoint (``last.ckpt`` included) whole: the
    rename is atomic within a directory. Lightning's own writer stages the file in the system's temp
    directory, which on another filesystem turns the rename into a copy that a kill can cut short.
    Loading is Lightning's, always with ``weights_only=True``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        writer = None
        try:
            with open(tmp, "wb") as f:
                writer = _WriteErrors(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as err:
            raise write_failed(target, "checkpoint", err) from None
        except RuntimeError as err:  # torch's zip writer turns the file's OSError into its own RuntimeError
            if writer is None or writer.error is None:
                raise
            raise write_failed(target, "checkpoint", writer.error) from err
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)  # the rename itself survives a power cut

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage),
                                       weights_only=True)


class _WriteErrors:
    """A file for torch.save that remembers the OSError of a failed write (a full disk), which torch's
    writer reports only as a RuntimeError of its own."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def write_failed(target: Path, what: str, err: BaseException) -> CheckpointError:
    """The error for a checkpoint or export that could not be written (a full disk, a quota, a file-size
    limit): which, where, and the last good checkpoint to resume from once there is room."""
    from headstart.pipeline.resume import latest_checkpoint

    reason = getattr(err, "strerror", None) or str(err).splitlines()[0].split("I/O error: ")[-1]
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent  # or run/export
    last = latest_checkpoint(run_dir)
    resume = (f"the last good checkpoint is {last}; free space, then resume=auto with hydra.run.dir={run_dir} "
              "continues from it") if last else "no checkpoint of this run was written before it"
    return CheckpointError(f"could not write the {what} {target} ({reason}): the disk may be full or the file too "
                           f"large for it. Nothing partial was left behind; {resume}. Free space in {target.parent} "
                           "or point hydra.run.dir / paths.log_dir at a disk with room.")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str, setting: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint's contents, read as data only (``weights_only=True``, memory-mapped).

    A checkpoint is a pickle; one made to run code when unpickled is refused here, before Lightning
    opens it, and so is a file that is missing, truncated or not a Lightning checkpoint. ``setting``
    is the config key that named ``path``, for the message.
    """
    if Path(path).is_dir():
        last = Path(path) / "checkpoints" / "last.ckpt"
        raise CheckpointError(f"{setting}={path!r} is a directory; {setting} takes a .ckpt file"
                              + (f", e.g. {setting}={last}" if last.is_file() else "") + ". To continue that run in "
                              "its own directory, use resume=<its directory> instead.")
    if not Path(path).is_file():
        raise CheckpointError(f"{setting}={path!r} does not exist. Point it at a .ckpt file (a run's "
                              "checkpoints/last.ckpt) or resume a run directory with resume=<its directory>.")
    try:
        checkpoint = _load_data_only(path)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{setting}={path!r} is not a plain checkpoint: loading it would call "
            f"{_offending_call(err)}, and headstart never runs code from a checkpoint (torch.load with "
            "weights_only=True). Use a checkpoint that headstart or Lightning wrote; if you trust this file, "
            "re-save its state_dict with torch.save."
        ) from None
    except Exception as err:  # noqa: BLE001 - any other failure means the file is damaged
        raise CheckpointError(
            f"{setting}={path!r} could not be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); the "
            "file is corrupt or truncated. Resume from another checkpoint of the run (checkpoints/*.ckpt)."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{setting}={path!r} is not a Lightning checkpoint (it holds no state_dict). To start from exported "
            "weights use model.init_from=<export dir>; to resume use a run's checkpoints/*.ckpt."
        )
    return checkpoint


def _load_data_only(path: str) -> Any:
    try:  # memory-mapped: checking a large checkpoint does not read it all
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # a file in torch's old (non-zip) format cannot be mapped
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _offending_call(err: pickle.UnpicklingError) -> str:
    """The global the pickle asked for, as torch's message names it."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else "code outside the allowed tensor types"
