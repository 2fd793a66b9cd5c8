"""Writing a backbone as a Hugging Face model directory that the next stage (or anyone) can load."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from headstart.data.files import file_sha256

EXPORT_METADATA = "headstart_export.json"


def write_export(net, processor, directory: str, metadata: dict[str, Any]) -> None:
    """``save_pretrained`` (safetensors) + processor (tokenizer) + headstart metadata, written atomically."""
    import headstart

    target = Path(directory)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # The model's own parameter names, which the hand-off matches against the backbone's: transformers 5
    # would otherwise write some models (ViT) in their older checkpoint layout. Both load with from_pretrained.
    kwargs = {"save_original_format": False} if "save_original_format" in inspect.signature(
        net.save_pretrained).parameters else {}
    try:
        net.save_pretrained(str(tmp), safe_serialization=True, **kwargs)
        if processor is not None:
            processor.save_pretrained(str(tmp))
    except Exception as err:  # a full disk: no half-written export.tmp<pid>/ left behind
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports the file's OSError as its own SafetensorError, "I/O error: ... (os error N)".
        if not isinstance(err, OSError) and "os error" not in str(err) and "I/O error" not in str(err):
            raise
        from headstart.checkpoints import write_failed

        raise write_failed(target, "export", err) from None
    meta = {
        "format": 1,
        "headstart_version": headstart.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone_prefix": net.base_model_prefix if net.base_model is not net else "",
        # The architecture the weights were trained in: a config.json edited afterwards is detected.
        "config_sha256": file_sha256(tmp / "config.json"),
        **metadata,
    }
    (tmp / EXPORT_METADATA).write_text(json.dumps(meta, indent=2, default=str))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def read_metadata(directory: Path) -> dict[str, Any]:
    path = Path(directory) / EXPORT_METADATA
    return json.loads(path.read_text()) if path.exists() else {}
