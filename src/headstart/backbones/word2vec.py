"""A word2vec backbone: one embedding matrix, as a transformers model.

Wrapping the matrix as a ``PreTrainedModel`` gives it everything a transformers backbone has in
headstart: it is built from ``model.arch`` (``model_type: headstart_word2vec``), exported with
``save_pretrained``, loaded with ``AutoModel.from_pretrained``, handed off, and pooled by the
sequence classifier (a bag-of-embeddings classifier). Importing this module registers the model
type with ``AutoConfig``/``AutoModel``; :mod:`headstart.backbones.text` imports it before it
builds anything.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput

MODEL_TYPE = "headstart_word2vec"


class Word2VecConfig(PretrainedConfig):
    """``hidden_size`` is the embedding dimension; ``vocab_size`` comes from the tokenizer."""

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 8000, hidden_size: int = 128, **kwargs) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)


class Word2VecModel(PreTrainedModel):
    """The input (word) embedding matrix of word2vec. ``forward`` returns the embeddings of the
    tokens as ``last_hidden_state``: no context mixing, so pooling them gives a bag of embeddings.
    The output (context) matrix of the training objective is not part of it."""

    config_class = Word2VecConfig
    base_model_prefix = "word2vec"
    main_input_name = "input_ids"
    # There is no attention: any requested implementation is trivially honoured.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Word2VecConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        # word2vec's own initialisation: uniform in +-0.5/dim (its context matrix starts at zero).
        if isinstance(module, nn.Embedding):
            bound = 0.5 / module.embedding_dim
            init.uniform_(module.weight, -bound, bound)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **ignored) -> BaseModelOutput:
        """``attention_mask`` and other encoder inputs (``token_type_ids``) are accepted and unused;
        poolers mask padding themselves."""
        return BaseModelOutput(last_hidden_state=self.embeddings(input_ids))


AutoConfig.register(MODEL_TYPE, Word2VecConfig, exist_ok=True)
AutoModel.register(Word2VecConfig, Word2VecModel, exist_ok=True)
