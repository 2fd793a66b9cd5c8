"""Text with a numeric target (a text and a target column) for regression.

The reading, tokenizer and cache are text classification's; the target is a number (or a list of
numbers of one length, for several targets) instead of a label name. The training split's mean and
standard deviation travel to the head, which can standardise the targets with them.
"""

from __future__ import annotations

import math
from numbers import Real

from headstart.data.text_base import TextDataModule
from headstart.data.text_classification import TextClassificationDataModule
from headstart.errors import DataError


class TextRegressionDataModule(TextClassificationDataModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_targets = 1
        self.target_mean: list[float] = []
        self.target_std: list[float] = []

    def _target(self, value) -> list[float] | None:
        return parse_target(value)

    def _check_rows(self, raw) -> None:
        self._drop_missing_labels(raw)  # data.drop_missing_labels, as for classification; lists are targets here

    def _check_raw(self, raw) -> None:
        """Every target is a number (of one width across rows); the training targets' mean and std."""
        column, width = self.label_column, None
        for split, ds in raw.items():
            for row, (text, value) in enumerate(zip(ds["text"], ds[column], strict=True), start=1):
                target = self._target(value)
                if target is None:
                    raise DataError(
                        f"{self._where(split, row, text)} has {column!r} = {value!r}, which is not a number. "
                        "Regression targets must be finite numbers (or lists of numbers); fix or drop that row, "
                        "or point data.label_column at the numeric column."
                    )
                width = width or len(target)
                if len(target) != width:
                    raise DataError(
                        f"{self._where(split, row, text)} has {len(target)} targets in {column!r} where earlier "
                        f"rows have {width}. Give every row the same number of targets."
                    )
        self.num_targets = width
        self.target_mean, self.target_std = mean_and_std([self._target(v) for v in raw["train"][column]])
        if min(self.target_std) == 0.0:
            raise DataError(
                f"Every training row has the same target in {column!r} ({self.target_mean}); there is nothing to "
                "learn. Check data.label_column and data.train_files."
            )

    def _cache_settings(self):
        return {"regression": True, "label_column": self.label_column}

    def _tokenize(self, raw):
        tok, column, parse = self.tokenizer, self.label_column, self._target
        single = self.num_targets == 1

        def encode(batch):
            out = tok(batch["text"], truncation=True, max_length=self.max_length)
            targets = [parse(v) for v in batch[column]]
            out["labels"] = [t[0] for t in targets] if single else targets
            return out

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=self.num_proc,
                       desc="tokenize")

    def prepare(self, tokenizer_source: str | None = None) -> None:
        TextDataModule.prepare(self, tokenizer_source)  # not the classifier's: it keeps a row per label
        # A correlation needs two rows.
        self.datasets["train"] = self.label_amount.subset(self.datasets["train"], self.seed, minimum=2)
        if not self.label_amount.everything:  # scaled by the labels the run keeps, none of the others'
            kept = [t if isinstance(t, list) else [t] for t in self.datasets["train"].with_format(None)["labels"]]
            self.target_mean, std = mean_and_std(kept)
            # A target every kept row shares is left unscaled (std 1), not divided by zero.
            self.target_std = [s or 1.0 for s in std]

    def _new_label(self, value, where: str):
        """A row's target(s) as the head takes them: as many numbers as the model predicts."""
        target = parse_target(value)
        if target is None or len(target) != self.num_targets:
            raise DataError(f"{where} has {self.label_column!r} = {value!r}, where the model predicts "
                            f"{self.num_targets} number(s). Give every row a finite number (or a list of "
                            f"{self.num_targets}).")
        return target[0] if self.num_targets == 1 else target

    def task_kwargs(self):
        return {"num_targets": self.num_targets, "target_mean": list(self.target_mean),
                "target_std": list(self.target_std)}


def parse_target(value) -> list[float] | None:
    """A regression target as a list of floats (from a number, a numeric string or a list of numbers),
    or None when it is not a finite number or list of them."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    values = value if isinstance(value, list | tuple) else [value]
    if not values or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def mean_and_std(targets: list[list[float]]) -> tuple[list[float], list[float]]:
    """Each target's mean and (population) standard deviation over ``targets`` (a list per row)."""
    columns = list(zip(*targets, strict=True))
    mean = [sum(col) / len(col) for col in columns]
    return mean, [math.sqrt(sum((v - m) ** 2 for v in col) / len(col)) for col, m in zip(columns, mean, strict=True)]
