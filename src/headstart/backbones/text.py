"""Text backbones from ``transformers``: built from a config, or loaded from an HF model directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from headstart.config.schema import TextBackboneConfig
from headstart.errors import CheckpointError, ConfigError, did_you_mean

# Which transformers auto class builds a backbone with each kind of head.
AUTO_CLASSES = {"base": "AutoModel", "masked_lm": "AutoModelForMaskedLM", "causal_lm": "AutoModelForCausalLM",
                "pretraining": "AutoModelForPreTraining"}  # pretraining: e.g. BERT's MLM + next-sentence heads
# headstart's own transformers models; importing each registers its model_type with the Auto classes.
MODEL_MODULES = ("headstart.backbones.word2vec", "headstart.backbones.vision")
# What a hand-off loads from model.init_from: the whole backbone, or only its input embedding matrix.
INIT_SCOPES = ("backbone", "embeddings")


#: What a text encoder takes from a batch (labels and a collator's bookkeeping stay out).
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encoder_inputs(batch: dict, keys: tuple[str, ...] = ENCODER_INPUTS) -> dict:
    """The encoder's keyword inputs among a batch's entries."""
    return {k: batch[k] for k in keys if k in batch}


def register_models() -> None:
    """Make headstart's model types known to ``AutoConfig``/``AutoModel`` (idempotent)."""
    import importlib

    for name in MODEL_MODULES:
        importlib.import_module(name)


class TextBackboneSpec:
    """What the ``model`` config group describes; objectives call :meth:`build` to get their network.

    ``arch`` is a transformers config (``model_type`` plus sizes); ``vocab_size`` and the special
    token ids come from the data's tokenizer at :meth:`bind`. ``name_or_path`` loads config and
    weights from a local HF directory (or a hub name when online) instead. ``init_from`` is the
    headstart export whose weights the hand-off loads after the model is built; ``init_scope``
    says whether it loads the whole backbone or only the input embedding matrix.
    """

    def __init__(self, arch: dict[str, Any] | None = None, name_or_path: str | None = None,
                 init_from: str | None = None,
                 attn_implementation: str = TextBackboneConfig.attn_implementation,
                 init_scope: str = TextBackboneConfig.init_scope,
                 allow_incomplete: bool = TextBackboneConfig.allow_incomplete) -> None:
        if init_scope not in INIT_SCOPES:
            raise ConfigError(
                f"model.init_scope={init_scope!r} is unknown; use 'backbone' (load every backbone weight of "
                "model.init_from) or 'embeddings' (load only its input embedding matrix)."
            )
        register_models()
        self.arch = dict(arch or {})
        self.name_or_path = name_or_path
        self.init_from = init_from
        self.init_scope = init_scope
        self.allow_incomplete = allow_incomplete
        self.attn_implementation = attn_implementation
        self.config = None
        if name_or_path is None:
            self._check_arch()
        elif not Path(name_or_path).exists() and not _hub_reachable():
            raise CheckpointError(
                f"model.name_or_path={name_or_path!r} is not a local directory and the Hugging Face hub cannot be "
                "reached (offline, or HF_HUB_OFFLINE=1). Download the model on a machine with network access "
                "(model.save_pretrained(dir)) and point model.name_or_path at that directory."
            )

    def _check_arch(self) -> None:
        from transformers import CONFIG_MAPPING

        model_type = self.arch.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ConfigError(
                f"model.arch.model_type={model_type!r} is not a transformers model type.{did_you_mean(str(model_type), CONFIG_MAPPING.keys())} "
                "Set it to one such as bert, roberta, gpt2 or llama, or load a model with model.name_or_path."
            )
        known = CONFIG_MAPPING[model_type]().to_dict()
        for key in self.arch:
            if key != "model_type" and key not in known:
                raise ConfigError(
                    f"model.arch.{key} is not a field of the {model_type} config.{did_you_mean(key, known)} "
                    f"Remove it or use one of the {model_type} config fields."
                )

    def bind(self, datamodule) -> None:
        """Make the model config agree with the data's tokenizer (vocab size, special tokens, length)."""
        self.bind_tokenizer(datamodule.processor)

    def bind_tokenizer(self, tokenizer) -> None:
        """Make the model config agree with the tokenizer (vocab size, special tokens, length)."""
        from transformers import AutoConfig

        if self.name_or_path is not None:
            self.config = AutoConfig.from_pretrained(self.name_or_path)
        else:
            arch = dict(self.arch)
            config = AutoConfig.for_model(**arch)
            config.vocab_size = len(tokenizer)
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                token_id = getattr(tokenizer, name, None)
                if token_id is not None:
                    setattr(config, name, token_id)
            self.config = config
        max_positions = getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", None)
        if max_positions is not None and tokenizer.model_max_length > max_positions:
            raise ConfigError(
                f"data.max_length={tokenizer.model_max_length} is longer than the model's {max_positions} positions. "
                f"Lower data.max_length to at most {max_positions}, or raise the model's position size."
            )
        if len(tokenizer) > self.config.vocab_size:
            raise CheckpointError(
                f"The tokenizer has {len(tokenizer)} tokens but the model {self.name_or_path!r} only "
                f"{self.config.vocab_size} embeddings. Use the tokenizer that came with the model."
            )

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def build(self, head: str = "base"):
        """A transformers model with the given head: random init from the config, or loaded weights."""
        import transformers

        if self.config is None:
            raise RuntimeError("bind_tokenizer() must run before build()")
        auto = getattr(transformers, AUTO_CLASSES[head])
        kwargs = {"attn_implementation": self.attn_implementation}
        if head == "base" and self.config.model_type in ("bert", "roberta", "electra", "camembert", "xlm-roberta"):
            kwargs["add_pooling_layer"] = False  # heads pool themselves; the pretraining models have no pooler
        if self.name_or_path is None:
            return auto.from_config(self.config, **kwargs)
        return load_pretrained(auto, self.name_or_path, **kwargs)


def load_pretrained(auto_class, name_or_path: str, **kwargs):
    """``from_pretrained`` with load failures reported as a user error."""
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"model.name_or_path={name_or_path!r} could not be loaded: {str(err).splitlines()[0]} "
            "Point it at a directory written by save_pretrained (config.json and model weights)."
        ) from None


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False
