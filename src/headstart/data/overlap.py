"""Rows shared between splits. An evaluation row with the same text as a training row (or a row of
the pretraining corpus) measures memory, not generalisation; a test row with the text of a dev row
grades the model on the data that chose it. Public data sets have such overlap more often than one
would think, so headstart counts it for every pair of splits a run has (training, dev/validation,
test, pretraining corpus) and, with ``data.drop_eval_overlap=true``, evaluates on the other rows only:
dev rows must not repeat the training split or the corpus, test rows must not repeat any of the
three. A test that dropping leaves too small (fewer than ``data.min_test_rows`` rows, or under
``data.min_test_share`` of its file) stops the run before it trains."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from headstart.errors import DataError

log = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test")
# In the order records and messages list them.
SPLITS = ("train", "validation", "test", "corpus")
SPLIT_WORDS = {"train": "the training split", "validation": "the dev (validation) split", "test": "the test split",
               "corpus": "the pretraining corpus"}
# What each evaluation split must not repeat: the dev split chose the checkpoint and settings, so the
# test may not repeat it either.
HELD_OUT_FROM = {"validation": ("train", "corpus"), "test": ("train", "validation", "corpus")}


def normalized(text: str) -> str:
    """Texts that differ only in case or spacing count as the same."""
    return " ".join(text.lower().split())


def normalized_column(dataset) -> list[str]:
    """A ``datasets.Dataset``'s ``text`` column, normalized (read column-wise through Arrow)."""
    return [normalized(t) for t in dataset.with_format("arrow")["text"].to_pylist()]


def pair_counts(texts: dict[str, list[str]], sets: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """For every pair of splits ``a/b``: how many rows of ``a`` have a text that occurs in ``b``, and
    how many rows of ``b`` one that occurs in ``a`` (the two differ when a split repeats a text);
    ``sets``: each split's texts as a set."""
    return {f"{a}/{b}": {a: sum(t in sets[b] for t in texts[a]), b: sum(t in sets[a] for t in texts[b])}
            for a, b in itertools.combinations(texts, 2)}


def check_splits(raw, corpus: list[str] | None, *, drop: bool, files: dict[str, str], min_rows: int,
                 min_share: float) -> dict[str, Any]:
    """Count the rows every pair of ``raw``'s splits (and ``corpus``, normalized texts) share; with
    ``drop``, remove the evaluation rows that repeat what they are held out from (``HELD_OUT_FROM``),
    refusing a test that this leaves too small. ``files`` names each split's files, for the messages.
    Returns the record results.json keeps: rows per split, counts per pair, and rows dropped and why."""
    texts = {split: normalized_column(raw[split]) for split in SPLITS if split in raw}
    if corpus is not None:
        texts["corpus"] = corpus
    sets = {name: set(column) for name, column in texts.items()}
    record: dict[str, Any] = {"rows": {s: len(t) for s, t in texts.items()}, "pairs": pair_counts(texts, sets),
                              "dropped": {}, "drop_eval_overlap": drop}
    if len(texts) < 2:
        return record
    log.info("Rows whose text occurs in another split: %s", "; ".join(
        f"{pair}: {', '.join(f'{n} of {split}' for split, n in counts.items())}"
        for pair, counts in record["pairs"].items()))
    for split in EVAL_SPLITS:
        if split not in texts:
            continue
        sources = [s for s in HELD_OUT_FROM[split] if s in texts]
        by: dict[str, int] = {}
        keep = []
        for i, text in enumerate(texts[split]):
            source = next((s for s in sources if text in sets[s]), None)  # counted once, under the first
            if source is None:
                keep.append(i)
            else:
                by[source] = by.get(source, 0) + 1
        shared = len(texts[split]) - len(keep)
        if not shared:
            continue
        why = _reasons(by, files)
        share = f"{shared} of the {len(texts[split])} rows of {_named(split, files)} ({shared / len(texts[split]):.0%})"
        if not drop:
            log.warning("%s have the text of a row of %s: on those the %s metrics measure memory. Set "
                        "data.drop_eval_overlap=true to evaluate on the other rows only.", share, why, split)
            continue
        if not keep:
            raise DataError(f"Every row of {_named(split, files)} has the text of a row of {why}, so "
                            f"data.drop_eval_overlap=true leaves no {split} data. Give {split} files whose texts are "
                            "in none of the other splits.")
        if split == "test":
            _check_left(len(keep), len(texts[split]), share, why, files, min_rows, min_share)
        raw[split] = raw[split].select(keep)
        record["dropped"][split] = {"rows": shared, "of": len(texts[split]), "kept": len(keep), "by": by}
        log.info("Dropped %s that have the text of a row of %s (data.drop_eval_overlap)", share, why)
    return record


def _check_left(kept: int, total: int, share: str, why: str, files: dict[str, str], min_rows: int,
                min_share: float) -> None:
    """Too small a test after dropping means little: refused, with the counts and the fix."""
    if kept >= min_rows and kept >= min_share * total:
        return
    raise DataError(
        f"{share} have the text of a row of {why}; data.drop_eval_overlap=true would leave {kept} test rows "
        f"({kept / total:.0%} of the file), below the minimum of data.min_test_rows={min_rows} rows and "
        f"data.min_test_share={min_share:g} of the file: a score on them would say little, and the test would no "
        "longer be the file you gave. Split your data again into disjoint train/dev/test files (and a corpus "
        "without the dev and test texts), or lower data.min_test_rows / data.min_test_share to accept this test."
    )


def _named(split: str, files: dict[str, str]) -> str:
    return f"{SPLIT_WORDS[split]} ({files[split]})" if files.get(split) else SPLIT_WORDS[split]


def _reasons(by: dict[str, int], files: dict[str, str]) -> str:
    """"the training split (train.tsv): 12 rows, the dev (validation) split (dev.tsv): 3 rows"."""
    return ", ".join(f"{_named(source, files)}: {n} row{'s' if n != 1 else ''}" for source, n in by.items())


def dropped_note(record: dict[str, Any] | None) -> str | None:
    """The results table's sentence on test rows left out (None: none were)."""
    dropped = ((record or {}).get("dropped") or {}).get("test")
    if not dropped:
        return None
    by = ", ".join(f"{SPLIT_WORDS[s].removeprefix('the ')} {n}" for s, n in dropped["by"].items())
    return (f"Test rows dropped: {dropped['rows']} of the test file's {dropped['of']}, because their text is also in "
            f"({by}); {dropped['kept']} scored (data.drop_eval_overlap).")


def pairs_note(record: dict[str, Any] | None) -> str | None:
    """The results table's sentence on the rows each pair of splits shares (None: not counted)."""
    pairs = (record or {}).get("pairs")
    if not pairs:
        return None
    shared = [f"{pair} {'/'.join(str(n) for n in counts.values())}" for pair, counts in pairs.items()
              if any(counts.values())]
    checked = ", ".join(pairs)
    if not shared:
        return f"Splits checked for shared texts ({checked}): none shared."
    return (f"Rows shared between splits, as read (rows of the first / of the second that occur in the other): "
            f"{'; '.join(shared)}. Checked: {checked}.")
