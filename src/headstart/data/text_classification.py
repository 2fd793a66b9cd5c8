"""Labelled text (a text and a label column) for sequence classification."""

from __future__ import annotations

import os

from headstart.data import files, overlap
from headstart.data.subsets import LabelAmount
from headstart.data.text_base import TextDataModule
from headstart.errors import DataError


class TextClassificationDataModule(TextDataModule):
    required_columns = ("label",)

    def __init__(self, label_column: str = "label", label_fraction: float = 1.0, label_count: int | None = None,
                 label_sampling: str = "stratified", drop_eval_overlap: bool = False,
                 overlap_files: list[str] | None = None, **kwargs) -> None:
        self.label_amount = LabelAmount(label_fraction, label_count, label_sampling)
        super().__init__(**kwargs)
        self.drop_eval_overlap = drop_eval_overlap
        self.overlap_files = list(overlap_files or [])
        self.label_column = label_column
        self.required_columns = (label_column,)
        self.label_names: list[str] = []

    def _check_raw(self, raw) -> None:
        self._hold_out_training_text(raw)
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

    def _hold_out_training_text(self, raw) -> None:
        """Validation/test rows with the text of a training row, or of a row of data.overlap_files (a
        pretraining corpus), are counted, and dropped with data.drop_eval_overlap."""
        seen = overlap.normalized_texts(raw["train"])
        seen_from = "the training split"
        if self.overlap_files:
            corpus = files.load_files({"overlap": self.overlap_files}, self.text_column,
                                      os.path.join(self.cache_dir, "hf_datasets"), delimiter=self.delimiter)
            seen |= overlap.normalized_texts(corpus["overlap"])
            seen_from += f" or of data.overlap_files {self.overlap_files}"
        overlap.hold_out(raw, seen, self.drop_eval_overlap, seen_from)

    def _cache_settings(self):
        held_out = {"drop_eval_overlap": True, "overlap_files": files.fingerprint(self.overlap_files)} \
            if self.drop_eval_overlap else {}
        return {"labels": self.label_names, "label_column": self.label_column, **held_out}

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

    def task_kwargs(self):
        return {"num_labels": len(self.label_names), "label_names": list(self.label_names)}
