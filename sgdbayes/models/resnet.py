"""The residual family of the paper's App I.3 / Table 6 (docs/models.md).

``ResNet(channels=(32, 64), blocks=2)``: a 3x3 stem convolution (with bias) to
``channels[0]`` and ReLU; then for every later entry c of ``channels`` a 2x2 max-pool, a
3x3 convolution to c channels ("the number of channels in between residual blocks",
App I.3), ReLU, and ``blocks`` basic residual blocks at c channels (two 3x3 convolutions,
ReLU between, identity shortcut); global average pooling and a linear read-out. Xavier
uniform weights, zero bias, ReLU (App I.3); BatchNorm optional.

The paper does not state the layout; this one is read off Table 6's parameter counts,
which it reproduces exactly on CIFAR-10 (3 input channels, 10 classes) with ``blocks=2``
and ``bias=False``: channels (32), (16, 32, 64), (32, 64), (32, 64, 128) and
(16, 32, 64, 128) give 1,216, 208,448, 167,424, 831,616 and 872,640 parameters (the stem's
bias is the 32 that separates Table 6's first row from Table 5's 1,184; with BatchNorm the
stem has no bias, which the norm would cancel). Where the
resolution halves (max-pool before each later stage, as Table 5's CNN) is our choice: the
counts do not depend on it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .cnn import _check_channels, xavier_zero_bias
from .lowering import lower, register_lowering

__all__ = ["ResNet", "BasicBlock"]


def _conv(c_in: int, c_out: int, k: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)


def _norm(c: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(n2(conv2(relu(n1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bias: bool = False, batchnorm: bool = False):
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, stride, bias)
        self.n1 = _norm(c_out, batchnorm)
        self.conv2 = _conv(c_out, c_out, 3, 1, bias)
        self.n2 = _norm(c_out, batchnorm)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, stride, bias), _norm(c_out, batchnorm))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        h = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(h)) + self.shortcut(x))


@register_lowering(BasicBlock)
def _lower_block(m: BasicBlock, prefix: str):
    c1, n1 = lower(m.conv1, prefix + "conv1."), lower(m.n1, prefix + "n1.")
    c2, n2 = lower(m.conv2, prefix + "conv2."), lower(m.n2, prefix + "n2.")
    sc = lower(m.shortcut, prefix + "shortcut.")

    def run(ctx, x):
        h = torch.relu(n1(ctx, c1(ctx, x)))
        return torch.relu(n2(ctx, c2(ctx, h)) + sc(ctx, x))
    return run


class ResNet(nn.Sequential):
    """Stem, then per later stage max-pool, a 3x3 convolution to its channels and ``blocks``
    :class:`BasicBlock` s; pooling, read-out (see the module docstring)."""

    def __init__(self, channels: Sequence[int] = (32, 64), blocks: int = 2, in_channels: int = 1,
                 n_classes: int = 10, bias: bool = False, batchnorm: bool = False,
                 stem_bias: Optional[bool] = None):
        from .._validation import check_int

        channels = _check_channels(channels)
        blocks = check_int("blocks", blocks, 0)
        if stem_bias is None:   # Table 6's stem bias; before a BatchNorm a bias is redundant (its gradient is 0)
            stem_bias = not batchnorm
        layers: list[nn.Module] = [_conv(int(in_channels), channels[0], 3, 1, bool(stem_bias)),
                                   _norm(channels[0], batchnorm), nn.ReLU()]
        for c_in, c in zip(channels[:-1], channels[1:]):
            layers += [nn.MaxPool2d(2), _conv(c_in, c, 3, 1, bias), _norm(c, batchnorm), nn.ReLU()]
            layers += [BasicBlock(c, c, 1, bias, batchnorm) for _ in range(blocks)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], int(n_classes), bias=bias)]
        super().__init__(*layers)
        xavier_zero_bias(self)


register_lowering(ResNet)(lambda m, prefix: lower(nn.Sequential(*m), prefix))
