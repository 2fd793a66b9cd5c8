"""Unlabeled text for language modelling, packed into fixed-length blocks, kept as lines, or made
into sentence pairs for next-sentence prediction."""

from __future__ import annotations

import random
from itertools import chain

from headstart.config.schema import TextLMDataConfig
from headstart.data.text_base import TextDataModule
from headstart.errors import ConfigError, DataError

PACKINGS = ("blocks", "lines", "pairs")


class TextLMDataModule(TextDataModule):
    def __init__(self, packing: str = TextLMDataConfig.packing, **kwargs) -> None:
        if packing not in PACKINGS:
            raise ConfigError(
                f"data.packing={packing!r} is unknown; use 'blocks' (concatenate and cut), 'lines' (a line an "
                "example) or 'pairs' (pairs of lines for next-sentence prediction)."
            )
        super().__init__(**kwargs)
        self.packing = packing

    #: Set by :meth:`use_static_shapes` for a compiled training step.
    static_shapes = False

    @property
    def drop_last_train(self) -> bool:
        """Blocks are all one length: dropping the short last batch keeps every training batch one shape,
        so a compiled step never compiles again (a different block is left out each epoch)."""
        return self.packing == "blocks" or self.static_shapes

    def use_static_shapes(self) -> None:
        """Every training batch one shape, for a training step compiled as one graph: the short last batch
        dropped, and lines and sentence pairs padded to ``data.max_length`` (blocks have no padding)."""
        self.static_shapes = True
        if self.packing != "blocks" and self.collator is not None:
            self.collator.pad_to_multiple_of = self.max_length
            self.collator.keep_attention_mask = True  # also where a batch happens to have no padding

    @property
    def ordered_validation_split(self) -> bool:
        return self.packing == "pairs"  # pairs are made of neighbouring lines: keep the file order

    def _cache_settings(self):
        return {"packing": self.packing}

    def _tokenize(self, raw):
        tok, block = self.tokenizer, self.max_length
        if self.packing == "pairs":
            return self._tokenize_pairs(raw)
        if self.packing == "lines":
            def encode(batch):
                return tok(batch["text"], truncation=True, max_length=block, return_special_tokens_mask=True)
        else:
            def encode(batch):
                return tok(batch["text"], return_special_tokens_mask=True, verbose=False)  # blocks are cut later

        tokenized = raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=self.num_proc,
                            desc="tokenize")
        if self.packing == "lines":
            return tokenized

        def group_texts(batch):
            # As in transformers' run_mlm.py: concatenate, then cut into blocks, dropping the tail.
            joined = {k: list(chain.from_iterable(batch[k])) for k in batch}
            total = (len(joined["input_ids"]) // block) * block
            return {k: [v[i: i + block] for i in range(0, total, block)] for k, v in joined.items()}

        grouped = tokenized.map(group_texts, batched=True, batch_size=2000, num_proc=self.num_proc, desc="pack")
        for split, ds in grouped.items():
            if len(ds) == 0:
                n_tokens = sum(len(ids) for ids in tokenized[split]["input_ids"])
                raise DataError(
                    f"The {split} split has {n_tokens} tokens, fewer than one block of data.max_length={block}. "
                    "Give more text, lower data.max_length, or set data.packing=lines."
                )
        return grouped

    def _tokenize_pairs(self, raw):
        """Sentence pairs as BERT's next-sentence prediction trains on them, seeded per split.

        Line i is segment A; segment B is line i + 1 (``next_sentence_label`` 0) or, half of the time,
        a line drawn at random from the rest of the split (label 1), which in a corpus of many
        documents is almost always another document. Each pair is truncated (longest segment first)
        to data.max_length; ``token_type_ids`` mark the two segments.
        """
        import datasets

        tok = self.tokenizer
        pairs = {}
        for split, ds in raw.items():
            lines = list(ds["text"])
            if len(lines) < 3:
                raise DataError(
                    f"The {split} split has {len(lines)} lines; data.packing=pairs needs at least 3 (a line, "
                    "its next line and another line). Give more text, one sentence or paragraph a line."
                )
            pairs[split] = datasets.Dataset.from_dict(sentence_pairs(lines, random.Random(f"{self.seed}:{split}")))

        def encode(batch):
            out = tok(batch["first"], batch["second"], truncation=True, max_length=self.max_length,
                      return_token_type_ids=True, return_special_tokens_mask=True)
            out["next_sentence_label"] = batch["next_sentence_label"]
            return out

        return datasets.DatasetDict(pairs).map(encode, batched=True, remove_columns=["first", "second"],
                                               num_proc=self.num_proc, desc="tokenize pairs")


def sentence_pairs(lines: list[str], rng: random.Random) -> dict[str, list]:
    """``first``/``second``/``next_sentence_label`` columns: every line but the last with its next
    line (label 0) or, with probability 1/2, with a random line other than itself and its next (label 1)."""
    first, second, labels = [], [], []
    n = len(lines)
    for i in range(n - 1):
        first.append(lines[i])
        if rng.random() < 0.5:
            second.append(lines[i + 1])
            labels.append(0)
        else:
            j = rng.randrange(n - 2)  # any index but i and i + 1
            second.append(lines[j if j < i else j + 2])
            labels.append(1)
    return {"first": first, "second": second, "next_sentence_label": labels}
