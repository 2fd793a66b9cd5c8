"""In-process checks of the text objectives' parts: pooling, sentence pairs, the NSP shortcut against
BertForPreTraining, the causal-LM loss and samples, SimCSE's two views, and the embedding metrics."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT, TOPICS, make_sentence, text_spec

from headstart.backbones.pooling import check_pooling, pool
from headstart.data.text_lm import TextLMDataModule, sentence_pairs
from headstart.data.tokenizer import train_tokenizer
from headstart.errors import ConfigError
from headstart.objectives.causal_lm import CausalLanguageModeling
from headstart.objectives.embedding_metrics import alignment, top1_retrieval_accuracy, uniformity
from headstart.objectives.losses import info_nce
from headstart.objectives.masked_lm import MaskedLanguageModeling
from headstart.objectives.simcse import SimCSE, dropout_on

OPTIMIZER = functools.partial(torch.optim.AdamW, lr=1e-3)
TINY_GPT = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_sentence(rng, rng.choice(sorted(TOPICS)), n_words=8) for _ in range(n)]


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(iter([_texts(300)]), "wordpiece", 200, True, 64)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(iter([_texts(300)]), "bpe", 300, True, 64)


# -- pooling -----------------------------------------------------------------------------------------
def test_pool_reads_only_real_tokens():
    hidden = torch.arange(24, dtype=torch.float).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))
    torch.testing.assert_close(pool(hidden, mask, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    with pytest.raises(ConfigError, match="task.pooling='max'"):
        check_pooling("max")


# -- sentence pairs ----------------------------------------------------------------------------------
def test_sentence_pairs_next_or_random_line():
    lines = [f"line {i}" for i in range(2000)]
    pairs = sentence_pairs(lines, random.Random(3))
    assert len(pairs["first"]) == len(lines) - 1
    for i, (first, second, label) in enumerate(zip(pairs["first"], pairs["second"], pairs["next_sentence_label"], strict=True)):
        assert first == lines[i]
        if label == 0:
            assert second == lines[i + 1]
        else:
            assert second not in (lines[i], lines[i + 1])
    assert 0.45 < sum(pairs["next_sentence_label"]) / len(lines) < 0.55
    assert sentence_pairs(lines, random.Random(3)) == pairs  # seeded


def test_pairs_packing_tokenizes_two_segments_and_keeps_file_order(tmp_path):
    lines = [f"line{i} " + text for i, text in enumerate(_texts(60, seed=1))]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    data = TextLMDataModule(packing="pairs", train_files=[str(tmp_path / "train.txt")], val_fraction=0.2,
                            vocab_size=300, max_length=16, cache_dir=str(tmp_path / "cache"))
    data.prepare()
    tok = data.tokenizer
    # Without validation files the held-out lines are the last ones, in order (their pairs stay neighbours).
    val = data.datasets["validation"]
    assert len(val) == 12 - 1 and len(data.datasets["train"]) == 48 - 1
    first_words = [tok.decode(ids, skip_special_tokens=True).split()[0] for ids in val["input_ids"]]
    assert first_words == [f"line{i}" for i in range(48, 59)]
    example = data.datasets["train"][0]
    assert len(example["input_ids"]) <= 16
    types = example["token_type_ids"].tolist()
    assert types[0] == 0 and types[-1] == 1 and types == sorted(types)  # segment A, then B
    assert example["next_sentence_label"].item() in (0, 1)
    with pytest.raises(ConfigError, match="data.packing='pair'"):
        TextLMDataModule(packing="pair", train_files=["x.txt"])


# -- masked LM + next-sentence prediction ------------------------------------------------------------
def _pair_batch(module, tokenizer, n: int = 8):
    texts = _texts(n + 1, seed=5)
    enc = tokenizer(texts[:-1], texts[1:], truncation=True, max_length=32, return_token_type_ids=True,
                    return_special_tokens_mask=True)
    features = [{k: v[i] for k, v in enc.items()} | {"next_sentence_label": i % 2} for i in range(n)]
    torch.manual_seed(0)
    return module.build_collator(tokenizer)(features)


def test_nsp_shortcut_matches_bert_for_pretraining(wordpiece):
    torch.manual_seed(0)
    module = MaskedLanguageModeling(text_spec(wordpiece, TINY_BERT), OPTIMIZER, next_sentence_prediction=True).eval()
    assert type(module.net).__name__ == "BertForPreTraining"
    batch = _pair_batch(module, wordpiece)
    assert (batch["labels"] != -100).any() and "token_type_ids" in batch
    mlm_loss, _, _, nsp_logits = module.forward_with_nsp(batch)
    nsp_loss = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}  # no mask: unpadded
    full = module.net(**inputs, labels=batch["labels"], next_sentence_label=batch["next_sentence_label"])
    torch.testing.assert_close(nsp_logits, full.seq_relationship_logits)
    torch.testing.assert_close(mlm_loss + nsp_loss, full.loss)


def test_nsp_refuses_models_and_data_without_it(wordpiece, bpe):
    with pytest.raises(ConfigError, match="next-sentence head"):
        MaskedLanguageModeling(text_spec(bpe, TINY_GPT), OPTIMIZER, next_sentence_prediction=True)
    module = MaskedLanguageModeling(text_spec(wordpiece, TINY_BERT), OPTIMIZER, next_sentence_prediction=True)
    batch = _pair_batch(module, wordpiece)
    del batch["next_sentence_label"]
    with pytest.raises(ConfigError, match="data.packing=pairs"):
        module.forward_with_nsp(batch)


def test_masked_lm_loss_of_a_batch_without_masked_tokens_is_zero(wordpiece):
    module = MaskedLanguageModeling(text_spec(wordpiece, TINY_BERT), OPTIMIZER)
    enc = wordpiece(_texts(2), padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.full_like(enc["input_ids"], -100)}
    loss, logits, target = module(batch)
    assert loss.item() == 0.0 and target.numel() == 0
    loss.backward()  # a zero that keeps the graph, not a NaN


# -- causal LM -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clm(bpe):
    torch.manual_seed(0)
    module = CausalLanguageModeling(text_spec(bpe, TINY_GPT), OPTIMIZER, sample_new_tokens=6, sample_top_k=5)
    collator = module.build_collator(bpe)
    enc = bpe(_texts(4, seed=2), return_special_tokens_mask=True)
    return module, collator([{k: v[i] for k, v in enc.items()} for i in range(4)])


def test_causal_lm_loss_is_the_models_own_next_token_loss(clm):
    module, batch = clm
    assert (batch["labels"] == -100).any()  # padding is left out of the loss
    module.eval()
    loss, logits, target = module(batch)
    reference = module.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"]).loss
    torch.testing.assert_close(loss, reference)
    # Every position's logits; its target is the next token, and nothing (-100) after the last one.
    assert logits.shape[:2] == target.shape == batch["input_ids"].shape
    assert (target[:, -1] == -100).all() and torch.equal(target[:, :-1], batch["labels"][:, 1:])


def test_causal_lm_sample_is_seeded_and_leaves_the_training_rng_alone(clm, bpe):
    module, batch = clm
    module.eval()
    prompt = batch["input_ids"][0, :5]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = module.sample(prompt)
    assert torch.equal(torch.get_rng_state(), state)
    assert module.sample(prompt) == first
    assert first[0] == bpe.decode(prompt.tolist())
    assert len(bpe(first[1], add_special_tokens=False)["input_ids"]) >= 1


# -- SimCSE ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simcse(wordpiece):
    torch.manual_seed(0)
    module = SimCSE(text_spec(wordpiece, TINY_BERT), OPTIMIZER, temperature=0.05, pooling="mean", gather_negatives=False)
    batch = module.build_collator(wordpiece)([wordpiece(t) for t in _texts(6, seed=3)])
    return module, batch


def test_simcse_views_differ_only_by_dropout(simcse):
    module, batch = simcse
    module.train()
    view1, view2 = module.embed_twice(batch)
    assert view1.shape == (6, 32) and not torch.allclose(view1, view2)
    module.eval()
    view1, view2 = module.embed_twice(batch)
    torch.testing.assert_close(view1, view2)
    # The loss is info_nce on the projected views, and the projection stays out of the backbone.
    z1, z2 = module.projection(view1), module.projection(view2)
    torch.testing.assert_close(info_nce(z1, z2, 0.05, gather=False),
                               F.cross_entropy(F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / 0.05,
                                               torch.arange(6)))
    assert not [k for k in module.backbone.state_dict() if "projection" in k]
    with pytest.raises(ConfigError, match="task.temperature=0"):
        SimCSE(None, OPTIMIZER, temperature=0)  # refused before any model is built


def test_simcse_validation_keeps_dropout_with_fixed_masks(simcse):
    module, batch = simcse
    module.eval()
    with dropout_on(module.net):
        assert module.net.training
        with module.seeded(0):
            a = module.embed_twice(batch)
        with module.seeded(0):
            b = module.embed_twice(batch)
    assert not module.net.training
    torch.testing.assert_close(a, b)
    assert not torch.allclose(*a)


# -- embedding metrics -------------------------------------------------------------------------------------
def test_alignment_uniformity_and_retrieval():
    z = F.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert alignment(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, -z).item() == pytest.approx(4.0)  # antipodal: squared distance 4
    assert uniformity(z[:1].repeat(5, 1)).item() == pytest.approx(0.0, abs=1e-6)  # all in one point
    assert uniformity(z).item() < -1.0  # spread over the sphere
    assert top1_retrieval_accuracy(z, z).item() == 1.0
    assert top1_retrieval_accuracy(z, z.roll(1, dims=0)).item() == 0.0
    # Three points by hand: log of the mean of exp(-2 d^2) over the three pairs.
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # squared distances 2, 4, 2
    expected = math.log((math.exp(-4.0) + math.exp(-8.0) + math.exp(-4.0)) / 3)
    assert uniformity(points).item() == pytest.approx(expected, rel=1e-5)
