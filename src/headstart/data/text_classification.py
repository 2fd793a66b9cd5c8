"""Labelled text (a text and a label column) for sequence classification."""

from __future__ import annotations

from headstart.data.subsets import LabelAmount
from headstart.data.text_base import TextDataModule
from headstart.errors import DataError


class TextClassificationDataModule(TextDataModule):
    required_columns = ("label",)

    def __init__(self, label_column: str = "label", label_fraction: float = 1.0, label_count: int | None = None,
                 label_sampling: str = "stratified", **kwargs) -> None:
        self.label_amount = LabelAmount(label_fraction, label_count, label_sampling)
        super().__init__(**kwargs)
        self.label_column = label_column
        self.required_columns = (label_column,)
        self.label_names: list[str] = []

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
        return {"labels": self.label_names, "label_column": self.label_column}

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
