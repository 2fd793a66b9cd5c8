"""New data for a fine-tuned model (``mode=predict`` and ``mode=evaluate``).

The fine-tuning run's own data module reads it (``read_new_rows``), with the model's tokenizer or
image processor and its labels (``bind_model``) in place of ones derived from training files, so the
rows are read, checked and encoded exactly as the run's test split was. What it gives back is a
:class:`NewRows`: the model inputs, ready for the module's collator, and each row's id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headstart.errors import DataError


@dataclass
class NewRows:
    """Rows of files given to a fine-tuned model, in file order.

    ``examples``: the model inputs of each row (with ``labels`` when the rows are labelled), a list or
    a ``Dataset``; ``ids``: each row's id (the file's ``id`` column, else its 0-based index in its file;
    an image's path); ``files``: each row's file; ``shown``: what the predictions repeat of each row (a
    tagger's words); ``records``: the rows as read, before encoding."""

    examples: Any = None
    ids: list[Any] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    shown: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row_id: Any, path: str, record: dict[str, Any], shown: dict[str, Any] | None = None) -> None:
        self.ids.append(row_id)
        self.files.append(path)
        self.records.append(record)
        self.shown.append(shown or {})

    def __len__(self) -> int:
        return len(self.ids)


def row_ids(ds) -> list[Any]:
    """A file's row ids: its ``id`` column when it has one, else each row's 0-based index."""
    return list(ds["id"]) if "id" in ds.column_names else list(range(len(ds)))


def check_new_columns(split: str, path: str, columns: list[str], wanted: dict[str, str]) -> None:
    """Stop on a file without a column the model reads; ``wanted`` maps each column to its setting
    (``{"sentence": "text_column"}``)."""
    for column, setting in wanted.items():
        if column not in columns:
            raise DataError(
                f"data.{split}_files: {path!r} has no column {column!r} (its columns: {columns}). The model was "
                f"fine-tuned reading it from {column!r} (data.{setting}); rename the file's column, or set "
                f"data.{setting}=<its name>.")


def no_rows(split: str, paths: list[str], holds: str) -> DataError:
    return DataError(f"data.{split}_files: {paths} hold no rows with {holds}. Point the config at such data.")
