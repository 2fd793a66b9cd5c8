"""Word-tagged text (a list of words and a list of per-word IOB2 tags a row) for token classification.

Rows are ``{"tokens": ["Ada", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}`` in
.jsonl or .parquet; in .csv (which has no lists) both columns are space-separated strings. Words are
tokenized with ``is_split_into_words=True`` and each word's tag goes on its first sub-token; its
other sub-tokens and the special tokens get -100 (ignored), or with ``label_all_tokens`` the word's
tag too (``B-X`` becomes ``I-X`` after the first sub-token, so an entity stays one entity).

The rows are read and checked here (``_load_raw``) rather than by ``files.load_files``, which wants
one string of text a row; the rest (tokenizer, cache, loaders) is the shared ``TextDataModule``'s.
"""

from __future__ import annotations

import logging
import re

from headstart.config.schema import TokenClassificationDataConfig
from headstart.data import files
from headstart.data.new_rows import check_new_columns
from headstart.data.subsets import LabelAmount
from headstart.data.text_base import TextDataModule
from headstart.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def _continuation(tag: str) -> str:
    """The tag of a word's later sub-tokens when every sub-token is labelled."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def align_labels(word_ids: list[int | None], tags: list[str], label_ids: dict[str, int],
                 label_all_tokens: bool) -> list[int]:
    """A tokenized row's label ids: each word's tag on its first sub-token; -100 on special tokens and,
    unless ``label_all_tokens``, on a word's later sub-tokens (which otherwise get the word's tag, B-
    turned into I-). ``word_ids`` is the tokenizer's sub-token -> word map (None: a special token)."""
    row, previous = [], None
    for word in word_ids:
        if word is None:  # [CLS], [SEP]
            row.append(IGNORE_INDEX)
        elif word != previous:
            row.append(label_ids[tags[word]])
        else:
            row.append(label_ids[_continuation(tags[word])] if label_all_tokens else IGNORE_INDEX)
        previous = word
    return row


class TokenClassificationDataModule(TextDataModule):
    def __init__(self, tokens_column: str = TokenClassificationDataConfig.tokens_column,
                 tags_column: str = TokenClassificationDataConfig.tags_column,
                 label_all_tokens: bool = TokenClassificationDataConfig.label_all_tokens,
                 label_fraction: float = TokenClassificationDataConfig.label_fraction,
                 label_count: int | None = None,
                 label_sampling: str = TokenClassificationDataConfig.label_sampling, **kwargs) -> None:
        # Tag sequences have no single class: label_count rows at random (label_sampling does not apply).
        self.label_amount = LabelAmount(label_fraction, label_count, label_sampling)
        super().__init__(**kwargs)
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.label_all_tokens = label_all_tokens
        self.label_names: list[str] = []

    # -- reading and checking the rows ------------------------------------------------------------
    def _read_file(self, split: str, path: str, builder: str, cache_dir: str) -> dict[str, list]:
        """One file's rows as words, tags and their joined text (what a tokenizer is trained on)."""
        ds = files.read_dataset(split, [path], builder, cache_dir, self.delimiter)
        missing = [c for c in (self.tokens_column, self.tags_column) if c not in ds.column_names]
        if missing:
            raise DataError(
                f"data.{split}_files: {path!r} has no column {missing[0]!r} (columns: {ds.column_names}). "
                "Set data.tokens_column (the list of words) and data.tags_column (their tags) to the right names."
            )
        out: dict[str, list] = {"tokens": [], "tags": [], "text": []}
        for row, (words, tags) in enumerate(zip(ds[self.tokens_column], ds[self.tags_column], strict=True), start=1):
            words, tags = self._parse_row(split, path, row, words, tags)
            if words:  # an empty row has nothing to tag, as an empty line has no text
                out["tokens"].append(words)
                out["tags"].append(tags)
                out["text"].append(" ".join(words))
        return out

    def _parse_row(self, split: str, path: str, row: int, words, tags) -> tuple[list[str], list[str] | None]:
        """A row's words and (unless ``tags`` is None) their tags, checked: one IOB2 tag per word."""
        words = self._as_list(words, split, path, row, "tokens")
        if tags is None:
            return words, None
        tags = self._as_list(tags, split, path, row, "tags")
        if len(words) != len(tags):
            raise DataError(
                f"data.{split}_files: row {row} of {path!r} has {len(words)} words in {self.tokens_column!r} "
                f"but {len(tags)} tags in {self.tags_column!r}. Every word needs exactly one tag; fix or "
                "drop that row."
            )
        bad = next((t for t in tags if not _TAG.match(t)), None)
        if bad is not None:
            raise DataError(
                f"data.{split}_files: row {row} of {path!r} has tag {bad!r}, which is not an IOB2 tag. Tags "
                "must be 'O' or a prefix B-, I- (or E-, S-) and an entity type, such as 'B-PER'."
            )
        return words, tags

    def _as_list(self, value, split: str, path: str, row: int, what: str) -> list[str]:
        column = self.tokens_column if what == "tokens" else self.tags_column
        if isinstance(value, str):  # csv: space-separated
            return value.split()
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
        raise DataError(
            f"data.{split}_files: row {row} of {path!r} has {column!r} = {str(value)[:80]!r}; it must be a list "
            f"of strings (or, in a .csv, one space-separated string) of {what}."
        )

    def _load_raw(self, split_files: dict[str, list[str]]):
        return self._load_rows(split_files, self._read_file, "a list of words and a list of their tags")

    def _check_raw(self, raw) -> None:
        """Label names from the training split, ``O`` first then sorted; other splits may not add tags."""
        train_tags = {t for tags in raw["train"]["tags"] for t in tags}
        if self.label_all_tokens:
            train_tags |= {_continuation(t) for t in train_tags}
        self.label_names = sorted(train_tags, key=lambda t: (t != "O", t))
        if train_tags <= {"O"}:
            raise DataError(
                f"The training split of data.train_files has no entity tags (only {sorted(train_tags)}); token "
                "classification needs tagged entities such as B-PER to learn from."
            )
        for split, ds in raw.items():
            unseen = sorted({t for tags in ds["tags"] for t in tags} - train_tags)
            if unseen:
                raise DataError(
                    f"The {split} split has tags {unseen[:5]} that the training split never has (training tags: "
                    f"{self.label_names[:10]}). Every tag must occur in data.train_files."
                )

    # -- preparation ----------------------------------------------------------------------------
    def _check_tokenizer(self, source: str | None) -> None:
        if not self.tokenizer.is_fast:
            raise DataError(
                f"The tokenizer {source!r} is a slow (Python) tokenizer; token classification needs a fast one "
                "to map sub-tokens to words. Save a fast tokenizer (tokenizer.json) or let headstart train one."
            )

    def _cache_settings(self):
        return {"columns": [self.tokens_column, self.tags_column], "labels": self.label_names,
                "label_all_tokens": self.label_all_tokens}

    def prepare(self, tokenizer_source: str | None = None) -> None:
        super().prepare(tokenizer_source)
        self.datasets["train"] = self.label_amount.subset(self.datasets["train"], self.seed)

    def _tokenize(self, raw):
        tok, label_ids, all_tokens = self.tokenizer, {name: i for i, name in enumerate(self.label_names)}, \
            self.label_all_tokens

        def encode(batch):
            out = tok(batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length)
            out["labels"] = [align_labels(out.word_ids(i), tags, label_ids, all_tokens)
                             for i, tags in enumerate(batch["tags"])]
            return out

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=self.num_proc,
                       desc="tokenize")

    # -- new data for a fine-tuned model ----------------------------------------------------------
    new_rows_hold = "words"

    def _new_records(self, split, path, builder, ds, labelled):
        """A row's words and, when ``labelled``, tags the model knows. Rows without words are skipped,
        as training skips them: there is nothing to tag."""
        check_new_columns(split, path, ds.column_names,
                          {self.tokens_column: "tokens_column", **({self.tags_column: "tags_column"} if labelled else {})})
        tag_rows = ds[self.tags_column] if labelled else [None] * len(ds)
        for index, (words, tags) in enumerate(zip(ds[self.tokens_column], tag_rows, strict=True)):
            words, tags = self._parse_row(split, path, index + 1, words, tags)
            unknown = sorted(set(tags or ()) - set(self.label_names))
            if unknown:
                raise DataError(f"data.{split}_files: row {index + 1} of {path!r} has tags {unknown[:5]} the model was "
                                f"not trained on (its tags: {self.label_names[:10]}). Drop those rows, or fine-tune a "
                                "model that knows them.")
            if words:
                yield index, {"tokens": words, "tags": tags}, {"words": words}

    def _new_examples(self, records, labelled):
        """Each word's tag on its first sub-token, as in training. Unlabelled rows mark those positions
        too (with the first label, never scored): the head reads a word's prediction there."""
        label_ids = {name: i for i, name in enumerate(self.label_names)}
        encoded = self.tokenizer([r["tokens"] for r in records], is_split_into_words=True, truncation=True,
                                 max_length=self.max_length)
        examples = []
        for i, record in enumerate(records):
            tags = record["tags"] or [self.label_names[0]] * len(record["tokens"])
            labels = align_labels(encoded.word_ids(i), tags, label_ids, self.label_all_tokens and labelled)
            examples.append({**{k: encoded[k][i] for k in encoded}, "labels": labels})
        return examples

    def task_kwargs(self):
        return {"num_labels": len(self.label_names), "label_names": list(self.label_names)}
