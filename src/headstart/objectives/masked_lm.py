"""Masked language modelling (BERT): predict tokens hidden by transformers' masking collator;
optionally with BERT's next-sentence prediction on sentence pairs (``data.packing=pairs``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
from torchmetrics.text import Perplexity

from headstart.config.schema import MaskedLMConfig
from headstart.data.collators import CappedMaskingCollator, prediction_capacity
from headstart.data.tokenizer import check_vocab
from headstart.errors import ConfigError
from headstart.module import HeadstartModule
from headstart.throughput import reading_waits


class MaskedLanguageModeling(HeadstartModule):
    hf_head = "masked_lm"
    exports_backbone = True
    compiles_step = True

    def __init__(self, backbone, optimizer, scheduler=None,
                 mlm_probability: float = MaskedLMConfig.mlm_probability,
                 mask_replace_prob: float = MaskedLMConfig.mask_replace_prob,
                 random_replace_prob: float = MaskedLMConfig.random_replace_prob,
                 next_sentence_prediction: bool = MaskedLMConfig.next_sentence_prediction, **kwargs) -> None:
        # Next-sentence prediction needs the model's pretraining class (BERT: BertForPreTraining, with
        # MLM and NSP heads); chosen here because the base class builds the network from hf_head.
        self.hf_head = "pretraining" if next_sentence_prediction else "masked_lm"
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.next_sentence_prediction = next_sentence_prediction
        vocab = self.net.config.vocab_size
        metrics = {
            "masked_acc": MulticlassAccuracy(num_classes=vocab, ignore_index=-100, average="micro"),
            "perplexity": Perplexity(ignore_index=-100),
        }
        if next_sentence_prediction:
            self._pretraining_heads()  # a model without an NSP head fails here, before any training
            metrics["nsp_acc"] = BinaryAccuracy()
        self.val_metrics = MetricCollection(metrics, prefix="val/")

    def build_collator(self, tokenizer):  # the processor of text data is its tokenizer
        check_vocab(tokenizer, ("mask_token", "pad_token"))
        return CappedMaskingCollator(
            tokenizer, mlm=True, mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob,
        )

    def predicted_tokens(self, batch) -> torch.Tensor:
        """The vocabulary projection runs at the masked positions only (see :meth:`forward`); a count on
        the batch's device, read with the throughput at logging steps (reading it here would wait for it)."""
        return (batch["labels"] != -100).sum()

    @property
    def step_forward(self):
        return self.forward_with_nsp if self.next_sentence_prediction else self.forward

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits and labels at the masked positions only (see :func:`masked_position_logits`).

        The vocabulary projection is the costliest layer of a small model; applying the MLM head to
        the ~15% of positions that carry a label gives the same loss for a fraction of the work.
        """
        logits, target = masked_position_logits(self.net, _model_inputs(batch), batch["labels"],
                                                self._capacity(batch))
        logits = self.vocab_logits(logits)
        return masked_token_loss(logits, target), logits, target

    def _capacity(self, batch) -> int | None:
        """The static number of positions the head runs at (see :func:`prediction_capacity`) when compiled
        or on an accelerator (the draw's own count would wait for the device); None on the CPU in eager
        mode, where the exact count is free and the fewest positions fastest."""
        labels = batch["labels"]
        if not (torch.compiler.is_compiling() or reading_waits(labels)):
            return None
        return prediction_capacity(labels.numel(), self.mlm_probability)

    def forward_with_nsp(self, batch: dict[str, torch.Tensor]):
        """As :meth:`forward`, plus the next-sentence logits: one encoder pass feeds the MLM head (at
        the masked positions only) and the NSP head (on the pooled first token)."""
        if "next_sentence_label" not in batch:
            raise ConfigError(
                "task.next_sentence_prediction=true needs sentence pairs with next-sentence labels, and the "
                "batches have none. Set data.packing=pairs (or use experiment=text_mlm_nsp)."
            )
        mlm_head, nsp_head = self._pretraining_heads()
        encoded = self.net.base_model(**_model_inputs(batch))
        hidden, target = masked_positions(encoded.last_hidden_state, batch["labels"], self._capacity(batch))
        logits = self.vocab_logits(mlm_head(hidden))
        return masked_token_loss(logits, target), logits, target, nsp_head(encoded.pooler_output)

    def _pretraining_heads(self):
        """The MLM and NSP heads of a BERT-style pretraining network (``cls.predictions``, ``cls.seq_relationship``)."""
        heads = getattr(self.net, "cls", None)
        if heads is None or not all(hasattr(heads, h) for h in ("predictions", "seq_relationship")):
            raise ConfigError(
                f"task.next_sentence_prediction=true needs a BERT-style model with a next-sentence head; the "
                f"{self.net.config.model_type} model ({type(self.net).__name__}) has none. Use a BERT model "
                "(model=bert_tiny or model.arch.model_type=bert) or set task.next_sentence_prediction=false."
            )
        return heads.predictions, heads.seq_relationship

    def _step(self, split: str, batch):
        """Compute and log the batch's losses; return the loss, the masked-position logits and labels,
        and (NSP logits, NSP labels) or None."""
        size = batch["input_ids"].size(0)
        outputs = self.training_forward(batch) if split == "train" else self.step_forward(batch)
        if not self.next_sentence_prediction:
            loss, logits, target = outputs
            self.log_split(split, {"loss": loss}, batch_size=size, prog_bar=True)
            return loss, logits, target, None
        mlm_loss, logits, target, nsp_logits = outputs
        nsp_target = batch["next_sentence_label"]
        nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_target)
        loss = mlm_loss + nsp_loss  # the sum BertForPreTraining trains on
        self.log_split(split, {"loss": loss}, batch_size=size, prog_bar=True)
        parts = {"mlm_loss": mlm_loss, "nsp_loss": nsp_loss}
        if split == "train":  # validation accumulates it in val_metrics
            parts["nsp_acc"] = (nsp_logits.argmax(-1) == nsp_target).float().mean()
        self.log_split(split, parts, batch_size=size)
        return loss, logits, target, (nsp_logits, nsp_target)

    def training_step(self, batch, batch_idx):
        loss, _, _, _ = self._step("train", batch)
        return loss

    def validation_step(self, batch, batch_idx):
        _, logits, target, nsp = self._step("val", batch)
        if target.numel():
            self.val_metrics["masked_acc"].update(logits.argmax(-1), target)
            self.val_metrics["perplexity"].update(logits.float().unsqueeze(0), target.unsqueeze(0))
        if nsp is not None:
            nsp_logits, nsp_target = nsp
            self.val_metrics["nsp_acc"].update(nsp_logits.argmax(-1), nsp_target)

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_metrics.reset()


def masked_positions(hidden: torch.Tensor, labels: torch.Tensor,
                     capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states at the masked positions (``labels != -100``) and their labels.

    ``capacity`` None: exactly the masked positions (a boolean index, whose size depends on the draw).
    An int: that many positions, the masked ones first, then unmasked ones whose label -100 the loss
    ignores: the same loss, with shapes fixed for a compiled graph and no wait for the count."""
    if capacity is None:
        selected = labels != -100
        return hidden[selected], labels[selected]
    flat_labels = labels.flatten()
    order = torch.argsort((flat_labels != -100).to(torch.int32), descending=True, stable=True)[:capacity]
    return hidden.flatten(0, 1).index_select(0, order), flat_labels.index_select(0, order)


def masked_position_logits(net, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                           capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An MLM's logits at the masked positions only, and their labels (see :func:`masked_positions`):
    the encoder runs on the whole batch, the vocabulary projection (the costliest layer of a small
    model) on the ~15% masked positions."""
    heads = [m for m in net.children() if m is not net.base_model]
    if len(heads) != 1:  # a head we cannot call on its own: run the whole model
        return masked_positions(net(**inputs).logits, labels, capacity)
    hidden, target = masked_positions(net.base_model(**inputs).last_hidden_state, labels, capacity)
    return heads[0](hidden), target


def masked_token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled (masked) tokens; a batch of a few short texts can draw
    none, and then the loss is a zero that keeps the graph (the mean over no tokens would be NaN)."""
    total = F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")
    return total / (target != -100).sum().clamp(min=1)


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the targets and the collator's bookkeeping: what the encoder takes."""
    return {k: v for k, v in batch.items() if k not in ("labels", "special_tokens_mask", "next_sentence_label")}
