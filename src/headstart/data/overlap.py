"""Evaluation rows whose text the model has trained on: a validation or test row with the same text
as a training row (or as a row of the pretraining corpus) measures memory, not generalisation.
Public data sets have such overlap more often than one would think; headstart counts it in every
labelled run and, with ``data.drop_eval_overlap=true``, evaluates on the other rows only."""

from __future__ import annotations

import logging

from headstart.errors import DataError

log = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test")


def normalized(text: str) -> str:
    """Texts that differ only in case or spacing count as the same."""
    return " ".join(text.lower().split())


def _normalized_column(dataset) -> list[str]:
    """A ``datasets.Dataset``'s ``text`` column, normalized (read column-wise through Arrow)."""
    return [normalized(t) for t in dataset.with_format("arrow")["text"].to_pylist()]


def normalized_texts(dataset) -> set[str]:
    return set(_normalized_column(dataset))


def hold_out(raw, seen: set[str], drop: bool, seen_from: str) -> None:
    """Count (and with ``drop``, remove) the rows of ``raw``'s evaluation splits whose normalized text
    is in ``seen``; ``seen_from`` says where those texts come from, for the messages."""
    for split in EVAL_SPLITS:
        if split not in raw:
            continue
        overlap = [i for i, text in enumerate(_normalized_column(raw[split])) if text in seen]
        if not overlap:
            continue
        share = f"{len(overlap)} of {len(raw[split])} {split} rows ({len(overlap) / len(raw[split]):.0%})"
        if not drop:
            log.warning("%s have the text of a row of %s: on those the %s metrics measure memory. Set "
                        "data.drop_eval_overlap=true to evaluate on the other rows only.", share, seen_from, split)
            continue
        if len(overlap) == len(raw[split]):
            raise DataError(f"Every {split} row has the text of a row of {seen_from}, so data.drop_eval_overlap=true "
                            f"leaves no {split} data. Give {split} files whose texts are not in the training data.")
        dropped = set(overlap)
        raw[split] = raw[split].select([i for i in range(len(raw[split])) if i not in dropped])
        log.info("Dropped %s that have the text of a row of %s (data.drop_eval_overlap)", share, seen_from)
