"""The convolutional family of the paper's App I.3 / Table 5 (docs/models.md).

``ConvNet(channels=(32, 64))``: per stage a 3x3 convolution (padding 1) to that many
channels, ReLU, and a 2x2 max-pool between stages; then global average pooling and a
linear read-out. Xavier (Glorot) uniform initialization of every weight, zero bias, ReLU,
as App I.3 states. ``bias=False`` (default) reproduces Table 5's parameter counts exactly:
on CIFAR-10 (3 input channels, 10 classes) channels (32), (32, 64), (32, 64, 128) and
(64, 128, 256) give 1,184, 19,936, 94,304 and 372,928 parameters.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .lowering import lower, register_lowering

__all__ = ["ConvNet", "xavier_zero_bias"]


def xavier_zero_bias(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Conv2d / Linear in ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvNet(nn.Sequential):
    """Table 5's CNN: ``[Conv3x3 -> (BatchNorm2d) -> ReLU -> (Dropout)]`` per entry of
    ``channels`` with ``MaxPool2d(2)`` between stages, then ``AdaptiveAvgPool2d(1)``,
    ``Flatten``, ``Linear(channels[-1], n_classes)``."""

    def __init__(self, channels: Sequence[int] = (32, 64), in_channels: int = 1, n_classes: int = 10,
                 bias: bool = False, batchnorm: bool = False, dropout: float = 0.0):
        channels = _check_channels(channels)
        layers: list[nn.Module] = []
        c_in = int(in_channels)
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=bias))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, int(n_classes), bias=bias)]
        super().__init__(*layers)
        xavier_zero_bias(self)


def _check_channels(channels) -> tuple[int, ...]:
    from .._validation import check_int

    if isinstance(channels, int):
        channels = (channels,)
    out = tuple(check_int(f"channels[{i}]", c, 1) for i, c in enumerate(channels))
    if not out:
        raise ValueError("channels must name at least one stage")
    return out


register_lowering(ConvNet)(lambda m, prefix: lower(nn.Sequential(*m), prefix))
