"""Labelled text (a text and a label column) for sequence classification."""

from __future__ import annotations

import logging

from headstart.config.schema import TextClassificationDataConfig
from headstart.data import files, overlap
from headstart.data.new_rows import check_new_columns
from headstart.data.subsets import LabelAmount
from headstart.data.text_base import TextDataModule
from headstart.errors import DataError

log = logging.getLogger(__name__)
# Arrow types a label column may have: class names, ids, flags.
_LABEL_DTYPES = {"string", "large_string", "bool", *(f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64))}


class TextClassificationDataModule(TextDataModule):
    required_columns = ("label",)

    def __init__(self, label_column: str = TextClassificationDataConfig.label_column,
                 label_fraction: float = TextClassificationDataConfig.label_fraction,
                 label_count: int | None = None,
                 label_sampling: str = TextClassificationDataConfig.label_sampling,
                 drop_eval_overlap: bool = TextClassificationDataConfig.drop_eval_overlap,
                 overlap_files: list[str] | None = None,
                 min_test_rows: int = TextClassificationDataConfig.min_test_rows,
                 min_test_share: float = TextClassificationDataConfig.min_test_share,
                 drop_missing_labels: bool = TextClassificationDataConfig.drop_missing_labels,
                 **kwargs) -> None:
        self.label_amount = LabelAmount(label_fraction, label_count, label_sampling)
        super().__init__(**kwargs)
        self.drop_eval_overlap = drop_eval_overlap
        self.drop_missing_labels = drop_missing_labels
        self.overlap_files = list(overlap_files or [])
        self.min_test_rows, self.min_test_share = min_test_rows, min_test_share
        self.label_column = label_column
        self.required_columns = (label_column,)
        self.label_names: list[str] = []

    def _where(self, split: str, row: int, text: str, as_read: bool = False) -> str:
        """A row, named by its files, its text and, where the split keeps file order, its number
        (``as_read``: the splits as the files hold them, before validation is carved out of training)."""
        own = bool(self.split_files[split])
        in_order = own and (as_read or split != "train" or bool(self.split_files["validation"]))
        files_ = self.split_files[split] if own else self.split_files["train"]
        number = f"row {row}" if in_order else "a row"
        return f"data.{split}_files {files_}: {number} (text {text[:50]!r})"

    def _drop_missing_labels(self, raw) -> None:
        """Rows without a label (null in the file) are refused, naming the count and the first; with
        data.drop_missing_labels they are dropped and counted in the log. Never a class of their own."""
        column = self.label_column
        for split, ds in list(raw.items()):
            missing = ds.data.column(column).null_count
            if not missing:
                continue
            if not self.drop_missing_labels:
                row = next(i for i, v in enumerate(ds[column], start=1) if v is None)
                raise DataError(
                    f"{self._where(split, row, ds[row - 1]['text'], as_read=True)} has no {column!r} (null); {missing} of the "
                    f"split's {len(ds)} rows have none. Give every row a label, or drop the unlabelled "
                    "ones with data.drop_missing_labels=true."
                )
            raw[split] = ds.filter(lambda batch: [v is not None for v in batch[column]], batched=True)
            log.warning("%s: dropped %d of %d rows without a %r (data.drop_missing_labels=true)", split, missing,
                        len(ds), column)
            if len(raw[split]) == 0:
                raise DataError(f"data.{split}_files: no row has a {column!r}; there is nothing to train or evaluate on.")

    def _check_label_types(self, raw) -> None:
        """Labels are names or ids (strings, integers, booleans): a list or a mapping is refused, naming
        the first row that holds one."""
        import datasets

        column = self.label_column
        for split, ds in raw.items():
            feature = ds.features[column]
            if isinstance(feature, datasets.Value) and feature.dtype in _LABEL_DTYPES:
                continue
            row, value = next(((i, v) for i, v in enumerate(ds[column], start=1)
                               if not isinstance(v, str | int | bool)), (1, ds[0][column]))
            raise DataError(
                f"{self._where(split, row, ds[row - 1]['text'], as_read=True)} has {column!r} = {value!r}, a "
                f"{type(value).__name__}, where a label is one class name or id (a string or integer). For several "
                "labels per text use one row per label, or experiment=text_multitask; for numbers, "
                "experiment=text_regression."
            )

    def _check_rows(self, raw) -> None:
        self._drop_missing_labels(raw)
        self._check_label_types(raw)

    def _check_raw(self, raw) -> None:
        train_labels = raw["train"].unique(self.label_column)
        self.label_names = [str(v) for v in sorted(train_labels, key=lambda v: (str(type(v)), v))]
        known = set(self.label_names)
        for split, ds in raw.items():
            unseen = sorted({str(v) for v in ds.unique(self.label_column)} - known)
            if unseen:
                raise DataError(
                    f"The {split} split has labels {unseen[:5]} that the training split never has "
                    f"(training labels: {self.label_names[:10]}). Every label must occur in data.train_files."
                )
        if len(self.label_names) < 2:
            raise DataError(f"The training split has a single label {self.label_names}; classification needs two or more.")

    def _cache_settings(self):
        # held_out_from: what a dropped evaluation row may repeat (the test: the dev split too, since issue 20).
        held_out = {"drop_eval_overlap": True, "overlap_files": files.fingerprint(self.overlap_files),
                    "held_out_from": overlap.HELD_OUT_FROM} if self.drop_eval_overlap else {}
        dropped = {"drop_missing_labels": True} if self.drop_missing_labels else {}
        return {"labels": self.label_names, "label_column": self.label_column, **held_out, **dropped}

    def _tokenize(self, raw):
        tok, label_ids = self.tokenizer, {name: i for i, name in enumerate(self.label_names)}
        column = self.label_column

        def encode(batch):
            out = tok(batch["text"], truncation=True, max_length=self.max_length)
            out["labels"] = [label_ids[str(v)] for v in batch[column]]
            return out

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=self.num_proc,
                       desc="tokenize")

    def prepare(self, tokenizer_source: str | None = None) -> None:
        super().prepare(tokenizer_source)
        self.datasets["train"] = self.label_amount.subset(self.datasets["train"], self.seed, stratify_by="labels")

    # -- new data for a fine-tuned model ----------------------------------------------------------
    def _new_records(self, split, path, builder, ds, labelled):
        """One text a row (a .txt file's lines, or the text column) and, when ``labelled``, its label.
        Prediction keeps every row; evaluation skips rows without text, as training does."""
        column, label_column = ("text" if builder == "text" else self.text_column), self.label_column
        check_new_columns(split, path, ds.column_names,
                          {column: "text_column", **({label_column: "label_column"} if labelled else {})})
        labels = ds[label_column] if labelled else [None] * len(ds)
        for index, (text, label) in enumerate(zip(ds[column], labels, strict=True)):
            has_text = isinstance(text, str) and text.strip() != ""
            record = {"text": text if isinstance(text, str) else "" if text is None else str(text)}
            if labelled:
                where = f"data.{split}_files: {path!r} row {index + 1} (text {record['text'][:50]!r})"
                if not has_text:
                    continue
                if label is None:
                    if self.drop_missing_labels:
                        continue
                    raise DataError(f"{where} has no {label_column!r}; give every row a label, or drop the "
                                    "unlabelled ones with data.drop_missing_labels=true.")
                record["labels"] = self._new_label(label, where)
            yield index, record, None

    def _new_label(self, value, where: str):
        """A row's label as the head takes it: the id of a label the model knows."""
        if str(value) not in self.label_names:
            raise DataError(f"{where} has {self.label_column!r} = {value!r}, a label the model was not trained on "
                            f"(its labels: {self.label_names[:20]}). Drop those rows, or fine-tune a model that knows "
                            "the label.")
        return self.label_names.index(str(value))

    def _new_examples(self, records, labelled):
        encoded = self.tokenizer([r["text"] for r in records], truncation=True, max_length=self.max_length)
        examples = [{k: encoded[k][i] for k in encoded} for i in range(len(records))]
        for example, record in zip(examples, records, strict=True):
            if labelled:
                example["labels"] = record["labels"]
        return examples

    def task_kwargs(self):
        return {"num_labels": len(self.label_names), "label_names": list(self.label_names)}
