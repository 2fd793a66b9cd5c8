"""word2vec and knowledge distillation in process: the math by hand, pair building, the word2vec
backbone, the embeddings-only hand-off, and the teacher's place in the distillation module."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import TOPICS, make_sentence

from headstart.backbones.text import TextBackboneSpec
from headstart.data.tokenizer import train_tokenizer
from headstart.errors import CheckpointError, ConfigError
from headstart.heads.sequence_classification import SequenceClassifier
from headstart.objectives.distillation import MaskedLMDistillation, distillation_loss
from headstart.objectives.word2vec import (
    Word2Vec,
    keep_probabilities,
    negative_sampling_loss,
    noise_distribution,
    training_token_counts,
)
from headstart.transfer.export import write_export
from headstart.transfer.handoff import apply_handoff, read_weights

OPTIMIZER = functools.partial(torch.optim.AdamW, lr=1e-3)
TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 64}
W2V = {"model_type": "headstart_word2vec", "hidden_size": 16}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [make_sentence(rng, rng.choice(sorted(TOPICS))) for _ in range(300)]
    return train_tokenizer(iter([texts]), "wordpiece", 200, True, 64)


def spec(tokenizer, arch) -> TextBackboneSpec:
    s = TextBackboneSpec(arch=arch)
    s.bind_tokenizer(tokenizer)
    return s


def word2vec(tokenizer, seed: int = 0, **kwargs) -> Word2Vec:
    torch.manual_seed(seed)
    return Word2Vec(spec(tokenizer, W2V), optimizer=OPTIMIZER, **kwargs)


def batch_of(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    from transformers import DataCollatorWithPadding

    return dict(DataCollatorWithPadding(tokenizer)([tokenizer(t, return_special_tokens_mask=True) for t in texts]))


# -- the word2vec backbone ------------------------------------------------------------------------


def test_word2vec_backbone_from_arch_embeds_and_round_trips(tokenizer, tmp_path):
    from transformers import AutoModel

    s = spec(tokenizer, W2V)
    net = s.build("base")
    assert type(net).__name__ == "Word2VecModel" and net.base_model is net
    assert s.hidden_size == 16 and net.config.vocab_size == len(tokenizer)
    assert list(net.state_dict()) == ["embeddings.weight"]
    assert net.embeddings.weight.abs().max() <= 0.5 / 16  # word2vec's init
    batch = batch_of(tokenizer, ["cat the dog", "boat"])
    hidden = net(**batch).last_hidden_state  # token_type_ids etc. are accepted and unused
    assert torch.equal(hidden, net.embeddings.weight[batch["input_ids"]])

    net.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(bits(loaded.embeddings.weight), bits(net.embeddings.weight))


def test_word2vec_arch_keys_are_checked():
    with pytest.raises(ConfigError, match="num_hidden_layers is not a field of the headstart_word2vec config"):
        TextBackboneSpec(arch={**W2V, "num_hidden_layers": 2})


def test_unknown_init_scope_is_refused():
    with pytest.raises(ConfigError, match="model.init_scope='embedding'"):
        TextBackboneSpec(arch=W2V, init_scope="embedding")


# -- word2vec statistics and pairs ----------------------------------------------------------------


def test_noise_and_subsampling_distributions_by_hand():
    counts = torch.tensor([0.0, 1.0, 16.0, 81.0, 902.0])
    noise = noise_distribution(counts, 0.75)
    expected = torch.tensor([0.0, 1.0, 8.0, 27.0, 902 ** 0.75])
    assert torch.allclose(noise, (expected / expected.sum()).float())
    keep = keep_probabilities(counts, threshold=0.01)  # frequencies 0, .001, .016, .081, .902
    assert torch.allclose(keep, torch.tensor([1.0, 1.0, math.sqrt(0.01 / 0.016), math.sqrt(0.01 / 0.081),
                                              math.sqrt(0.01 / 0.902)]))
    assert torch.equal(keep_probabilities(counts, threshold=0.0), torch.ones(5))


def test_training_token_counts_leave_out_special_tokens():
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({
        "input_ids": [[2, 5, 5, 7, 3], [2, 7, 3]], "special_tokens_mask": [[1, 0, 0, 0, 1], [1, 0, 1]]})})
    splits.set_format("torch")

    class Data:
        datasets = splits

    assert training_token_counts(Data(), vocab_size=9).tolist() == [0, 0, 0, 0, 0, 2, 0, 2, 0]


def skipgram_pairs(module, batch, generator=None) -> list[tuple[int, int]]:
    centre, context, ok = module.windows(batch, generator)
    return sorted(zip(centre.unsqueeze(-1).expand_as(context)[ok].tolist(), context[ok].tolist(), strict=True))


def test_window_of_one_pairs_neighbouring_words_only(tokenizer):
    module = word2vec(tokenizer, window=1, subsample_threshold=0.0)
    module.set_token_counts(torch.ones(len(tokenizer)))
    batch = batch_of(tokenizer, ["cat the dog", "boat with a sail"])
    words = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("cat the dog", "boat with a sail")]
    expected = sorted((a, b) for ids in words for i, a in enumerate(ids) for j, b in enumerate(ids) if abs(i - j) == 1)
    assert skipgram_pairs(module, batch) == expected  # no [CLS], [SEP] or padding, no pair across lines


def test_dropped_words_leave_no_gap(tokenizer):
    module = word2vec(tokenizer, window=1, subsample_threshold=0.0)
    module.set_token_counts(torch.ones(len(tokenizer)))
    the = tokenizer.convert_tokens_to_ids("the")
    module.keep_probs[the] = 0.0
    cat, dog = tokenizer.convert_tokens_to_ids(["cat", "dog"])
    assert skipgram_pairs(module, batch_of(tokenizer, ["cat the dog"])) == [(cat, dog), (dog, cat)]


def test_dynamic_window_uses_near_words_more_often(tokenizer):
    module = word2vec(tokenizer, window=3, subsample_threshold=0.0)
    module.set_token_counts(torch.ones(len(tokenizer)))
    batch = batch_of(tokenizer, [" ".join(TOPICS["animals"])] * 64)  # 15 distinct words, a token each
    _, _, ok = module.windows(batch, torch.Generator().manual_seed(0))
    ok = ok[:, :15].reshape(-1, 6)  # the kept words come first in each row: 64 lines x 15 centres, 6 slots
    distance = torch.tensor([3, 2, 1, 1, 2, 3]).expand_as(ok)
    for d in (1, 2, 3):
        # A slot d words away lies inside the line for (15 - d) / 15 of the centres, and a centre
        # draws its reach from 1..3, so it reaches d words with probability (3 - d + 1) / 3.
        expected = (15 - d) / 15 * (4 - d) / 3
        assert ok[distance == d].float().mean().item() == pytest.approx(expected, abs=0.03)


def test_subsampling_drops_frequent_words_at_the_formula_rate(tokenizer):
    module = word2vec(tokenizer, window=1, subsample_threshold=0.0)
    module.set_token_counts(torch.ones(len(tokenizer)))
    the = tokenizer.convert_tokens_to_ids("the")
    module.keep_probs[the] = 0.25
    batch = batch_of(tokenizer, ["the cat"] * 4000)
    centre, _, ok = module.windows(batch, torch.Generator().manual_seed(1))
    kept_the = ((centre == the) & ok.any(-1)).sum().item()  # "the" keeps a pair only when both stay
    assert abs(kept_the / 4000 - 0.25) < 0.03


def test_negative_sampling_loss_by_hand():
    torch.manual_seed(0)
    q, p, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 2, 4)
    mask = torch.tensor([[1, 1], [0, 1], [1, 1]], dtype=torch.bool)
    loss, auc = negative_sampling_loss(q, p, n, mask)
    sig = torch.sigmoid
    expected = 0.0
    ranked, pairs = 0.0, 0
    for i in range(3):
        expected -= math.log(sig(q[i] @ p[i]))
        for k in range(2):
            if mask[i, k]:
                expected -= math.log(sig(-(q[i] @ n[i, k])))
                ranked += float(q[i] @ p[i] > q[i] @ n[i, k])
                pairs += 1
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    assert auc.item() == pytest.approx(ranked / pairs)
    # Zero output vectors (word2vec's init): every score is 0, the loss (k + 1) log 2, the AUC 1/2.
    loss, auc = negative_sampling_loss(q, torch.zeros_like(p), torch.zeros_like(n))
    assert loss.item() == pytest.approx(3 * math.log(2)) and auc.item() == 0.5


def deterministic_word2vec(tokenizer, mode: str) -> tuple[Word2Vec, int]:
    """window=1, no subsampling, one negative that is always the same word ("dog", returned), and
    random context vectors: a forward pass small and deterministic enough to write out by hand."""
    module = word2vec(tokenizer, mode=mode, window=1, negatives=1, subsample_threshold=0.0)
    counts = torch.zeros(len(tokenizer))
    noise_word = tokenizer.convert_tokens_to_ids("dog")
    counts[noise_word] = 1.0
    module.set_token_counts(counts)
    with torch.no_grad():
        module.context_embeddings.weight.normal_()
    return module, noise_word


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_word2vec_loss_by_hand(tokenizer, mode):
    module, noise_word = deterministic_word2vec(tokenizer, mode)
    ids = tokenizer("cat the dog boat", add_special_tokens=False)["input_ids"]
    loss, _, n = module(batch_of(tokenizer, ["cat the dog boat"]))

    emb, out = module.net.embeddings.weight, module.context_embeddings.weight
    examples = []  # (query vector, true word)
    for i, word in enumerate(ids):
        neighbours = [ids[j] for j in (i - 1, i + 1) if 0 <= j < len(ids)]
        if mode == "skipgram":
            examples += [(emb[word], c) for c in neighbours]
        else:
            examples.append((emb[neighbours].mean(0), word))
    expected = 0.0
    for query, word in examples:
        expected -= F.logsigmoid(query @ out[word])
        if word != noise_word:  # a noise draw equal to the true word is not a negative
            expected -= F.logsigmoid(-(query @ out[noise_word]))
    assert n == len(examples)
    assert loss.item() == pytest.approx((expected / len(examples)).item(), rel=1e-5)


def test_document_context_loss_by_hand(tokenizer):
    """mode=document: each word of a line is predicted from the mean of the line's other words (never
    itself, never another line's words or padding); lines of one word have no context."""
    module, noise_word = deterministic_word2vec(tokenizer, "document")
    lines = ["cat the dog boat", "sail wind", "soup"]
    loss, _, n = module(batch_of(tokenizer, lines))

    emb, out = module.net.embeddings.weight, module.context_embeddings.weight
    expected, examples = 0.0, 0
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        for i, word in enumerate(ids):
            others = ids[:i] + ids[i + 1:]
            if not others:
                continue
            query = emb[others].mean(0)
            expected -= F.logsigmoid(query @ out[word])
            if word != noise_word:
                expected -= F.logsigmoid(-(query @ out[noise_word]))
            examples += 1
    assert n == examples == 6
    assert loss.item() == pytest.approx((expected / examples).item(), rel=1e-5)


def test_word2vec_settings_are_checked(tokenizer):
    with pytest.raises(ConfigError, match="task.mode='sg'.*'document'"):
        word2vec(tokenizer, mode="sg")
    with pytest.raises(ConfigError, match="task.window=0"):
        word2vec(tokenizer, window=0)
    with pytest.raises(ConfigError, match="Use model=word2vec"):
        Word2Vec(spec(tokenizer, TINY_BERT), optimizer=OPTIMIZER)


# -- hand-off of word2vec embeddings --------------------------------------------------------------


@pytest.fixture(scope="module")
def w2v_export(tokenizer, tmp_path_factory):
    module = word2vec(tokenizer)
    with torch.no_grad():
        module.net.embeddings.weight.normal_()
        module.context_embeddings.weight.normal_()
    export_dir = tmp_path_factory.mktemp("w2v") / "export"
    module.export(str(export_dir), tokenizer, {"source_run": "w2v-run", "config_hash": "beef", "completed": True})
    return module, export_dir


def classifier(tokenizer, arch, **kwargs) -> SequenceClassifier:
    torch.manual_seed(1)
    return SequenceClassifier(spec(tokenizer, arch), optimizer=OPTIMIZER, num_labels=3, pooling="mean", **kwargs)


def test_word2vec_export_holds_the_input_embeddings_only(w2v_export):
    module, export_dir = w2v_export
    weights = read_weights(export_dir)
    assert list(weights) == ["embeddings.weight"]  # the context matrix stays with the objective
    assert torch.equal(bits(weights["embeddings.weight"]), bits(module.net.embeddings.weight))


def test_word2vec_export_initialises_a_bag_of_embeddings_classifier(w2v_export, tokenizer):
    module, export_dir = w2v_export
    clf = classifier(tokenizer, W2V)
    report = apply_handoff(clf, str(export_dir))
    assert report["loaded"] == sorted(clf.backbone.state_dict()) == ["embeddings.weight"]
    assert report["ignored"] == [] and all(k.startswith("head.") for k in report["new"])
    assert torch.equal(bits(clf.net.embeddings.weight), bits(module.net.embeddings.weight))
    clf.eval()
    assert clf(batch_of(tokenizer, ["cat the dog", "boat"])).shape == (2, 3)


def test_word2vec_embeddings_initialise_bert_word_embeddings(w2v_export, tokenizer):
    module, export_dir = w2v_export
    clf = classifier(tokenizer, TINY_BERT)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    report = apply_handoff(clf, str(export_dir), scope="embeddings")

    assert report["scope"] == "embeddings"
    assert report["loaded"] == ["embeddings.word_embeddings.weight"]
    assert report["ignored"] == []
    assert sorted(report["new"]) == sorted(k for k in clf.state_dict() if k != "net.embeddings.word_embeddings.weight")
    assert torch.equal(bits(clf.net.embeddings.word_embeddings.weight), bits(module.net.embeddings.weight))
    for key in report["new"]:
        assert torch.equal(clf.state_dict()[key], before[key]), key


def test_embeddings_scope_from_an_mlm_export(tokenizer, tmp_path):
    from transformers import BertForMaskedLM

    torch.manual_seed(5)
    mlm = BertForMaskedLM(spec(tokenizer, TINY_BERT).config)
    write_export(mlm, tokenizer, str(tmp_path / "export"), {"objective": "manual"})
    clf = classifier(tokenizer, {**TINY_BERT, "num_hidden_layers": 2})  # only the embeddings need to fit
    report = apply_handoff(clf, str(tmp_path), scope="embeddings")
    assert report["loaded"] == ["embeddings.word_embeddings.weight"]
    assert "bert.encoder.layer.0.output.dense.weight" in report["ignored"]
    assert torch.equal(bits(clf.net.embeddings.word_embeddings.weight), bits(mlm.bert.embeddings.word_embeddings.weight))


def test_embeddings_scope_refuses_another_width_or_vocabulary(w2v_export, tokenizer):
    _, export_dir = w2v_export
    wide = classifier(tokenizer, {**TINY_BERT, "hidden_size": 32})
    before = wide.net.embeddings.word_embeddings.weight.clone()
    with pytest.raises(CheckpointError, match=rf"{len(tokenizer)} tokens x 16 dims.*{len(tokenizer)} x 32") as info:
        apply_handoff(wide, str(export_dir), scope="embeddings")
    assert "an embedding size of 16" in str(info.value)
    assert torch.equal(wide.net.embeddings.word_embeddings.weight, before)

    rng = random.Random(1)
    other = train_tokenizer(iter([[make_sentence(rng, "sailing") for _ in range(50)]]), "wordpiece", 60, True, 64)
    with pytest.raises(CheckpointError, match=rf"{len(tokenizer)} tokens x 16 dims.*{len(other)} x 16"):
        apply_handoff(classifier(other, TINY_BERT), str(export_dir), scope="embeddings")


# -- distillation ---------------------------------------------------------------------------------


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    target = torch.tensor([0, 3, 6, 2, 2])
    t, alpha = 2.0, 0.3
    total, soft, hard = distillation_loss(student, teacher, target, t, alpha)

    p_teacher = torch.softmax(teacher / t, -1)
    log_p_student = torch.log_softmax(student / t, -1)
    kl = sum((p_teacher[i] * (p_teacher[i].log() - log_p_student[i])).sum() for i in range(5)) / 5
    ce = sum(-torch.log_softmax(student[i], -1)[target[i]] for i in range(5)) / 5
    assert soft.item() == pytest.approx(t * t * kl.item(), rel=1e-5)
    assert hard.item() == pytest.approx(ce.item(), rel=1e-5)
    assert total.item() == pytest.approx(alpha * t * t * kl.item() + (1 - alpha) * ce.item(), rel=1e-5)


def test_distillation_alpha_zero_is_plain_mlm_and_alpha_one_pure_distillation():
    torch.manual_seed(1)
    student, teacher, target = torch.randn(6, 9), torch.randn(6, 9), torch.randint(0, 9, (6,))
    total, _, _ = distillation_loss(student, teacher, target, temperature=3.0, alpha=0.0)
    assert torch.equal(total, F.cross_entropy(student, target))
    total, soft, _ = distillation_loss(student, teacher, target, temperature=3.0, alpha=1.0)
    assert torch.equal(total, soft)
    _, same, _ = distillation_loss(teacher, teacher, target, temperature=3.0, alpha=0.5)
    assert abs(same.item()) < 1e-6  # a student that matches the teacher has nothing to learn from it


@pytest.fixture(scope="module")
def teacher_dir(tokenizer, tmp_path_factory):
    from transformers import BertForMaskedLM

    torch.manual_seed(7)
    teacher = BertForMaskedLM(spec(tokenizer, {**TINY_BERT, "num_hidden_layers": 2}).config)
    out = tmp_path_factory.mktemp("teacher") / "export"
    write_export(teacher, tokenizer, str(out), {"objective": "MaskedLanguageModeling"})
    return out


def distiller(tokenizer, teacher_dir, **kwargs) -> MaskedLMDistillation:
    torch.manual_seed(3)
    return MaskedLMDistillation(spec(tokenizer, TINY_BERT), optimizer=OPTIMIZER, teacher=str(teacher_dir), **kwargs)


def test_teacher_is_frozen_and_outside_checkpoints_and_optimizer(tokenizer, teacher_dir):
    module = distiller(tokenizer, teacher_dir)
    assert not any(k.startswith("teacher") for k in module.state_dict())
    teacher_params = {id(p) for p in module.teacher.parameters()}
    assert not teacher_params & {id(p) for p in module.parameters()}
    assert not any(p.requires_grad for p in module.teacher.parameters())
    module.train()
    assert not module.teacher.training  # Lightning's train() on the module leaves the teacher in eval mode


def test_distillation_forward_matches_full_models(tokenizer, teacher_dir):
    module = distiller(tokenizer, teacher_dir, temperature=2.0, alpha=0.4)
    collator = module.build_collator(tokenizer)
    torch.manual_seed(0)
    batch = dict(collator([tokenizer(t, return_special_tokens_mask=True) for t in ["cat the dog and a fox"] * 8]))
    module.eval()
    student_logits, teacher_logits, target = module.masked_logits(batch)
    selected = batch["labels"] != -100
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        assert torch.allclose(student_logits, module.net(**inputs).logits[selected], atol=1e-5)
        assert torch.allclose(teacher_logits, module.teacher(**inputs).logits[selected], atol=1e-5)
    assert torch.equal(target, batch["labels"][selected])


def test_teacher_with_another_vocabulary_is_refused(teacher_dir):
    rng = random.Random(2)
    other = train_tokenizer(iter([[make_sentence(rng, "cooking") for _ in range(50)]]), "wordpiece", 60, True, 64)
    with pytest.raises(CheckpointError, match=rf"predicts over \d+ tokens, the student over {len(other)}"):
        distiller(other, teacher_dir)


def test_teacher_must_be_a_masked_lm(tokenizer, w2v_export, tmp_path):
    _, w2v_dir = w2v_export
    with pytest.raises(CheckpointError, match="could not be loaded as a masked language model"):
        distiller(tokenizer, w2v_dir)
    with pytest.raises(CheckpointError, match="task.teacher=.* does not exist"):
        distiller(tokenizer, tmp_path / "nowhere")


def test_distillation_settings_are_checked(tokenizer, teacher_dir):
    with pytest.raises(ConfigError, match="task.temperature=0"):
        distiller(tokenizer, teacher_dir, temperature=0)
    with pytest.raises(ConfigError, match="task.alpha=1.5"):
        distiller(tokenizer, teacher_dir, alpha=1.5)
    module = distiller(tokenizer, teacher_dir)
    long = train_tokenizer(iter([["cat dog"] * 10]), "wordpiece", 60, True, 128)
    with pytest.raises(ConfigError, match="longer than the teacher's 64 positions"):
        module.build_collator(long)
