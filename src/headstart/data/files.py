"""Reading local text files (.txt, .jsonl, .csv, .tsv, .parquet) into a ``datasets.DatasetDict``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from headstart.errors import DataError

# File suffix -> the `datasets` packaged builder that reads it.
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet"}
# The field delimiter of delimited files when data.delimiter is not set, by suffix.
DEFAULT_DELIMITERS = {".tsv": "\t"}


_SETTING_PREFIX = {"validation": "val"}


def files_setting(split: str) -> str:
    """The setting that lists a split's files: ``data.train_files``, ``data.val_files`` (the validation
    split), ``data.overlap_files``, ..."""
    return f"data.{_SETTING_PREFIX.get(split, split)}_files"


def delimiter_of(paths: list[str], delimiter: str | None) -> str | None:
    """The delimiter to read ``paths`` with: ``data.delimiter`` if set, else the suffix's (tab for
    .tsv), else None (the reader's own: a comma for .csv)."""
    if delimiter is not None:
        # A tab is hard to type in an override: data.delimiter=tab or 'data.delimiter=\t' mean one.
        return {"tab": "\t", "\\t": "\t"}.get(delimiter, delimiter)
    return DEFAULT_DELIMITERS.get(Path(paths[0]).suffix.lower()) if paths else None


def check_files(split: str, paths: list[str]) -> str:
    """Check that every file of a split exists, is non-empty and has a known suffix; return the builder."""
    builders = set()
    for path in paths:
        p = Path(path)
        if p.is_dir():
            raise DataError(f"{files_setting(split)}: {path!r} is a directory, not a file. {_files_in(p, split)}")
        if not p.is_file():
            raise DataError(
                f"{files_setting(split)}: {path!r} does not exist (looked in {p.resolve().parent}). "
                "Give the path of an existing file, absolute or relative to where you run train.py."
            )
        if p.stat().st_size == 0:
            raise DataError(f"{files_setting(split)}: {path!r} is empty. Point the data config at a file with text in it.")
        suffix = p.suffix.lower()
        if suffix not in BUILDERS:
            raise DataError(
                f"{files_setting(split)}: {path!r} has suffix {suffix!r}, which headstart cannot read; "
                f"use one of {', '.join(sorted(BUILDERS))}."
            )
        if BUILDERS[suffix] != "parquet":
            check_utf8(split, path)
        builders.add(BUILDERS[suffix])
    if len(builders) > 1:
        raise DataError(f"{files_setting(split)} mixes file types ({sorted(builders)}); give files of one type per split.")
    return builders.pop()


def _files_in(directory: Path, split: str) -> str:
    """What to give instead of a directory: the readable files in it, as the setting lists them."""
    found = sorted(str(f) for f in directory.iterdir() if f.is_file() and f.suffix.lower() in BUILDERS
                   and not f.name.startswith("."))
    if not found:
        return (f"It holds no file headstart reads ({', '.join(sorted(BUILDERS))}); give the data files "
                f"themselves, as a list: {files_setting(split)}=[<file>,<file>].")
    shown, more = ",".join(found[:3] + ["..."] * (len(found) > 3)), f" ({len(found)} files there)" * (len(found) > 3)
    return f"Give the files in it as a list (one type per split): {files_setting(split)}=[{shown}]{more}."


def check_utf8(split: str, path: str) -> None:
    """Refuse a text file that is not UTF-8, naming its first bad line (the readers would fail later,
    in the middle of Arrow, or read the bytes into strings that break when the text is used)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        return
    except UnicodeDecodeError:
        pass
    with open(path, "rb") as f:  # the slow path, only for a file that has a bad byte: which line
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{files_setting(split)}: {path!r} is not UTF-8 text: line {number} has the byte "
                    f"0x{line[err.start]:02x} at column {err.start + 1} ({line[max(0, err.start - 20):err.start + 20]!r}). "
                    "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`), or fix that line."
                ) from None
    raise DataError(f"{files_setting(split)}: {path!r} is not UTF-8 text (it ends inside a character). Save it as UTF-8.")


def file_sha256(path: Path | str) -> str:
    """The sha256 of a file's bytes, read in chunks (cache entries can be larger than memory allows twice)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(paths: list[str]) -> list[tuple[str, int, int]]:
    """What identifies a file's contents for caching: its path, size and modification time."""
    return [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]


def read_dataset(split: str, paths: list[str], builder: str, cache_dir: str, delimiter: str | None = None):
    """``paths`` read by the ``datasets`` builder as one Dataset (delimited files with ``delimiter``,
    see ``delimiter_of``; quoted fields may span lines); a file it cannot read is the user's to fix,
    and the error says which and why."""
    import datasets

    options = {}
    if builder == "csv":
        delimiter = delimiter_of(paths, delimiter)
        if delimiter is not None:
            options["sep"] = delimiter
    try:
        # The reader logs its failure before raising it; the DataError below says it once, with the fix.
        datasets.utils.logging.set_verbosity_error()
        logging.getLogger("datasets.packaged_modules.csv.csv").setLevel(logging.CRITICAL)
        return datasets.load_dataset(builder, data_files={split: paths}, split=split, cache_dir=cache_dir, **options)
    except Exception as err:  # noqa: BLE001 - any reader failure here is a problem with the user's file
        cause = err.__cause__ or err
        message = str(cause).splitlines()[0] if str(cause) else ""
        hint = "Check that the file is UTF-8 text in the format its suffix says."
        if builder == "csv" and ("fields" in message or "tokeniz" in message.lower()):
            shown = {None: "',' (the .csv default)", "\t": "a tab"}.get(options.get("sep"), repr(options.get("sep")))
            hint = (f"A row has another number of fields than the header, so the delimiter is likely wrong: it was "
                    f"read with {shown}. Name the right one with data.delimiter (e.g. data.delimiter=';', or "
                    "data.delimiter=tab; .tsv files are read with tabs), and quote fields that "
                    "hold the delimiter or line breaks (\"...\").")
        raise DataError(f"{files_setting(split)}: could not read {paths} as {builder} ({type(cause).__name__}: "
                        f"{message}). {hint}") from None


def load_files(files: dict[str, list[str]], text_column: str, cache_dir: str, required: tuple[str, ...] = (),
               delimiter: str | None = None):
    """Load each split's files; rows whose text is empty are dropped; an empty split is an error."""
    import datasets

    datasets.disable_progress_bars()
    splits = {}
    for split, paths in files.items():
        builder = check_files(split, paths)
        ds = read_dataset(split, paths, builder, cache_dir, delimiter)
        column = "text" if builder == "text" else text_column
        missing = [c for c in (column, *required) if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{files_setting(split)}: {paths} has no column {missing[0]!r} (columns: {ds.column_names}). "
                f"Set data.text_column / data.label_column to the right names."
            )
        if column != "text":
            ds = ds.rename_column(column, "text")
        ds = ds.filter(lambda row: isinstance(row["text"], str) and row["text"].strip() != "")
        if len(ds) == 0:
            raise DataError(f"{files_setting(split)}: {paths} holds no non-empty text. Point the config at a file with data.")
        splits[split] = ds
    return datasets.DatasetDict(splits)
