"""Extractive question answering: every token's state -> dropout -> linear to a start and an end logit.

The loss is the mean of the start and the end cross-entropy over a window's positions (padding
excluded), as in ``BertForQuestionAnswering``. Evaluation batches hold whole examples, each with all
its windows (see :mod:`headstart.data.question_answering`); :func:`best_spans` picks an example's
best answer over its windows, which is decoded to the context's text through the tokens' character
offsets and scored with SQuAD's exact match and token F1 (:class:`~headstart.heads.squad.SquadScores`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection

from headstart.backbones.text import ENCODER_INPUTS, encoder_inputs
from headstart.config.schema import QuestionAnsweringConfig
from headstart.errors import ConfigError
from headstart.heads.squad import SquadScores
from headstart.heads.supervised import SupervisedHead


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: torch.Tensor,
               example_index: torch.Tensor, num_examples: int, n_best: int = 20,
               max_answer_length: int = 30) -> list[tuple[int, int] | None]:
    """Each example's best answer as a character span ``(begin, end)`` of its context, or None.

    ``start_logits``/``end_logits`` are (windows, length); ``offsets`` (windows, length, 2) holds each
    context token's character span and -1 for every other token; ``example_index`` says which example
    each window belongs to. A candidate is one of a window's ``n_best`` highest-scoring context tokens
    as start and one of its ``n_best`` as end, with the end not before the start and at most
    ``max_answer_length`` tokens in all; it scores the sum of the two logits, and an example's answer is
    its best candidate over all its windows (None when no window has one).
    """
    in_context = offsets[..., 0] >= 0
    starts = start_logits.float().masked_fill(~in_context, float("-inf"))
    ends = end_logits.float().masked_fill(~in_context, float("-inf"))
    k = min(n_best, starts.shape[-1])
    start_scores, start_tokens = starts.topk(k, dim=-1)  # (windows, k)
    end_scores, end_tokens = ends.topk(k, dim=-1)
    scores = start_scores[:, :, None] + end_scores[:, None, :]  # (windows, k start, k end)
    length = end_tokens[:, None, :] - start_tokens[:, :, None]
    valid = (length >= 0) & (length < max_answer_length) & torch.isfinite(scores)
    window_best, flat = scores.masked_fill(~valid, float("-inf")).flatten(1).max(dim=-1)

    best: list[tuple[float, int, int] | None] = [None] * num_examples
    for w, (score, index, example) in enumerate(zip(window_best.tolist(), flat.tolist(), example_index.tolist(),
                                                    strict=True)):
        if score != float("-inf") and (best[example] is None or score > best[example][0]):
            best[example] = (score, w, index)
    spans: list[tuple[int, int] | None] = []
    for found in best:
        if found is None:
            spans.append(None)
            continue
        _, w, index = found
        first, last = int(start_tokens[w, index // k]), int(end_tokens[w, index % k])
        spans.append((int(offsets[w, first, 0]), int(offsets[w, last, 1])))
    return spans


class QuestionAnswering(SupervisedHead):
    hf_task = "span"
    hf_stock = True  # BertForQuestionAnswering's qa_outputs (which leaves padding unmasked)

    def __init__(self, backbone, optimizer, scheduler=None,
                 classifier_dropout: float = QuestionAnsweringConfig.classifier_dropout,
                 max_answer_length: int = QuestionAnsweringConfig.max_answer_length,
                 n_best: int = QuestionAnsweringConfig.n_best, **kwargs) -> None:
        if max_answer_length < 1:
            raise ConfigError(f"task.max_answer_length={max_answer_length} must be at least 1: the longest answer, "
                              "in tokens, that evaluation may predict.")
        if n_best < 1:
            raise ConfigError(f"task.n_best={n_best} must be at least 1: how many start and end tokens of each "
                              "window are paired into candidate answers.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.max_answer_length, self.n_best = max_answer_length, n_best
        self.head = nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(backbone.hidden_size, 2))
        # The data marks the context with token type 1; a model without a second token type (RoBERTa,
        # GPT-2) would index past its type embeddings, so it goes without them.
        self.use_token_types = (getattr(backbone.config, "type_vocab_size", 0) or 0) >= 2
        self.model_inputs = ("token_type_ids",) if self.use_token_types else ()
        self.init_metrics(MetricCollection({"squad": SquadScores()}))  # logged as exact_match and f1

    def build_collator(self, processor):
        """Training windows padded as usual; evaluation examples flattened into their windows, with the
        offsets, contexts and gold answers that decoding and scoring need."""
        from headstart.data.question_answering import QuestionAnsweringCollator

        return QuestionAnsweringCollator(processor)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows, length) start and end logits, padding masked out."""
        inputs = encoder_inputs(batch, ENCODER_INPUTS if self.use_token_types else ENCODER_INPUTS[:2])
        logits = self.head(self.net(**inputs).last_hidden_state).float()
        padding = (batch["attention_mask"] == 0)[..., None]
        start, end = logits.masked_fill(padding, torch.finfo(logits.dtype).min).unbind(-1)
        return start, end

    def hf_outputs(self, batch):
        return self(batch)

    def answers(self, start: torch.Tensor, end: torch.Tensor, batch) -> list[dict]:
        """Each example's answer from its windows' logits: the text and its character span ``[start, end)``
        in the context (None when no window holds a valid span; the text is then empty)."""
        spans = best_spans(start, end, batch["offset_mapping"], batch["example_index"], len(batch["contexts"]),
                           self.n_best, self.max_answer_length)
        return [{"answer": context[span[0]:span[1]].strip() if span else "",
                 "start": span[0] if span else None, "end": span[1] if span else None}
                for context, span in zip(batch["contexts"], spans, strict=True)]

    def predictions(self, batch):
        return self.answers(*self(batch), batch)

    def step(self, batch):
        start, end = self(batch)
        loss = (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2
        windows = start.size(0)
        if "offset_mapping" not in batch:  # a training batch: windows only, nothing to decode
            return loss, None, None, windows
        return loss, [a["answer"] for a in self.answers(start, end, batch)], batch["answers"], windows
