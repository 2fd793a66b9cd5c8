"""Masked language modelling (BERT): predict tokens hidden by transformers' masking collator;
optionally with BERT's next-sentence prediction on sentence pairs (``data.packing=pairs``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
from torchmetrics.text import Perplexity

from headstart.config.schema import MaskedLMConfig
from headstart.data.tokenizer import check_vocab
from headstart.errors import ConfigError
from headstart.module import HeadstartModule


class MaskedLanguageModeling(HeadstartModule):
    hf_head = "masked_lm"
    exports_backbone = True

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
        from transformers import DataCollatorForLanguageModeling

        check_vocab(tokenizer, ("mask_token", "pad_token"))
        return DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob,
        )

    def predicted_tokens(self, batch) -> int:
        """The vocabulary projection runs at the masked positions only (see :meth:`forward`)."""
        return int((batch["labels"] != -100).sum())

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits and labels at the masked positions only.

        The vocabulary projection is the costliest layer of a small model; applying the MLM head to
        the ~15% of positions that carry a label gives the same loss for a fraction of the work.
        """
        labels = batch["labels"]
        inputs = _model_inputs(batch)
        selected = labels != -100
        logits = masked_position_logits(self.net, inputs, selected)
        target = labels[selected]
        return _masked_token_loss(logits, target), logits, target

    def forward_with_nsp(self, batch: dict[str, torch.Tensor]):
        """As :meth:`forward`, plus the next-sentence logits: one encoder pass feeds the MLM head (at
        the masked positions only) and the NSP head (on the pooled first token)."""
        if "next_sentence_label" not in batch:
            raise ConfigError(
                "task.next_sentence_prediction=true needs sentence pairs with next-sentence labels, and the "
                "batches have none. Set data.packing=pairs (or use experiment=text_mlm_nsp)."
            )
        mlm_head, nsp_head = self._pretraining_heads()
        labels = batch["labels"]
        selected = labels != -100
        encoded = self.net.base_model(**_model_inputs(batch))
        logits = mlm_head(encoded.last_hidden_state[selected])
        target = labels[selected]
        return _masked_token_loss(logits, target), logits, target, nsp_head(encoded.pooler_output)

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
        if not self.next_sentence_prediction:
            loss, logits, target = self(batch)
            self.log_split(split, {"loss": loss}, batch_size=size, prog_bar=True)
            return loss, logits, target, None
        mlm_loss, logits, target, nsp_logits = self.forward_with_nsp(batch)
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


def masked_position_logits(net, inputs: dict[str, torch.Tensor], selected: torch.Tensor) -> torch.Tensor:
    """An MLM's logits at the ``selected`` positions only: the encoder runs on the whole batch, the
    vocabulary projection (the costliest layer of a small model) on the ~15% masked positions."""
    heads = [m for m in net.children() if m is not net.base_model]
    if len(heads) != 1:  # a head we cannot call on its own: run the whole model
        return net(**inputs).logits[selected]
    return heads[0](net.base_model(**inputs).last_hidden_state[selected])


def _masked_token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked tokens; a batch of a few short texts can draw none, and then
    the loss is a zero that keeps the graph (the mean over no tokens would be NaN)."""
    if target.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target)


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the targets and the collator's bookkeeping: what the encoder takes."""
    return {k: v for k, v in batch.items() if k not in ("labels", "special_tokens_mask", "next_sentence_label")}
