"""Read an offline W&B run back from its ``run-<id>.wandb`` file: the records the run wrote (run,
config, artifacts, ...), as protobufs. The file is a LevelDB-style log (32 KiB blocks, each record
``crc32(4) length(2) type(1)``, split across blocks as FIRST/MIDDLE/LAST) after a 7-byte header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (FULL, FIRST) else parts + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def run_file(run_dir: Path) -> Path:
    [path] = Path(run_dir).glob("run-*.wandb")
    return path


def summary(run_dir: Path) -> dict:
    """What a test reads: the run's job type, tags, name, config keys and values (JSON strings), and
    the artifacts it logged (name, type, files)."""
    out = {"artifacts": [], "config": {}}
    for record in records(run_file(run_dir)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(job_type=record.run.job_type, tags=list(record.run.tags), name=record.run.display_name,
                       id=record.run.run_id, group=record.run.run_group)
            out["config"].update({item.key: item.value_json for item in record.run.config.update})
        elif kind == "config":
            out["config"].update({item.key: item.value_json for item in record.config.update})
        elif kind == "artifact":
            out["artifacts"].append({"name": record.artifact.name, "type": record.artifact.type,
                                     "files": sorted(entry.path for entry in record.artifact.manifest.contents)})
    return out
