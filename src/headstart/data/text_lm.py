"""Unlabeled text for language modelling, packed into fixed-length blocks or kept as lines."""

from __future__ import annotations

from itertools import chain

from headstart.data.text_base import TextDataModule
from headstart.errors import ConfigError, DataError

PACKINGS = ("blocks", "lines")


class TextLMDataModule(TextDataModule):
    def __init__(self, packing: str = "blocks", **kwargs) -> None:
        if packing not in PACKINGS:
            raise ConfigError(f"data.packing={packing!r} is unknown; use 'blocks' (concatenate and cut) or 'lines'.")
        super().__init__(**kwargs)
        self.packing = packing

    def _cache_settings(self):
        return {"packing": self.packing}

    def _tokenize(self, raw):
        tok, block = self.tokenizer, self.max_length
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
