"""The decoder of the image autoencoders: one feature vector -> an image of the data's size and
channels (in the normalised pixel space the model reads)."""

from __future__ import annotations

from torch import nn

from headstart.errors import ConfigError


class ImageDecoder(nn.Sequential):
    """Linear -> (widths[0], s, s) map, then one transposed-conv stage per entry of ``widths`` that
    doubles the size (conv-transpose 4x4 stride 2 -> batch norm -> ReLU), then a 3x3 conv to the image's
    channels. ``s = image_size / 2**len(widths)``, so the image size must divide by that power of 2."""

    def __init__(self, in_features: int, image_size: int, num_channels: int, widths: list[int]) -> None:
        if not widths or min(widths) < 1:
            raise ConfigError(f"task.decoder_widths={list(widths)} must list one or more positive channel counts.")
        factor = 2 ** len(widths)
        if image_size % factor:
            raise ConfigError(
                f"data.image_size={image_size} does not divide by 2**len(task.decoder_widths)={factor}: the decoder "
                f"doubles the size {len(widths)} times. Use an image size that is a multiple of {factor}, or fewer "
                "decoder stages."
            )
        base = image_size // factor
        layers: list[nn.Module] = [nn.Linear(in_features, widths[0] * base * base),
                                   nn.Unflatten(1, (widths[0], base, base)), nn.ReLU(inplace=True)]
        channels = widths[0]
        for width in widths:
            layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, num_channels, 3, padding=1))
        super().__init__(*layers)
