"""Vision backbones from ``transformers``: ResNet, ViT, or headstart's small CNN, built from a config or
loaded from an HF model directory.

The small CNN is a ``PreTrainedModel`` registered with ``AutoConfig``/``AutoModel`` under the model type
``headstart_cnn`` when this module is imported, so its exports save and load like any transformers
model (``import headstart.backbones.vision`` first, then ``AutoModel.from_pretrained(export_dir)``).
Its stages are ``encoder.stages.<i>``; weights saved in its older flat layout (``encoder.<k>``) still load.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from headstart.backbones.text import TextBackboneSpec, load_pretrained
from headstart.errors import CheckpointError, ConfigError

# Transformers models whose base model can leave out its pooler (heads take the CLS token themselves,
# and an export without a pooler must load into a backbone without one).
_OPTIONAL_POOLER = ("vit", "deit")


class HeadstartCNNConfig(PretrainedConfig):
    """A plain convolutional encoder: one stage per entry of ``hidden_sizes`` (its channels), each
    ``layers_per_stage`` times conv 3x3 -> batch norm -> activation, then 2x2 max pooling; global
    average pooling at the end gives the image's feature vector."""

    model_type = "headstart_cnn"

    def __init__(self, num_channels: int = 3, hidden_sizes: list[int] | None = None,
                 layers_per_stage: int = 1, hidden_act: str = "relu", **kwargs) -> None:
        self.num_channels = num_channels
        self.hidden_sizes = list(hidden_sizes or [32, 64, 128])
        self.layers_per_stage = layers_per_stage
        self.hidden_act = hidden_act
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.hidden_sizes[-1]


def _legacy_key_renames(config: HeadstartCNNConfig) -> dict[str, str]:
    """Key prefixes of the old flat layout (``encoder.<k>.``: one index per conv, norm, activation and
    pooling module) -> the per-stage layout (``encoder.stages.<stage>.<index in stage>.``)."""
    per_stage = 3 * config.layers_per_stage + 1  # conv, norm, activation per layer; then the pooling
    return {f"encoder.{k}.": f"encoder.stages.{k // per_stage}.{k % per_stage}."
            for k in range(per_stage * len(config.hidden_sizes))}


class HeadstartCNNEncoder(nn.Module):
    """The stages, one ``nn.Sequential`` each: a stage is the "layer" that transfer modes freeze and
    give a decayed learning rate (``encoder.stages.<i>``, as in transformers' ResNet)."""

    def __init__(self, config: HeadstartCNNConfig) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        stages, channels = [], config.num_channels
        for width in config.hidden_sizes:
            layers: list[nn.Module] = []
            for _ in range(config.layers_per_stage):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           ACT2FN[config.hidden_act]]
                channels = width
            # ceil_mode: a map already down to 1x1 stays 1x1, so small images take any number of stages.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            pixel_values = stage(pixel_values)
        return pixel_values


class HeadstartCNNModel(PreTrainedModel):
    config_class = HeadstartCNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: HeadstartCNNConfig) -> None:
        super().__init__(config)
        self.encoder = HeadstartCNNEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d(1)
        # Lightning checkpoints written before the per-stage layout load too (renamed on the way in).
        self.register_load_state_dict_pre_hook(self._rename_legacy_keys)
        self.post_init()

    def upgrade_state_dict(self, state_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """``state_dict`` with the keys of the old flat layout renamed to the per-stage one (others
        unchanged). The hand-off calls it on an export's weights."""
        renames = _legacy_key_renames(self.config)
        old = re.compile(rf"^{re.escape(prefix)}(encoder\.\d+\.)")  # a new key has "encoder.stages."
        return {old.sub(lambda m: prefix + renames.get(m.group(1), m.group(1)), key): value
                for key, value in state_dict.items()}

    @staticmethod
    def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
        renamed = module.upgrade_state_dict(state_dict, prefix)
        if renamed.keys() != state_dict.keys():
            state_dict.clear()
            state_dict.update(renamed)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``, which also loads an export of the old flat layout (its keys
        renamed as they are read); saving it again writes the per-stage layout."""
        config = kwargs.get("config")
        if not isinstance(config, HeadstartCNNConfig):
            config = HeadstartCNNConfig.from_pretrained(pretrained_model_name_or_path)
        renames = {"^" + re.escape(old): new for old, new in _legacy_key_renames(config).items()}
        ours = "key_mapping" not in kwargs
        kwargs.setdefault("key_mapping", renames)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True: (model, info)
        if ours:  # transformers would otherwise save it back in the layout it was read in
            model._weight_conversions = [c for c in getattr(model, "_weight_conversions", None) or []
                                         if not renames.keys() & set(getattr(c, "_original_source_patterns", ()))]
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):  # He init, as for ResNets: the activations are ReLUs
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            super()._init_weights(module)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        feature_map = self.encoder(pixel_values)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=feature_map,
                                                        pooler_output=self.pooler(feature_map).flatten(1))


AutoConfig.register(HeadstartCNNConfig.model_type, HeadstartCNNConfig, exist_ok=True)
AutoModel.register(HeadstartCNNConfig, HeadstartCNNModel, exist_ok=True)


def image_features(outputs) -> torch.Tensor:
    """One vector per image from a vision base model's output: the first token of a token sequence
    (ViT's CLS; a pooler on top of it, if the model has one, is not used), else the pooled feature
    map (CNN, ResNet)."""
    hidden = outputs.last_hidden_state
    if hidden.dim() == 3:
        return hidden[:, 0]
    pooled = getattr(outputs, "pooler_output", None)
    return pooled.flatten(1) if pooled is not None else hidden.mean(dim=(2, 3))


class VisionBackboneSpec(TextBackboneSpec):
    """What the ``model`` config group describes for images; modules call :meth:`build` for their network
    and :meth:`features` for one vector per image.

    ``arch`` is a transformers config (``model_type`` resnet, vit, headstart_cnn, ... plus sizes);
    ``num_channels`` and ``image_size`` come from the data's image processor at :meth:`bind`.
    ``name_or_path`` loads config and weights from a local HF directory instead. The checks of ``arch``
    and of ``name_or_path`` are the text spec's.
    """

    def __init__(self, arch: dict[str, Any] | None = None, **kwargs) -> None:
        from omegaconf import OmegaConf

        # Plain lists: transformers 5's strict config dataclasses (ResNet's hidden_sizes) refuse ListConfig.
        if OmegaConf.is_config(arch):
            arch = OmegaConf.to_container(arch, resolve=True)
        super().__init__(arch, **kwargs)

    def bind(self, datamodule) -> None:
        self.bind_processor(datamodule.processor)

    def bind_processor(self, processor) -> None:
        """Make the model config agree with the images the processor makes (channels, size)."""
        # What an objective that outputs images (an autoencoder's decoder) must produce.
        self.image_size, self.num_channels = processor.image_size, processor.num_channels
        if self.name_or_path is not None:
            try:
                self.config = AutoConfig.from_pretrained(self.name_or_path)
            except (OSError, ValueError) as err:
                raise CheckpointError(
                    f"model.name_or_path={self.name_or_path!r} has no usable config.json ({str(err).splitlines()[0]}). "
                    "Point it at a directory written by save_pretrained."
                ) from None
            self._check_loaded(processor)
            return
        config = AutoConfig.for_model(**self.arch)
        config.num_channels = processor.num_channels
        if hasattr(config, "image_size"):  # ViT: position embeddings are sized for it
            config.image_size = processor.image_size
        patch = getattr(config, "patch_size", None)
        if isinstance(patch, int) and processor.image_size % patch:
            raise ConfigError(
                f"data.image_size={processor.image_size} is not a multiple of model.arch.patch_size={patch}. "
                f"Set data.image_size to a multiple of {patch} (e.g. {patch * max(1, round(processor.image_size / patch))}) "
                "or change the patch size."
            )
        self.config = config

    def _check_loaded(self, processor) -> None:
        channels = getattr(self.config, "num_channels", None)
        if channels is not None and channels != processor.num_channels:
            raise CheckpointError(
                f"The model {self.name_or_path!r} takes {channels}-channel images but the data makes "
                f"{processor.num_channels}-channel ones. Set data.num_channels={channels}."
            )
        size = getattr(self.config, "image_size", None)
        if isinstance(size, int) and size != processor.image_size:
            raise ConfigError(
                f"The model {self.name_or_path!r} takes {size}x{size} images but data.image_size="
                f"{processor.image_size}. Set data.image_size={size}."
            )

    @property
    def hidden_size(self) -> int:
        sizes = getattr(self.config, "hidden_sizes", None)  # convolutional: the last stage's channels
        return sizes[-1] if sizes else self.config.hidden_size

    def features(self, outputs) -> torch.Tensor:
        return image_features(outputs)

    def build(self, head: str = "base"):
        """The bare vision model (AutoModel): random init from the config, or loaded weights."""
        if self.config is None:
            raise RuntimeError("bind() must run before build()")
        if head != "base":
            raise ConfigError(
                f"Vision backbones are built without a transformers head (got {head!r}); the task puts its own head "
                "on the backbone's features."
            )
        kwargs = {}
        if self.config.model_type in _OPTIONAL_POOLER:
            kwargs["add_pooling_layer"] = False
        if hasattr(self.config, "num_attention_heads"):  # convolutional models take no attention setting
            kwargs["attn_implementation"] = self.attn_implementation
        if self.name_or_path is None:
            return AutoModel.from_config(self.config, **kwargs)
        return load_pretrained(AutoModel, self.name_or_path, **kwargs)
