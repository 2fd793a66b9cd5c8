"""Extractive question answering (SQuAD-style): a question, a context and the answer's span in it.

Rows are .jsonl, .parquet or .csv with a ``context``, a ``question`` and either SQuAD's ``answers``
(``{"text": ["Paris"], "answer_start": [25]}``: several gold answers of one question, the first is the
one trained on) or a flat ``answer_text`` / ``answer_start`` pair; every column name is configurable.
``answer_start`` is the answer's character offset in the context, and every answer is checked to be
there, so a shifted offset stops the run instead of teaching the model the wrong span.

Question and context are tokenized as a pair with ``truncation="only_second"``: a context longer than
``max_length`` becomes several windows that overlap by ``doc_stride`` tokens, as in Hugging Face's
``run_qa.py``. Every window gets the answer's first and last token (``start_positions`` /
``end_positions``), or the first token (CLS) twice when the answer is not wholly inside it.

Training keeps one row per window, shuffled like any other data. Evaluation keeps one row per
*example* holding all its windows, with each token's character ``offset_mapping`` into the context
((-1, -1) for question, special and padding tokens, where ``run_qa.py`` writes None), the context itself
and the gold answer texts. :class:`QuestionAnsweringCollator` flattens such rows into windows. A batch
thus always holds every window of its examples, even under DDP, so the head picks the best span of an
example within one batch and its metric only ever adds up per-example scores (sum-reduced states),
with no post-processing pass over the whole split.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from headstart.config.schema import QuestionAnsweringDataConfig
from headstart.data import files
from headstart.data.new_rows import check_new_columns
from headstart.data.subsets import LabelAmount, column_array, random_subset_indices
from headstart.data.text_base import TextDataModule
from headstart.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: The per-window model inputs and targets that a batch pads and stacks.
WINDOW_KEYS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
NO_OFFSET = (-1, -1)


def check_answer(context: str, text: str, start: int, where: str) -> None:
    """Stop on an answer that is not where ``answer_start`` says; ``where`` names the file and row."""
    if not text:
        raise DataError(f"{where} has an empty answer text. Every answer must be a non-empty span of its context; "
                        "unanswerable questions (SQuAD 2.0) are not supported.")
    if not 0 <= start <= len(context) - len(text) or context[start:start + len(text)] != text:
        found = context.find(text)
        hint = (f" The text does occur at character {found}." if found >= 0
                else " The text does not occur in the context at all.")
        raise DataError(
            f"{where}: the answer {text!r} is not at answer_start={start} of its context, which has "
            f"{context[start:start + len(text)]!r} there.{hint} answer_start is the answer's 0-based character "
            "offset in the context (a Python string index, not bytes or tokens); fix the offset or the text."
        )


def answer_positions(offsets: list[tuple[int, int]], start_char: int, end_char: int, cls_index: int) -> tuple[int, int]:
    """The first and last token of the answer ``[start_char, end_char)`` in one window, whose context
    tokens have character offsets and the others ``NO_OFFSET``; ``(cls_index, cls_index)`` when the
    answer is not wholly inside the window's part of the context."""
    context = [i for i, (begin, _) in enumerate(offsets) if begin >= 0]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return cls_index, cls_index
    start = max(i for i in context if offsets[i][0] <= start_char)
    end = min(i for i in context if offsets[i][1] >= end_char)
    return start, end


def check_question_lengths(tokenizer, questions: list[str], max_length: int, doc_stride: int, split: str) -> None:
    """Every window must hold more than ``doc_stride`` context tokens after the question and the
    special tokens (the tokenizer would otherwise abort the process)."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    room = max_length - specials - lengths[longest]
    if room <= doc_stride:
        raise DataError(
            f"The longest question of the {split} split ({lengths[longest]} tokens: {questions[longest][:80]!r}) "
            f"leaves {max(room, 0)} context tokens in a window of data.max_length={max_length} ({specials} special "
            f"tokens), and a window must hold more than data.doc_stride={doc_stride}. Raise data.max_length, lower "
            "data.doc_stride or shorten that question."
        )


def encode_questions(batch: dict[str, list], indices: list[int], tokenizer, max_length: int, doc_stride: int,
                     per_example: bool) -> dict[str, list]:
    """Tokenize ``question``/``context`` pairs into windows of ``max_length`` tokens that overlap by
    ``doc_stride``, each with the answer's first and last token (the CLS token when the answer is not
    wholly inside it, or when the row has no answer: ``answer_texts`` empty, as for prediction).

    ``per_example`` false (training): a row per window, with its example's id. True (evaluation and
    prediction): a row per example holding all its windows, the tokens' character offsets into the
    context, the context and the gold answer texts."""
    tok = tokenizer
    enc = tok(batch["question"], batch["context"], truncation="only_second", max_length=max_length,
              stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
              return_token_type_ids=True)
    keys = [k for k in WINDOW_KEYS[:3] if k in enc]
    windows: dict[str, list] = {k: [] for k in (*keys, "start_positions", "end_positions", "offset_mapping", "example")}
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        ids = enc["input_ids"][w]
        cls_index = ids.index(tok.cls_token_id) if tok.cls_token_id in ids else 0
        offsets = [tuple(o) if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][w],
                                                                        enc.sequence_ids(w), strict=True)]
        start, end = cls_index, cls_index
        if batch["answer_texts"][example]:
            start_char = batch["answer_starts"][example][0]
            end_char = start_char + len(batch["answer_texts"][example][0])
            start, end = answer_positions(offsets, start_char, end_char, cls_index)
        for k in keys:
            windows[k].append(enc[k][w])
        windows["start_positions"].append(start)
        windows["end_positions"].append(end)
        windows["offset_mapping"].append([list(o) for o in offsets])
        windows["example"].append(example)
    if not per_example:  # training: a row a window, its example's id kept for label_fraction
        out = {k: windows[k] for k in (*keys, "start_positions", "end_positions")}
        out["example_id"] = [indices[e] for e in windows["example"]]
        return out
    out = {k: [[] for _ in indices] for k in (*keys, "start_positions", "end_positions", "offset_mapping")}
    for w, example in enumerate(windows["example"]):
        for k in out:
            out[k][example].append(windows[k][w])
    out.update(example_id=list(indices), context=batch["context"], answers=batch["answer_texts"])
    return out


class QuestionAnsweringDataModule(TextDataModule):
    def __init__(self, context_column: str = QuestionAnsweringDataConfig.context_column,
                 question_column: str = QuestionAnsweringDataConfig.question_column,
                 answers_column: str = QuestionAnsweringDataConfig.answers_column,
                 answer_text_column: str = QuestionAnsweringDataConfig.answer_text_column,
                 answer_start_column: str = QuestionAnsweringDataConfig.answer_start_column,
                 doc_stride: int = QuestionAnsweringDataConfig.doc_stride,
                 label_fraction: float = QuestionAnsweringDataConfig.label_fraction,
                 label_count: int | None = None,
                 label_sampling: str = QuestionAnsweringDataConfig.label_sampling, **kwargs) -> None:
        # A share (or number) of the questions, drawn at random: answers have no classes.
        self.label_amount = LabelAmount(label_fraction, label_count, label_sampling)
        super().__init__(**kwargs)
        if not 0 <= doc_stride < self.max_length // 2:
            raise ConfigError(
                f"data.doc_stride={doc_stride} must be at least 0 and less than half of data.max_length="
                f"{self.max_length}: it is how many context tokens neighbouring windows share."
            )
        self.context_column = context_column
        self.question_column = question_column
        self.answers_column = answers_column
        self.answer_text_column = answer_text_column
        self.answer_start_column = answer_start_column
        self.doc_stride = doc_stride

    # -- reading and checking the rows ------------------------------------------------------------
    def _answers_of(self, row: dict[str, Any], nested: bool, where: str) -> tuple[list[str], list[int]]:
        """A row's gold answer texts and start offsets, from ``answers`` or the flat pair."""
        if nested:
            value = row[self.answers_column]
            if not isinstance(value, dict) or not {"text", "answer_start"} <= set(value):
                raise DataError(
                    f"{where} has {self.answers_column!r} = {str(value)[:80]!r}; it must be a mapping with 'text' and "
                    "'answer_start' (lists of one length, as in SQuAD), e.g. {\"text\": [\"Paris\"], \"answer_start\": [25]}."
                )
            texts, starts = value["text"], value["answer_start"]
        else:
            texts, starts = row[self.answer_text_column], row[self.answer_start_column]
        texts = texts if isinstance(texts, list | tuple) else [texts]
        starts = starts if isinstance(starts, list | tuple) else [starts]
        if not texts or len(texts) != len(starts):
            raise DataError(f"{where} has {len(texts)} answer texts and {len(starts)} answer starts; every question "
                            "needs at least one answer, and each answer text its start offset.")
        for text, start in zip(texts, starts, strict=True):
            if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int | float) \
                    or int(start) != start:
                raise DataError(f"{where} has the answer {text!r} at {start!r}; an answer is a string and its start "
                                "an integer character offset into the context.")
        return list(texts), [int(s) for s in starts]

    def _read_file(self, split: str, path: str, builder: str, cache_dir: str) -> dict[str, list]:
        """One file's rows as context, question, gold answers and the text a tokenizer is trained on."""
        ds = files.read_dataset(split, [path], builder, cache_dir, self.delimiter)
        columns = ds.column_names
        nested = self.answers_column in columns
        answer_columns = [self.answers_column] if nested else [self.answer_text_column, self.answer_start_column]
        missing = [c for c in (self.context_column, self.question_column, *answer_columns) if c not in columns]
        if missing:
            raise DataError(
                f"data.{split}_files: {path!r} has no column {missing[0]!r} (columns: {columns}). Question answering "
                f"reads data.context_column, data.question_column and either data.answers_column (SQuAD's "
                "{text: [...], answer_start: [...]}) or data.answer_text_column and data.answer_start_column; set "
                "them to your column names."
            )
        out: dict[str, list] = {"context": [], "question": [], "answer_texts": [], "answer_starts": [], "text": []}
        for row_number, row in enumerate(ds, start=1):
            record = self._parse_row(row, nested, f"data.{split}_files: row {row_number} of {path!r}")
            for key, value in record.items():
                out[key].append(value)
            out["text"].append(f"{record['question']}\n{record['context']}")
        return out

    def _parse_row(self, row: dict[str, Any], nested: bool | None, where: str) -> dict[str, Any]:
        """A row's context, question and gold answers (checked to be where they say), or no answers when
        ``nested`` is None (a row to predict on)."""
        context, question = row[self.context_column], row[self.question_column]
        for name, value in ((self.context_column, context), (self.question_column, question)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where} has {name!r} = {value!r}; every row needs a non-empty context and question.")
        texts, starts = self._answers_of(row, nested, where) if nested is not None else ([], [])
        for text, start in zip(texts, starts, strict=True):
            check_answer(context, text, start, where)
        return {"context": context, "question": question, "answer_texts": texts, "answer_starts": starts}

    def _load_raw(self, split_files: dict[str, list[str]]):
        return self._load_rows(split_files, self._read_file, "a context, a question and the answer's span")

    # -- preparation ----------------------------------------------------------------------------
    def _check_tokenizer(self, source: str | None) -> None:
        if not self.tokenizer.is_fast:
            raise DataError(
                f"The tokenizer {source!r} is a slow (Python) tokenizer; question answering needs a fast one for the "
                "character offsets that map an answer to tokens and back. Save a fast tokenizer (tokenizer.json) "
                "or let headstart train one."
            )

    def _cache_settings(self):
        return {"columns": [self.context_column, self.question_column, self.answers_column,
                            self.answer_text_column, self.answer_start_column],
                "doc_stride": self.doc_stride, "layout": "qa-v1"}

    def _tokenize(self, raw):
        import datasets

        for split, ds in raw.items():
            check_question_lengths(self.tokenizer, list(ds["question"]), self.max_length, self.doc_stride, split)
        return datasets.DatasetDict({
            split: ds.map(encode_questions, batched=True, with_indices=True, remove_columns=ds.column_names,
                          fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.max_length,
                                     "doc_stride": self.doc_stride, "per_example": split != "train"},
                          num_proc=self.num_proc, desc=f"tokenize {split}")
            for split, ds in raw.items()
        })

    # -- new data for a fine-tuned model ----------------------------------------------------------
    new_rows_hold = "a context and a question"

    def _new_records(self, split, path, builder, ds, labelled):
        """A row's context and question and, when ``labelled``, its gold answers."""
        columns = ds.column_names
        nested = self.answers_column in columns if labelled else None
        answers = ({self.answers_column: "answers_column"} if nested else
                   {self.answer_text_column: "answer_text_column", self.answer_start_column: "answer_start_column"})
        check_new_columns(split, path, columns, {self.context_column: "context_column",
                                                 self.question_column: "question_column",
                                                 **(answers if labelled else {})})
        for index, row in enumerate(ds):
            yield index, self._parse_row(row, nested, f"data.{split}_files: row {index + 1} of {path!r}"), None

    def _new_examples(self, records, labelled):
        """Each question with all its windows (one example), as the evaluation splits are encoded."""
        questions = [r["question"] for r in records]
        check_question_lengths(self.tokenizer, questions, self.max_length, self.doc_stride,
                               "test" if labelled else "predict")
        batch = {key: [r[key] for r in records] for key in ("question", "context", "answer_texts", "answer_starts")}
        encoded = encode_questions(batch, list(range(len(records))), self.tokenizer, self.max_length, self.doc_stride,
                                   per_example=True)
        return [{key: values[i] for key, values in encoded.items()} for i in range(len(records))]

    def prepare(self, tokenizer_source: str | None = None) -> None:
        super().prepare(tokenizer_source)
        train = self.datasets["train"]
        if not self.label_amount.everything:  # a share of the questions, with all their windows
            example_ids = column_array(train, "example_id").tolist()
            kept = set(random_subset_indices(max(example_ids) + 1, self.label_amount.fraction, self.seed,
                                             count=self.label_amount.count))
            train = train.select([i for i, e in enumerate(example_ids) if e in kept])
        self.datasets["train"] = train.remove_columns("example_id")
        for split in self.datasets:
            if split != "train":  # ragged windows and strings: the collator makes the tensors
                self.datasets[split] = self.datasets[split].with_format(None)


class QuestionAnsweringCollator:
    """Pads training windows as usual; flattens evaluation rows (an example with all its windows) into
    padded windows plus what the head needs to read answers back out of the text:

    - ``offset_mapping`` (windows, length, 2): each token's character span in its context, -1 elsewhere;
    - ``example_index`` (windows,): which of the batch's examples a window belongs to;
    - ``example_id`` (examples,): the examples' row numbers in their split;
    - ``contexts`` and ``answers``: the examples' context strings and gold answer texts (lists).
    """

    def __init__(self, tokenizer) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if "offset_mapping" not in features[0]:
            return dict(self.pad(features))
        windows, example_index = [], []
        for i, example in enumerate(features):
            for w in range(len(example["input_ids"])):
                windows.append({k: example[k][w] for k in WINDOW_KEYS if k in example})
                example_index.append(i)
        batch = dict(self.pad(windows))
        offsets = torch.full((len(windows), batch["input_ids"].shape[1], 2), -1, dtype=torch.long)
        row = 0
        for example in features:
            for window in example["offset_mapping"]:
                offsets[row, :len(window)] = torch.tensor(window, dtype=torch.long)
                row += 1
        batch.update(offset_mapping=offsets, example_index=torch.tensor(example_index),
                     example_id=torch.tensor([example["example_id"] for example in features]),
                     contexts=[example["context"] for example in features],
                     answers=[list(example["answers"]) for example in features])
        return batch
