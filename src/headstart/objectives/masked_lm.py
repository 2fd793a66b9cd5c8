"""Masked language modelling (BERT): predict tokens hidden by transformers' masking collator."""

from __future__ import annotations

import torch
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

    def build_collator(self, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        check_vocab(tokenizer, ("mask_token", "pad_token"))
        return DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob,
        )

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.net(**{k: v for k, v in batch.items() if k != "special_tokens_mask"})

    def training_step(self, batch, batch_idx):
        loss = self(batch).loss
        self.log_split("train", {"loss": loss}, batch_size=batch["input_ids"].size(0), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        self.log_split("val", {"loss": out.loss}, batch_size=batch["input_ids"].size(0), prog_bar=True)
        self.val_metrics["masked_acc"].update(out.logits.argmax(-1), batch["labels"])
        self.val_metrics["perplexity"].update(out.logits.float(), batch["labels"])

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_metrics.reset()
