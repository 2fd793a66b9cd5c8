"""Masked language modelling (BERT): predict tokens hidden by transformers' masking collator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from headstart.data.tokenizer import check_vocab
from headstart.module import HeadstartModule


class MaskedLanguageModeling(HeadstartModule):
    hf_head = "masked_lm"
    exports_backbone = True

    def __init__(self, backbone, optimizer, scheduler=None, mlm_probability: float = 0.15,
                 mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1, **kwargs) -> None:
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        vocab = self.net.config.vocab_size
        self.val_metrics = MetricCollection({
            "masked_acc": MulticlassAccuracy(num_classes=vocab, ignore_index=-100, average="micro"),
            "perplexity": Perplexity(ignore_index=-100),
        }, prefix="val/")

    def build_collator(self, tokenizer):  # the processor of text data is its tokenizer
        from transformers import DataCollatorForLanguageModeling

        check_vocab(tokenizer, ("mask_token", "pad_token"))
        return DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob,
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits and labels at the masked positions only.

        The vocabulary projection is the costliest layer of a small model; applying the MLM head to
        the ~15% of positions that carry a label gives the same loss for a fraction of the work.
        """
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "special_tokens_mask")}
        selected = labels != -100
        if self._mlm_head is None:  # a head we cannot call on its own: run the whole model
            logits = self.net(**inputs).logits[selected]
        else:
            hidden = self.net.base_model(**inputs).last_hidden_state
            logits = self._mlm_head(hidden[selected])
        target = labels[selected]
        return F.cross_entropy(logits.float(), target), logits, target

    @property
    def _mlm_head(self):
        heads = [m for m in self.net.children() if m is not self.net.base_model]
        return heads[0] if len(heads) == 1 else None

    def training_step(self, batch, batch_idx):
        loss, _, _ = self(batch)
        self.log_split("train", {"loss": loss}, batch_size=batch["input_ids"].size(0), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, target = self(batch)
        self.log_split("val", {"loss": loss}, batch_size=batch["input_ids"].size(0), prog_bar=True)
        self.val_metrics["masked_acc"].update(logits.argmax(-1), target)
        self.val_metrics["perplexity"].update(logits.float().unsqueeze(0), target.unsqueeze(0))

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_metrics.reset()
