"""Masked autoencoder for images (He et al., 2022), the ViT-MAE of ``transformers``: the ViT encoder
sees a random ``1 - mask_ratio`` of the image's patches; a small transformer decoder fills in the
pixels of the hidden ones, and the loss is their mean squared error (per-patch normalised pixels with
``norm_pix_loss``).

The backbone must be a ViT (``model=vit_tiny`` or a ViT/ViT-MAE directory): its config gives the
encoder, ``decoder_*`` settings the decoder. The MAE encoder has exactly the parameters of a ViT
without pooler, so the export is a plain ``ViTModel`` (config and weights) that any ViT downstream
model loads whole; the decoder stays behind. The online probe and kNN monitor read the CLS feature
of the whole, unmasked image.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from headstart.config.schema import MaskedAutoencoderConfig
from headstart.errors import ConfigError
from headstart.objectives.image_pretraining import ImagePretrainingObjective

#: The config fields a ViT and a ViT-MAE encoder share.
_ENCODER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                   "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
                   "image_size", "patch_size", "num_channels", "qkv_bias")
_VIT_TYPES = ("vit", "vit_mae")


class MaskedAutoencoder(ImagePretrainingObjective):
    def __init__(self, backbone, optimizer, scheduler=None,
                 mask_ratio: float = MaskedAutoencoderConfig.mask_ratio,
                 norm_pix_loss: bool = MaskedAutoencoderConfig.norm_pix_loss,
                 decoder_hidden_size: int = MaskedAutoencoderConfig.decoder_hidden_size,
                 decoder_num_hidden_layers: int = MaskedAutoencoderConfig.decoder_num_hidden_layers,
                 decoder_num_attention_heads: int = MaskedAutoencoderConfig.decoder_num_attention_heads,
                 decoder_intermediate_size: int = MaskedAutoencoderConfig.decoder_intermediate_size,
                 **kwargs) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"task.mask_ratio={mask_ratio} must lie strictly between 0 and 1 (MAE uses 0.75): the "
                              "share of patches the encoder does not see.")
        # build_network reads the decoder settings from self.hparams, which Lightning fills first.
        super().__init__(backbone, optimizer, scheduler, **kwargs)

    def build_network(self, backbone) -> torch.nn.Module:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        encoder = backbone.config
        if encoder.model_type not in _VIT_TYPES:
            raise ConfigError(
                f"task=masked_autoencoder needs a ViT backbone, but the model is a {encoder.model_type!r}. Use "
                "model=vit_tiny (or a ViT directory with model=vision_hf_dir), or another objective for this backbone."
            )
        hp = self.hparams
        config = ViTMAEConfig(
            **{name: getattr(encoder, name) for name in _ENCODER_FIELDS if hasattr(encoder, name)},
            mask_ratio=hp.mask_ratio, norm_pix_loss=hp.norm_pix_loss, decoder_hidden_size=hp.decoder_hidden_size,
            decoder_num_hidden_layers=hp.decoder_num_hidden_layers,
            decoder_num_attention_heads=hp.decoder_num_attention_heads,
            decoder_intermediate_size=hp.decoder_intermediate_size,
        )
        config._attn_implementation = backbone.attn_implementation
        net = ViTMAEForPreTraining(config)
        _init_position_embeddings(net)
        if backbone.name_or_path is not None:  # continue from a pretrained ViT: same parameter names
            net.vit.load_state_dict(backbone.build("base").state_dict())
        return net

    @contextmanager
    def _unmasked(self):
        """The encoder sees every patch (mask ratio 0) inside the block."""
        config = self.net.vit.embeddings.config
        ratio, config.mask_ratio = config.mask_ratio, 0.0
        try:
            yield
        finally:
            config.mask_ratio = ratio

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        num_patches = self.net.vit.embeddings.patch_embeddings.num_patches
        # Patches in their own order (no shuffle), all of them kept.
        order = torch.arange(num_patches, device=pixel_values.device, dtype=torch.float).expand(pixel_values.size(0), -1)
        with self._unmasked():
            return self.image_features(self.net.vit(pixel_values=pixel_values, noise=order))

    def objective_step(self, pixel_values: torch.Tensor):
        out = self.net(pixel_values=pixel_values, output_hidden_states=True)
        # The CLS feature of the visible patches (the encoder's output is its last hidden state, normalised).
        features = self.net.vit.layernorm(out.hidden_states[-1])[:, 0]
        return out.loss, {}, features

    def exported_network(self) -> torch.nn.Module:
        from transformers import ViTConfig, ViTModel

        config = ViTConfig(**{name: getattr(self.net.config, name) for name in _ENCODER_FIELDS})
        vit = ViTModel(config, add_pooling_layer=False)
        vit.load_state_dict(self.net.vit.state_dict())
        return vit


def _init_position_embeddings(net) -> None:
    """Give the encoder and decoder their fixed 2-D sin-cos position embeddings. transformers 5 leaves
    both at zero in a model built from a config (the decoder's weight init zeroes its table; the
    encoder's init is skipped once the patch projection is initialised), and without positions the
    decoder cannot tell the hidden patches apart: the loss stays at the pixels' variance."""
    embeddings = net.vit.embeddings
    if embeddings.position_embeddings.any() and net.decoder.decoder_pos_embed.any():
        return
    embeddings.patch_embeddings.projection._is_hf_initialized = False  # let MAE's own init run
    embeddings.initialize_weights()
    net.decoder.initialize_weights(embeddings.patch_embeddings.num_patches)
