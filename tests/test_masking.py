"""MLM masking statistics through the public path: backbone spec -> MaskedLanguageModeling -> its collator."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
from conftest import TINY_BERT, TOPICS, make_sentence, write_corpus

from headstart.backbones.text import TextBackboneSpec
from headstart.data.text_lm import TextLMDataModule
from headstart.data.tokenizer import train_tokenizer
from headstart.objectives.masked_lm import MaskedLanguageModeling

SEQ_LEN = 64  # longest example, [CLS] and [SEP] included
N_TOKENS = 1_000_000  # non-special tokens per configuration: 0.5-point bands are >= 4 sigma (see _band)


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [make_sentence(rng, rng.choice(sorted(TOPICS))) for _ in range(400)]
    return train_tokenizer(iter([texts]), "wordpiece", 200, True, SEQ_LEN)


def mlm_module(tokenizer, **kwargs) -> MaskedLanguageModeling:
    spec = TextBackboneSpec(arch=TINY_BERT)
    spec.bind_tokenizer(tokenizer)
    return MaskedLanguageModeling(spec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), **kwargs)


def make_examples(tokenizer, n_tokens: int, seed: int) -> tuple[list[dict[str, list[int]]], torch.Tensor]:
    """[CLS] w1 .. wn [SEP] with n varying (so batches carry [PAD]), until ``n_tokens`` non-special tokens.

    Returns the examples and, row for row, the same examples right-padded to ``SEQ_LEN``.
    """
    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    normal = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    n_examples = 4 * n_tokens // (SEQ_LEN // 4 + SEQ_LEN - 2) + 1  # twice the examples needed on average
    lengths = torch.randint(SEQ_LEN // 4, SEQ_LEN - 1, (n_examples,), generator=g)  # words per example
    n_examples = int((lengths.cumsum(0) < n_tokens).sum()) + 1
    lengths = lengths[:n_examples]
    padded = torch.full((n_examples, SEQ_LEN), tokenizer.pad_token_id)
    padded[:, 0] = tokenizer.cls_token_id
    positions = torch.arange(SEQ_LEN)
    words = positions.lt(lengths[:, None] + 1) & positions.gt(0)
    padded[words] = normal[torch.randint(len(normal), (int(words.sum()),), generator=g)]
    padded[torch.arange(n_examples), lengths + 1] = tokenizer.sep_token_id
    examples = [{"input_ids": row[: n + 2]} for row, n in zip(padded.tolist(), lengths.tolist(), strict=True)]
    return examples, padded


def masking_counts(collator, tokenizer, examples, padded, batch_size: int = 512) -> dict[str, int]:
    """Run ``examples`` through ``collator``; count what happened to non-special and special positions."""
    special_ids = torch.tensor(sorted(tokenizer.all_special_ids))
    mask_id = tokenizer.mask_token_id
    counts = dict.fromkeys(("tokens", "masked", "to_mask", "to_random", "unchanged", "special", "special_touched",
                            "pad"), 0)
    for start in range(0, len(examples), batch_size):
        batch = collator(examples[start: start + batch_size])
        inputs, labels = batch["input_ids"], batch["labels"]
        original = padded[start: start + batch_size, : inputs.size(1)]
        assert inputs.shape == original.shape == labels.shape

        is_special = torch.isin(original, special_ids)
        masked = labels != -100
        # Labels carry the original token exactly where a position is to be predicted, and nowhere else.
        assert torch.equal(labels[masked], original[masked])
        # Positions not selected for prediction are left as they were.
        assert torch.equal(inputs[~masked], original[~masked])

        counts["tokens"] += int((~is_special).sum())
        counts["special"] += int(is_special.sum())
        counts["pad"] += int((original == tokenizer.pad_token_id).sum())
        counts["special_touched"] += int((is_special & masked).sum())
        counts["masked"] += int((masked & ~is_special).sum())
        counts["to_mask"] += int((masked & (inputs == mask_id)).sum())
        counts["unchanged"] += int((masked & (inputs == original)).sum())
        counts["to_random"] += int((masked & (inputs != original) & (inputs != mask_id)).sum())
    return counts


def _band(share: float, expected: float, n: int, band: float = 0.005) -> None:
    """``share`` within ``band`` of ``expected``; also checks that the band is >= 4 binomial sigmas wide."""
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert band >= 4 * sigma, f"sample too small for a {band:.3%} band: sigma={sigma:.3%}"
    assert abs(share - expected) <= band, f"share {share:.4%}, expected {expected:.4%} +- {band:.2%} (n={n})"


def _expected(mlm: float, mask: float, rand: float, vocab: int) -> dict[str, float]:
    """What the counts should be. A random replacement draws from the whole vocabulary, so 1/vocab of
    them hit the original token (counted as unchanged) and 1/vocab the mask token (counted as masked)."""
    return {"masked": mlm, "to_mask": mask + rand / vocab, "to_random": rand * (1 - 2 / vocab),
            "unchanged": 1 - mask - rand + rand / vocab}


@pytest.mark.parametrize(("settings", "shares"), [
    ({}, (0.15, 0.8, 0.1)),
    ({"mlm_probability": 0.3, "mask_replace_prob": 0.5, "random_replace_prob": 0.25}, (0.3, 0.5, 0.25)),
], ids=["default", "custom"])
def test_masking_statistics(tokenizer, settings, shares):
    module = mlm_module(tokenizer, **settings)
    collator = module.build_collator(tokenizer)
    examples, padded = make_examples(tokenizer, N_TOKENS, seed=1)
    torch.manual_seed(0)
    counts = masking_counts(collator, tokenizer, examples, padded)

    assert counts["tokens"] >= N_TOKENS
    assert counts["pad"] > 0, "the examples should vary in length so that batches hold [PAD]"
    assert counts["special_touched"] == 0, "a special token ([CLS]/[SEP]/[PAD]) was selected for masking"
    expected = _expected(*shares, vocab=len(tokenizer))
    masked = counts["masked"]
    _band(masked / counts["tokens"], expected["masked"], counts["tokens"])
    assert counts["to_mask"] + counts["to_random"] + counts["unchanged"] == masked
    for what in ("to_mask", "to_random", "unchanged"):
        _band(counts[what] / masked, expected[what], masked)


def test_random_replacements_use_the_vocabulary(tokenizer):
    collator = mlm_module(tokenizer).build_collator(tokenizer)
    examples, padded = make_examples(tokenizer, 150_000, seed=2)
    torch.manual_seed(0)
    batch = collator(examples)
    original = padded[:, : batch["input_ids"].size(1)]
    masked = batch["labels"] != -100
    replaced = batch["input_ids"][masked & (batch["input_ids"] != original)
                                  & (batch["input_ids"] != tokenizer.mask_token_id)]
    assert replaced.min() >= 0 and replaced.max() < len(tokenizer)
    assert len(set(replaced.tolist())) > 0.9 * len(tokenizer)


def test_seed_makes_masking_repeatable(tokenizer):
    collator = mlm_module(tokenizer).build_collator(tokenizer)
    examples, _ = make_examples(tokenizer, 20_000, seed=3)
    torch.manual_seed(123)
    first = collator(examples)
    torch.manual_seed(123)
    second = collator(examples)
    torch.manual_seed(124)
    third = collator(examples)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert not torch.equal(first["labels"], third["labels"])


def test_data_module_batches_never_mask_special_tokens(tmp_path):
    """The real path: line-packed examples (with their special_tokens_mask, padded per batch) -> collator."""
    write_corpus(tmp_path / "train.txt", 300, seed=0)
    # Lines of different lengths, so the batches need padding.
    rng = random.Random(1)
    (tmp_path / "val.txt").write_text("\n".join(make_sentence(rng, "animals", rng.randint(2, 14)) for _ in range(60)))
    dm = TextLMDataModule(train_files=[str(tmp_path / "train.txt")], val_files=[str(tmp_path / "val.txt")],
                          packing="lines", max_length=SEQ_LEN, vocab_size=200, batch_size=16, eval_batch_size=64,
                          data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), seed=0)
    dm.prepare()
    module = mlm_module(dm.tokenizer, mlm_probability=0.9)  # mask nearly everything that may be masked
    dm.set_collator(module.build_collator(dm.tokenizer))
    tok = dm.tokenizer
    special = torch.tensor(sorted(tok.all_special_ids))
    torch.manual_seed(0)
    n_pad = n_masked = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            assert "special_tokens_mask" not in batch
            labels = batch["labels"]
            # A batch without padding comes without an attention mask.
            pad = batch["attention_mask"] == 0 if "attention_mask" in batch else torch.zeros_like(labels, dtype=torch.bool)
            n_pad += int(pad.sum())
            n_masked += int((labels != -100).sum())
            assert (labels[pad] == -100).all(), "a [PAD] position was selected for masking"
            assert (labels[:, 0] == -100).all(), "[CLS] was selected for masking"
            assert not torch.isin(labels, special).any(), "a special token is a prediction target"
            # Positions that were not selected keep their [CLS]/[SEP]/[PAD].
            assert (batch["input_ids"][pad] == tok.pad_token_id).all()
            assert (batch["input_ids"][:, 0] == tok.cls_token_id).all()
    assert n_pad > 0 and n_masked > 0
