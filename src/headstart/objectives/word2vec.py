"""word2vec (Mikolov et al., 2013): skip-gram or CBOW with negative sampling and subsampling of
frequent words; or ``document`` context: each word is predicted from the mean of the other words of
its line (a CBOW whose window is the whole document, as in PV-DBOW/fastText-style document vectors),
which places words that occur in the same documents together (topic and sentiment), where a narrow
window places words that fill the same slots together (``good`` beside ``bad``).

The backbone is the input embedding matrix (``model=word2vec``, a ``headstart_word2vec`` model) and is
what the export holds. The output ("context") matrix that scores (centre, context) pairs belongs to
this objective alone, like an MLM head: it is trained and checkpointed here, but not exported.

Training pairs are built on the fly from lines of tokens (``data.packing=lines``), vectorised over
the batch: each step draws which frequent words to drop, each centre word's window size, and the
negative words, so every epoch sees fresh pairs as in the original implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.config.schema import Word2VecConfig
from headstart.errors import ConfigError, DataError
from headstart.module import HeadstartModule

MODES = ("skipgram", "cbow", "document")


def training_token_counts(datamodule, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the training split, special tokens left out."""
    import pyarrow.compute as pc

    datasets = getattr(datamodule, "datasets", None)
    if datasets is None or "train" not in datasets or "input_ids" not in datasets["train"].column_names:
        raise DataError(
            "task=word2vec counts tokens in the training split to draw negatives and drop frequent words, but "
            "the data has no tokenized training split with input_ids. Use a text language-model data config "
            "such as data=python_docs or data=text_files (with data.packing=lines)."
        )
    train = datasets["train"].with_format("arrow")
    ids = pc.list_flatten(train["input_ids"]).to_numpy()
    if "special_tokens_mask" in train.column_names:
        ids = ids[pc.list_flatten(train["special_tokens_mask"]).to_numpy() == 0]
    counts = torch.bincount(torch.from_numpy(ids).long(), minlength=vocab_size).double()
    if counts.sum() == 0:
        raise DataError("The training split has no words besides special tokens; word2vec has nothing to learn from.")
    return counts


def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """Mikolov's negative-sampling distribution: unigram frequencies raised to ``power``, normalised."""
    weights = counts.double().pow(power)
    return (weights / weights.sum()).float()


def keep_probabilities(counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Subsampling of frequent words (Mikolov et al., 2013, eq. 5): a word of frequency f is dropped
    with probability 1 - sqrt(threshold / f), i.e. kept with min(1, sqrt(threshold / f))."""
    if threshold <= 0:
        return torch.ones_like(counts, dtype=torch.float)
    freq = counts.double() / counts.sum()
    return (threshold / freq).sqrt().clamp(max=1.0).float()  # unseen words (f=0): inf, clamped to 1


def negative_sampling_loss(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                           negative_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over pairs of -log s(q.p) - sum_k log s(-q.n_k), s the logistic function.

    ``query`` (N, d) are the input-side vectors, ``positive`` (N, d) the output vectors of the true
    words, ``negatives`` (N, k, d) those of noise words; ``negative_mask`` (N, k) drops noise draws
    that hit the true word. Also returns the share of (true, noise) word pairs in which the true word
    scores higher: an AUC, 0.5 for embeddings that have learned nothing about contexts.
    """
    pos = (query * positive).sum(-1).float()
    neg = torch.einsum("nd,nkd->nk", query, negatives).float()
    mask = torch.ones_like(neg) if negative_mask is None else negative_mask.to(neg.dtype)
    loss = -(F.logsigmoid(pos) + (F.logsigmoid(-neg) * mask).sum(-1)).mean()
    # Ties (all-zero context vectors at the start) count half.
    ranked = (pos.unsqueeze(-1) > neg).float() + 0.5 * (pos.unsqueeze(-1) == neg).float()
    return loss, (ranked * mask).sum() / mask.sum().clamp(min=1)


class Word2Vec(HeadstartModule):
    hf_head = "base"
    exports_backbone = True

    def __init__(self, backbone, optimizer, scheduler=None, mode: str = Word2VecConfig.mode,
                 window: int = Word2VecConfig.window, negatives: int = Word2VecConfig.negatives,
                 subsample_threshold: float = Word2VecConfig.subsample_threshold,
                 noise_power: float = Word2VecConfig.noise_power, **kwargs) -> None:
        if mode not in MODES:
            raise ConfigError(f"task.mode={mode!r} is unknown; use 'skipgram' (predict the context from a word), "
                              "'cbow' (predict a word from its context) or 'document' (predict a word from the "
                              "rest of its line).")
        for name, value in (("window", window), ("negatives", negatives)):
            if value < 1:
                raise ConfigError(f"task.{name}={value} must be at least 1.")
        if subsample_threshold < 0:
            raise ConfigError(f"task.subsample_threshold={subsample_threshold} must be >= 0 (0 keeps every word).")
        super().__init__(backbone, optimizer, scheduler, **kwargs)
        if self.net.config.model_type != "headstart_word2vec":
            raise ConfigError(
                f"task=word2vec trains a word2vec embedding matrix, but the model is a {self.net.config.model_type}. "
                "Use model=word2vec (its hidden_size is the embedding dimension)."
            )
        self.mode = mode
        self.window = window
        self.negatives = negatives
        self.subsample_threshold = subsample_threshold
        self.noise_power = noise_power
        vocab, dim = self.net.config.vocab_size, self.net.config.hidden_size
        # The output (context) vectors start at zero, as in word2vec: the first loss is (k + 1) log 2.
        self.context_embeddings = nn.Embedding(vocab, dim)
        nn.init.zeros_(self.context_embeddings.weight)
        # Filled from the training split's token counts in setup(); saved with checkpoints.
        self.register_buffer("noise_probs", torch.zeros(vocab))
        self.register_buffer("keep_probs", torch.ones(vocab))

    # -- statistics of the training split ----------------------------------------------------
    def set_token_counts(self, counts: torch.Tensor) -> None:
        """Derive the noise distribution and the subsampling probabilities from token counts."""
        self.noise_probs.copy_(noise_distribution(counts, self.noise_power))
        self.keep_probs.copy_(keep_probabilities(counts, self.subsample_threshold))

    def setup(self, stage: str) -> None:
        if self.noise_probs.sum() == 0:  # counted once; a restored checkpoint brings its own
            self.set_token_counts(training_token_counts(self.trainer.datamodule, self.noise_probs.numel()))

    # -- pairs and loss ----------------------------------------------------------------------
    def kept_words(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The words left after subsampling, moved to the front of their row in order: (ids (B, L),
        which positions hold a kept word (B, L)). Dropped words leave no gap, as in word2vec's C code."""
        ids = batch["input_ids"]
        words = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        if "special_tokens_mask" in batch:
            words = words & ~batch["special_tokens_mask"].bool()
        draw = torch.rand(ids.shape, device=ids.device, generator=generator)
        keep = words & (draw < self.keep_probs[ids])
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        return ids.gather(1, order), keep.gather(1, order)

    def windows(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every token's context window after subsampling: (centre ids (B, L), context ids (B, L, 2W),
        which context slots are real (B, L, 2W)); the window spans kept words only."""
        ids, keep = self.kept_words(batch, generator)
        w = self.window
        padded_ids = F.pad(ids, (w, w))
        padded_keep = F.pad(keep, (w, w))
        # unfold: (B, L, 2W + 1) windows centred on each position; the middle slot is the centre itself.
        slots = torch.cat([torch.arange(w), torch.arange(w + 1, 2 * w + 1)]).to(ids.device)
        context = padded_ids.unfold(1, 2 * w + 1, 1)[..., slots]
        context_ok = padded_keep.unfold(1, 2 * w + 1, 1)[..., slots]
        # Each centre sees a random 1..W words on either side, so near words are used more often.
        reach = torch.randint(1, w + 1, ids.shape, device=ids.device, generator=generator)
        distance = (slots - w).abs()
        context_ok = context_ok & keep.unsqueeze(-1) & (distance <= reach.unsqueeze(-1))
        return ids, context, context_ok

    def examples(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query vector, true word) of every training example in the batch, by mode."""
        embed = self.net.get_input_embeddings()
        if self.mode == "document":  # the mean of the line's other kept words predicts each kept word
            ids, keep = self.kept_words(batch, generator)
            vectors = embed(ids) * keep.unsqueeze(-1).to(embed.weight.dtype)
            others = keep.sum(1, keepdim=True) - 1  # (B, 1)
            has_context = keep & (others > 0)
            query = (vectors.sum(1, keepdim=True) - vectors) / others.clamp(min=1).unsqueeze(-1)
            return query[has_context], ids[has_context]
        centre, context, context_ok = self.windows(batch, generator)
        if self.mode == "skipgram":  # one example per (centre, context) pair: the centre predicts the context
            return embed(centre.unsqueeze(-1).expand_as(context)[context_ok]), context[context_ok]
        # cbow: one example per centre with any context: the mean of the context predicts the centre
        has_context = context_ok.any(-1)
        ctx_ok = context_ok[has_context].unsqueeze(-1).to(embed.weight.dtype)
        return (embed(context[has_context]) * ctx_ok).sum(1) / ctx_ok.sum(1), centre[has_context]

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Negative-sampling loss, AUC of true over noise words, and the number of examples in the batch."""
        query, target = self.examples(batch, generator)
        n = target.numel()
        if n == 0:  # every word dropped: a zero loss that still touches every parameter (DDP needs all grads)
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return zero, zero.detach(), 0
        noise = torch.multinomial(self.noise_probs, n * self.negatives, replacement=True,
                                  generator=generator).view(n, self.negatives)
        loss, auc = negative_sampling_loss(query, self.context_embeddings(target), self.context_embeddings(noise),
                                           noise != target.unsqueeze(-1))
        return loss, auc, n

    # -- steps -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss, _, n = self(batch)
        self.log_split("train", {"loss": loss}, batch_size=max(n, 1), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # The same draws every epoch, so validation losses compare across epochs.
        generator = torch.Generator(device=batch["input_ids"].device).manual_seed(batch_idx)
        loss, auc, n = self(batch, generator)
        self.log_split("val", {"loss": loss, "auc": auc}, batch_size=max(n, 1), prog_bar=True)
