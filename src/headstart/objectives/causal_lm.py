"""Causal language modelling (GPT): predict every next token of packed blocks of text.

At the end of each validation epoch the model continues a fixed prompt from the validation data;
the sample goes to the log, to ``<run dir>/samples.txt`` and, when a W&B logger is attached, to a
W&B table, so a run shows what the model writes as it trains.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.text import Perplexity

from headstart.backbones.text import encoder_inputs
from headstart.config.schema import CausalLMConfig
from headstart.data.collators import UnpaddedCausalCollator
from headstart.data.tokenizer import check_vocab
from headstart.errors import ConfigError
from headstart.module import HeadstartModule

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.txt"
_SAMPLE_COLUMNS = ["epoch", "step", "prompt", "continuation"]


class CausalLanguageModeling(HeadstartModule):
    hf_head = "causal_lm"
    exports_backbone = True
    compiles_step = True

    def __init__(self, backbone, optimizer, scheduler=None,
                 sample_prompt_tokens: int = CausalLMConfig.sample_prompt_tokens,
                 sample_new_tokens: int = CausalLMConfig.sample_new_tokens, sample_top_k: int | None = None,
                 sample_seed: int = 0, **kwargs) -> None:
        if sample_prompt_tokens < 1:
            raise ConfigError(f"task.sample_prompt_tokens={sample_prompt_tokens} must be at least 1.")
        if sample_new_tokens < 0:
            raise ConfigError(f"task.sample_new_tokens={sample_new_tokens} must be 0 (no samples) or more.")
        if sample_top_k is not None and sample_top_k < 1:
            raise ConfigError(f"task.sample_top_k={sample_top_k} must be at least 1, or null for greedy decoding.")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        self.sample_prompt_tokens = sample_prompt_tokens
        self.sample_new_tokens = sample_new_tokens
        self.sample_top_k = sample_top_k
        self.sample_seed = sample_seed
        self.val_perplexity = Perplexity(ignore_index=-100)
        self.tokenizer = None  # set by build_collator; decodes the samples
        self._prompt: torch.Tensor | None = None
        self._sample_rows: list[list] = []

    def build_collator(self, tokenizer):  # the processor of text data is its tokenizer
        check_vocab(tokenizer, ("pad_token",))
        self.tokenizer = tokenizer
        return UnpaddedCausalCollator(tokenizer)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Next-token loss, with the logits of every position and each one's target: the next token
        (-100, ignored, at the last position).

        The targets are shifted, not the logits: slicing off the last position of the (B, L, vocab)
        logits would make the loss copy them, the largest tensor of a small model's step. A batch
        without padding comes without an attention mask, and attention then runs its causal kernel
        (``is_causal``, no mask tensor: the flash path on GPUs).
        """
        logits = self.vocab_logits(self.net(**encoder_inputs(batch, ("input_ids", "attention_mask"))).logits)
        target = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100), logits, target

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.training_forward(batch)
        self.log_split("train", {"loss": loss}, batch_size=batch["input_ids"].size(0), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, target = self(batch)
        self.log_split("val", {"loss": loss}, batch_size=batch["input_ids"].size(0), prog_bar=True)
        self.val_perplexity.update(logits.float(), target)
        if batch_idx == 0 and self._prompt is None:
            # The validation loader is not shuffled: its first text is the same prompt every epoch.
            first = batch["input_ids"][0]
            if "attention_mask" in batch:
                first = first[batch["attention_mask"][0].bool()]
            self._prompt = first[: self.sample_prompt_tokens].detach().clone()

    def on_validation_epoch_end(self):
        self.log("val/perplexity", self.val_perplexity.compute(), sync_dist=True)
        self.val_perplexity.reset()
        if self.sample_new_tokens > 0 and self._prompt is not None and not self.trainer.sanity_checking:
            self._log_sample(*self.sample(self._prompt))

    @torch.no_grad()
    def sample(self, prompt: torch.Tensor) -> tuple[str, str]:
        """Continue ``prompt`` (token ids) by ``sample_new_tokens`` tokens, greedily or top-k with
        ``sample_seed``; return (prompt text, continuation text).

        Every process generates (a sharded model needs all of them for each forward) exactly that many
        tokens: an end-of-text token does not stop it (it shows where the model ends a document), so
        no process waits on another. The training random state is left untouched.
        """
        prompt = prompt.to(self.device).unsqueeze(0)
        sampling = {"do_sample": True, "top_k": self.sample_top_k} if self.sample_top_k else {"do_sample": False}
        if self.padded_vocab_from is not None:  # never the padded vocabulary's extra rows
            sampling["suppress_tokens"] = list(range(self.padded_vocab_from, self.net.config.vocab_size))
        with self.seeded(self.sample_seed):
            out = self.net.generate(prompt, attention_mask=torch.ones_like(prompt),
                                    max_new_tokens=self.sample_new_tokens, eos_token_id=None,
                                    pad_token_id=self.net.config.pad_token_id, **sampling)
        decode = self.tokenizer.decode if self.tokenizer is not None else str
        return _one_line(decode(prompt[0].tolist(), skip_special_tokens=False)), \
            _one_line(decode(out[0, prompt.size(1):].tolist(), skip_special_tokens=False))

    def _log_sample(self, prompt: str, continuation: str) -> None:
        if not self.trainer.is_global_zero:
            return
        epoch, step = self.current_epoch, self.global_step
        log.info("Sample after epoch %d: %s ⟶ %s", epoch, prompt, continuation)
        path = Path(self.trainer.default_root_dir) / SAMPLES_FILE
        new_file = not path.exists()
        with path.open("a", encoding="utf-8") as f:
            if new_file:
                f.write("\t".join(_SAMPLE_COLUMNS) + "\n")
            f.write(f"{epoch}\t{step}\t{prompt}\t{continuation}\n")
        self._sample_rows.append([epoch, step, prompt, continuation])
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                # The whole table each time: W&B shows the latest table under a key.
                logger.log_text(key="samples", columns=_SAMPLE_COLUMNS, data=list(self._sample_rows), step=step)


def _one_line(text: str) -> str:
    """Whitespace (tabs, newlines) as single spaces, so a sample is one row of samples.txt."""
    return " ".join(text.split())
