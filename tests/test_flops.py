"""Analytic model FLOPs (what MFU divides by the card's peak), checked against counting by hand and
against torch's FLOP counter on a real forward + backward pass."""

from __future__ import annotations

import torch

from headstart.flops import matmul_parameters, text_batch_flops, transformer_training_flops

ARCH = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}


def _bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(**ARCH))


def test_matmul_parameters_count_the_tied_output_projection_once():
    net = _bert_mlm()
    embeddings = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Embedding))
    total = sum(p.numel() for p in net.parameters())  # the tied decoder weight is the word embedding
    assert matmul_parameters(net) == total - embeddings + 100 * 32


def test_formula_by_hand():
    # 6 FLOPs per weight per token, plus 12 * layers * width * length per token for attention.
    assert transformer_training_flops(1000, 2, 8, batch=3, length=5) == 6 * 1000 * 15 + 12 * 2 * 8 * 5 * 15


def test_text_batch_flops_agree_with_torch_flop_counter():
    """torch counts the matrix multiplies of one forward + backward; the analytic count must be within
    a few percent (it leaves out what torch does not count either way: norms, softmax, biases)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = _bert_mlm()
    batch = {"input_ids": torch.randint(0, 100, (4, 16))}
    counter = FlopCounterMode(display=False)
    with counter:
        net(**batch, labels=batch["input_ids"]).loss.backward()
    measured = counter.get_total_flops()
    analytic = text_batch_flops(net, batch, {})
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)
    # The vocabulary projection at 6 of the 64 positions only (masked LM): less by 58 positions' worth.
    fewer = text_batch_flops(net, batch, {}, output_tokens=6)
    assert analytic - fewer == 6 * 100 * 32 * (64 - 6)
