"""The language-model objectives' collators: transformers' collators, with the batches a GPU step
wants: no attention mask where nothing is padded, and a bounded number of masked tokens."""

from __future__ import annotations

import math

import torch
from transformers import DataCollatorForLanguageModeling


def without_full_attention_mask(batch):
    """The batch without its attention mask when no token is padding (packed blocks). An all-ones mask
    changes nothing, but transformers then checks it on the device (a wait) or, compiled, applies it:
    without one, attention takes its mask-free kernels (causal: ``is_causal``, the flash path on GPUs)."""
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        del batch["attention_mask"]
    return batch


class _MaskFreeWhenUnpadded:
    """Mixed into a transformers collator: its batches lose an all-ones attention mask (see
    :func:`without_full_attention_mask`), unless ``keep_attention_mask`` (batches padded to one length
    keep one set of keys, so a compiled step sees one structure)."""

    keep_attention_mask = False

    def __call__(self, examples, return_tensors=None):
        batch = super().__call__(examples, return_tensors)
        return batch if self.keep_attention_mask else without_full_attention_mask(batch)


def prediction_capacity(positions: int, probability: float) -> int:
    """The most masked positions a batch of ``positions`` tokens carries: the mean count plus five
    standard deviations of the binomial draw (a batch goes over it with odds below 1 in 3 million;
    :class:`CappedMaskingCollator` unmasks the surplus then), rounded up to a multiple of 8.

    A compiled step runs the vocabulary projection at this many positions whatever the draw, so the
    graph keeps one shape from step to step; the positions beyond the draw carry no label."""
    mean = positions * probability
    bound = mean + 5 * math.sqrt(mean * (1 - probability)) + 1
    return min(positions, 8 * math.ceil(bound / 8))


class CappedMaskingCollator(_MaskFreeWhenUnpadded, DataCollatorForLanguageModeling):
    """transformers' masking collator (BERT's 80/10/10 masking of ``mlm_probability`` of the tokens)
    that never masks more than :func:`prediction_capacity` tokens of a batch, without the attention
    mask of a batch with no padding."""

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        original = inputs.clone()
        inputs, labels = super().torch_mask_tokens(inputs, special_tokens_mask, offset_mapping)
        masked = labels != -100
        surplus = int(masked.sum()) - prediction_capacity(labels.numel(), self.mlm_probability)
        if surplus > 0:  # unmask a random choice of the surplus: the tokens go back, unlabelled
            scores = torch.rand(labels.shape, generator=self.generator).masked_fill_(~masked, 2.0)
            restore = torch.zeros(labels.numel(), dtype=torch.bool)
            restore[scores.flatten().argsort()[:surplus]] = True
            restore = restore.view(labels.shape)
            inputs[restore], labels[restore] = original[restore], -100
        return inputs, labels


class UnpaddedCausalCollator(_MaskFreeWhenUnpadded, DataCollatorForLanguageModeling):
    """transformers' collator for causal LM (labels are the inputs, padding -> -100; ``forward`` shifts
    them), without the attention mask of a batch that has no padding."""

    def __init__(self, tokenizer, **kwargs) -> None:
        super().__init__(tokenizer, mlm=False, **kwargs)
