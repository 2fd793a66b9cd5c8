"""Tokenizers: load a saved one, or train WordPiece/BPE on the training split with HF ``tokenizers``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from headstart.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Special tokens of each tokenizer kind; the post-processor wraps every text as BERT/RoBERTa do.
_SPECIALS = {
    "wordpiece": {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"},
    "bpe": {"unk_token": "<unk>", "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
            "mask_token": "<mask>"},
}


def train_tokenizer(texts: Iterator[list[str]], kind: str, vocab_size: int, lowercase: bool, max_length: int):
    """Train a fast tokenizer on batches of texts and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in _SPECIALS:
        raise ConfigError(f"data.tokenizer_type={kind!r} is unknown; use 'wordpiece' (BERT-style) or 'bpe' (GPT-style).")
    specials = _SPECIALS[kind]
    special_list = list(specials.values())
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        # The trainer numbers the word-continuing pieces ("##e") in the order of a hash map that is
        # seeded afresh in every process, and ties between merges follow those numbers: the same corpus
        # gave another vocabulary in each process. Listing the pieces first, sorted, fixes their numbers
        # and so the whole vocabulary; they are then ordinary vocabulary entries (see below).
        texts = list(texts)
        pieces = _continuing_pieces(texts, tok.normalizer)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[*special_list, *pieces])
        first, last = specials["cls_token"], specials["sep_token"]
    else:
        tok = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.Lowercase() if lowercase else None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special_list,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        first, last = specials["bos_token"], specials["eos_token"]
    tok.train_from_iterator(texts, trainer=trainer)
    if kind == "wordpiece":  # the same vocabulary, with only the real special tokens marked special
        trained = tok
        tok = Tokenizer(models.WordPiece(vocab=trained.get_vocab(), unk_token=specials["unk_token"]))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
        tok.add_special_tokens(special_list)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        pair=f"{first} $A {last} $B:1 {last}:1",
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)


def _continuing_pieces(batches: list[list[str]], normalizer) -> list[str]:
    """``##c`` for every character ``c`` the normalized corpus holds that can continue a word (not
    whitespace or punctuation, which the BERT pre-tokenizer splits off), sorted."""
    import unicodedata

    raw = set().union(*(set(text) for batch in batches for text in batch))
    chars = {c for r in raw for c in normalizer.normalize_str(r)}

    def continues_a_word(c: str) -> bool:
        category = unicodedata.category(c)
        return not (c.isspace() or category.startswith(("P", "C", "Z")) or c.isascii() and not c.isalnum())

    return [f"##{c}" for c in sorted(chars) if continues_a_word(c)]


def load_tokenizer(path: str, what: str = "data.tokenizer"):
    """Load a saved Hugging Face tokenizer directory (or a hub name when online)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        hint = "the directory has no tokenizer files" if Path(path).is_dir() else "no such directory"
        raise DataError(
            f"{what}={path!r}: could not load a tokenizer ({hint}; {str(err).splitlines()[0]}). Give a "
            "directory written by tokenizer.save_pretrained, such as a headstart export/ directory."
        ) from None


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how the tokenizer splits text (not its call-time
    truncation/padding state, which ``transformers`` leaves behind after a truncating call)."""
    import hashlib
    import json

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def check_vocab(tokenizer, needs: tuple[str, ...]) -> None:
    missing = [name for name in needs if getattr(tokenizer, name, None) is None]
    if missing:
        raise DataError(
            f"The tokenizer has no {', '.join(missing)}, which this task needs. Train one with headstart "
            "(data.tokenizer=null) or use a tokenizer that defines these special tokens."
        )
