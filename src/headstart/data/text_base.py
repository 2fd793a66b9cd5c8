"""The shared text data module: files -> tokenizer -> tokenized splits (cached) -> DataLoaders.

Subclasses say how a split is tokenized (``_tokenize``) and what extra arguments the task needs
(``task_kwargs``); the task supplies the collator (masking, padding) with ``set_collator``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from headstart.config.schema import TextClassificationDataConfig, TextDataConfig
from headstart.data import builtin, files, overlap
from headstart.data.loaders import SplitLoaders
from headstart.data.new_rows import NewRows, no_rows, row_ids
from headstart.data.tokenizer import load_tokenizer, tokenizer_fingerprint, train_tokenizer
from headstart.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class TextDataModule(SplitLoaders, pl.LightningDataModule):
    def __init__(
        self,
        builtin: str | None = None,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        predict_files: list[str] | None = None,
        text_column: str = TextDataConfig.text_column,
        delimiter: str | None = None,
        val_fraction: float = TextDataConfig.val_fraction,
        tokenizer: str | None = None,
        tokenizer_type: str = TextDataConfig.tokenizer_type,
        vocab_size: int = TextDataConfig.vocab_size,
        lowercase: bool = TextDataConfig.lowercase,
        max_length: int = TextDataConfig.max_length,
        batch_size: int = TextDataConfig.batch_size,
        eval_batch_size: int | None = None,
        num_workers: int = TextDataConfig.num_workers,
        num_proc: int | None = None,
        bucket_by_length: bool = TextDataConfig.bucket_by_length,
        data_dir: str = "data",
        cache_dir: str = ".cache/headstart",
        seed: int = 42,
    ) -> None:
        super().__init__()
        if builtin is None and not train_files:
            raise ConfigError(
                "No training data: set data.train_files=[path, ...] to your own files, "
                "or data.builtin to a data set that ships with headstart (e.g. pydoc_topics)."
            )
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1.")
        self.builtin = builtin
        self.split_files = {"train": list(train_files or []), "validation": list(val_files or []),
                            "test": list(test_files or [])}
        self.predict_files = list(predict_files or [])  # read by mode=predict (headstart.pipeline.inference)
        self.text_column = text_column
        self.delimiter = delimiter
        self.val_fraction = val_fraction
        self.tokenizer_path = tokenizer
        self.tokenizer_type = tokenizer_type
        self.vocab_size = vocab_size
        self.lowercase = lowercase
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.bucket_by_length = bucket_by_length
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.seed = seed
        self.tokenizer = None
        self.datasets = None
        self.collator = None
        self.loaded_from_cache = False
        self.split_overlap: dict[str, Any] | None = None  # rows shared between splits (results.json)

    # -- what subclasses define -------------------------------------------------------------
    required_columns: tuple[str, ...] = ()
    #: Held-out evaluation (headstart.data.overlap), set by modules whose config has the settings
    #: (labelled text): drop evaluation rows that repeat another split, the pretraining corpus's files,
    #: and the smallest test that dropping may leave.
    drop_eval_overlap: bool = False
    overlap_files: tuple[str, ...] | list[str] = ()
    min_test_rows: int = TextClassificationDataConfig.min_test_rows
    min_test_share: float = TextClassificationDataConfig.min_test_share
    #: Hold out the validation rows as the last rows of the training files, in file order, instead of
    #: rows at random: for data whose examples are built from neighbouring lines (sentence pairs).
    ordered_validation_split: bool = False

    def _tokenize(self, raw):
        """Turn the raw DatasetDict (column ``text``) into model inputs."""
        raise NotImplementedError

    def _cache_settings(self) -> dict[str, Any]:
        """Settings beyond files and tokenizer that change the tokenized result."""
        return {}

    def task_kwargs(self) -> dict[str, Any]:
        """Arguments the task module needs from the data (e.g. ``num_labels``)."""
        return {}

    # -- preparation --------------------------------------------------------------------------
    def resolved_files(self) -> dict[str, list[str]]:
        split_files = dict(self.split_files)
        if self.builtin is not None:
            for split, paths in builtin.materialize(self.builtin, self.data_dir).items():
                split_files[split] = split_files[split] or paths
        return {split: paths for split, paths in split_files.items() if paths}

    def prepare(self, tokenizer_source: str | None = None) -> None:
        """Load the files, get a tokenizer and tokenize (or load both from the cache).

        ``tokenizer_source`` (a saved tokenizer directory) wins over ``data.tokenizer``; without
        either a tokenizer is trained on the training split.
        """
        import datasets

        split_files, raw = self.read_splits()
        source = tokenizer_source or self.tokenizer_path
        self.tokenizer = load_tokenizer(source) if source else self._trained_tokenizer(raw["train"], split_files)
        self._check_tokenizer(source)
        self.tokenizer.model_max_length = self.max_length

        key = _hash({
            "kind": type(self).__name__, "files": {s: files.fingerprint(p) for s, p in split_files.items()},
            "val_fraction": self.val_fraction, "seed": self.seed, "text_column": self.text_column,
            "delimiter": self.delimiter, "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_length": self.max_length,
            **self._cache_settings(),
        })
        cache_path = Path(self.cache_dir) / "tokenized" / key
        with _lock(cache_path):
            _drop_if_damaged(cache_path, "tokenized data")
            if cache_path.exists():
                self.datasets = datasets.load_from_disk(str(cache_path))
                self.loaded_from_cache = True
                log.info("Tokenized data loaded from cache %s", cache_path)
            else:
                log.info("Tokenizing %s", {s: len(d) for s, d in raw.items()})
                tokenized = self._tokenize(raw)
                # A truncating call leaves truncation switched on; the saved tokenizer must not carry it.
                self.tokenizer.backend_tokenizer.no_truncation()
                self.tokenizer.backend_tokenizer.no_padding()
                _save_atomic(tokenized, cache_path)
                self.datasets = datasets.load_from_disk(str(cache_path))
        self.datasets.set_format("torch")

    def read_splits(self):
        """The files read and checked as training reads them, without tokenizing: rows, the validation
        split (carved out of training when there is no dev file), rows shared between splits (and the
        evaluation rows dropped for it), labels. Returns the split files and the raw splits. Also what a
        pipeline calls before its first stage trains, so bad data stops it before any training."""
        split_files = self.resolved_files()
        raw = self._load_raw(split_files)
        self._check_rows(raw)
        if "validation" not in raw:
            parts = raw["train"].train_test_split(test_size=self.val_fraction, seed=self.seed,
                                                  shuffle=not self.ordered_validation_split)
            raw["train"], raw["validation"] = parts["train"], parts["test"]
        self.split_overlap = self._check_overlap(raw, split_files)
        self._check_raw(raw)
        return split_files, raw

    def _check_overlap(self, raw, split_files: dict[str, list[str]]) -> dict[str, Any] | None:
        """Rows shared by each pair of splits and the pretraining corpus (``overlap_files``), counted;
        with ``drop_eval_overlap``, evaluation rows that repeat them dropped."""
        if any("text" not in ds.column_names for ds in raw.values()):
            return None
        corpus = None
        names = {split: ", ".join(paths) for split, paths in split_files.items() if paths}
        if self.overlap_files:
            # Read under the name "overlap", so a bad file's message names its setting, data.overlap_files.
            loaded = files.load_files({"overlap": list(self.overlap_files)}, self.text_column,
                                      os.path.join(self.cache_dir, "hf_datasets"), delimiter=self.delimiter)
            corpus = overlap.normalized_column(loaded["overlap"])
            names["corpus"] = ", ".join(self.overlap_files)
        if "validation" not in split_files and "train" in names:
            names["validation"] = f"held out of {names['train']} by data.val_fraction"
        return overlap.check_splits(raw, corpus, drop=self.drop_eval_overlap, files=names,
                                    min_rows=self.min_test_rows, min_share=self.min_test_share)

    def _load_raw(self, split_files: dict[str, list[str]]):
        """The raw splits, a DatasetDict with a ``text`` column (what the tokenizer is trained on)."""
        return files.load_files(split_files, self.text_column, os.path.join(self.cache_dir, "hf_datasets"),
                                self.required_columns, self.delimiter)

    def _load_rows(self, split_files: dict[str, list[str]], read_file, holds: str):
        """Splits of structured rows (data that is not one text a row): each file's rows read and checked
        by ``read_file(split, path, builder, cache_dir) -> {column: values}``, which gives a ``text``
        column for the tokenizer. ``holds`` says what the rows hold, for the errors."""
        import datasets

        datasets.disable_progress_bars()
        cache_dir = os.path.join(self.cache_dir, "hf_datasets")
        splits = {}
        for split, paths in split_files.items():
            builder = files.check_files(split, paths)
            if builder == "text":
                raise DataError(f"data.{split}_files: {paths} are plain text, which holds no {holds}. This task reads "
                                f".jsonl, .parquet or .csv rows with {holds}.")
            rows: dict[str, list] = {}
            for path in paths:
                for key, values in read_file(split, path, builder, cache_dir).items():
                    rows.setdefault(key, []).extend(values)
            if not rows.get("text"):
                raise DataError(f"data.{split}_files: {paths} hold no rows with {holds}. Point the config at such data.")
            splits[split] = datasets.Dataset.from_dict(rows)
        return datasets.DatasetDict(splits)

    def _check_rows(self, raw) -> None:
        """Hook for checks on each split's rows as the files hold them (before a validation split is
        carved out of the training files), e.g. label types."""

    def _check_raw(self, raw) -> None:
        """Hook for checks on the raw splits (labels, sizes)."""

    def _check_tokenizer(self, source: str | None) -> None:
        """Hook for what the task needs of the tokenizer (``source``: where it was loaded from, if it was)."""

    def _trained_tokenizer(self, train_split, split_files):
        """Train a tokenizer on the training split, or reuse the one trained on the same data before."""
        from transformers import AutoTokenizer

        key = _hash({"files": files.fingerprint(split_files["train"]), "type": self.tokenizer_type,
                     "vocab_size": self.vocab_size, "lowercase": self.lowercase, "split_seed": self.seed, "text_column": self.text_column,
                     **({"delimiter": self.delimiter} if self.delimiter is not None else {}),
                     "val_fraction": self.val_fraction, "has_val": "validation" in split_files,
                     **({"ordered_split": True} if self.ordered_validation_split else {})})
        path = Path(self.cache_dir) / "tokenizers" / key
        with _lock(path):
            _drop_if_damaged(path, "tokenizer")
            if not path.exists():
                log.info("Training a %s tokenizer (vocab %d) on %d texts", self.tokenizer_type, self.vocab_size,
                         len(train_split))
                texts = (train_split[i: i + 1000]["text"] for i in range(0, len(train_split), 1000))
                tok = train_tokenizer(texts, self.tokenizer_type, self.vocab_size, self.lowercase, self.max_length)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                tok.save_pretrained(str(tmp))
                write_manifest(tmp)
                os.replace(tmp, path)
        return AutoTokenizer.from_pretrained(str(path))

    @property
    def processor(self):
        """What turns raw inputs into model inputs and travels with an export: the tokenizer."""
        return self.tokenizer

    def save_processor(self, output_dir: Path) -> None:
        self.tokenizer.save_pretrained(str(Path(output_dir) / "tokenizer"))

    def set_collator(self, collator) -> None:
        self.collator = collator

    # -- new data for a fine-tuned model (mode=predict / evaluate) ----------------------------
    def bind_model(self, processor, task_kwargs: dict[str, Any]) -> None:
        """Read new rows as the fine-tuned model was trained to: with its tokenizer, and the labels
        (``label_names``) or number of targets its data module gave it, not ones derived from files."""
        self.tokenizer = processor
        self.tokenizer.model_max_length = self.max_length
        for name in ("label_names", "num_targets"):
            if name in task_kwargs:
                setattr(self, name, task_kwargs[name])

    def read_new_rows(self, split: str, paths: list[str], labelled: bool) -> NewRows:
        """Every row of ``paths`` as model inputs, read and tokenized as training reads its splits;
        with ``labels`` when ``labelled`` (evaluation), which also skips the rows training skips."""
        rows = NewRows()
        cache_dir = os.path.join(self.cache_dir, "hf_datasets")
        for path in paths:
            builder = files.check_files(split, [path])
            ds = files.read_dataset(split, [path], builder, cache_dir, self.delimiter)
            ids = row_ids(ds)
            for index, record, shown in self._new_records(split, path, builder, ds, labelled):
                rows.add(ids[index], path, record, shown)
        if not rows:
            raise no_rows(split, paths, self.new_rows_hold)
        rows.examples = self._new_examples(rows.records, labelled)
        self.tokenizer.backend_tokenizer.no_truncation()  # as after tokenizing training data
        return rows

    #: What a row holds, for the error on files without any.
    new_rows_hold = "text"

    def _new_records(self, split: str, path: str, builder: str, ds, labelled: bool):
        """``(index, record, shown)`` for each row of one file to keep: the row as ``_new_examples``
        encodes it, and what the predictions repeat of it."""
        raise NotImplementedError(f"{type(self).__name__} does not read new rows for a fine-tuned model")

    def _new_examples(self, records: list[dict[str, Any]], labelled: bool) -> list[dict[str, Any]]:
        """The model inputs of the records (a list of examples for the task's collator)."""
        raise NotImplementedError(f"{type(self).__name__} does not read new rows for a fine-tuned model")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _lock(path: Path):
    """A file lock beside ``path``, so concurrent processes (DDP ranks) build a cache entry once."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def _save_atomic(dataset_dict, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset_dict.save_to_disk(str(tmp))
    write_manifest(tmp)
    os.replace(tmp, path)


MANIFEST = "headstart_manifest.json"


def _file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): files.file_sha256(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(directory: Path) -> None:
    """The content hash of every file of a cache entry, written into it before it is put in place."""
    (Path(directory) / MANIFEST).write_text(json.dumps(_file_hashes(Path(directory)), indent=1))


def cache_damage(directory: Path) -> str | None:
    """Why a cache entry cannot be trusted (a file missing, added or changed since it was written, or
    no manifest), or None when every file is as written."""
    manifest = Path(directory) / MANIFEST
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"its {MANIFEST} is missing or unreadable"
    found = _file_hashes(Path(directory))
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            return f"{name} is missing"
        if name not in recorded:
            return f"{name} was not part of it"
        if found[name] != recorded[name]:
            return f"{name} changed since it was written"
    return None


def _drop_if_damaged(path: Path, what: str) -> None:
    """A cache entry that fails its check is removed, to be rebuilt: a run never trains on it."""
    if not path.exists():
        return
    damage = cache_damage(path)
    if damage is not None:
        log.warning("Cached %s %s is damaged (%s); removing it and building it again.", what, path, damage)
        shutil.rmtree(path, ignore_errors=True)
