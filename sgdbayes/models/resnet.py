"""The residual family of the paper's App I.3 / Table 6 (docs/models.md).

``ResNet(channels=(16, 32), blocks=1)``: a 3x3 stem convolution to ``channels[0]``, then
per stage ``blocks`` basic residual blocks (two 3x3 convolutions, ReLU between, identity
shortcut; the first block of every later stage halves the resolution with stride 2 and
takes a 1x1 projection shortcut), global average pooling and a linear read-out. Xavier
uniform weights, zero bias, ReLU (App I.3); BatchNorm optional. The paper does not state
its block layout and its parameter counts do not follow from one simple layout, so
Table 6's counts are not reproduced (stated in docs/models.md).
"""

from __future__ import annotations

from typing import Sequence

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
    """Stem, ``len(channels)`` stages of ``blocks`` :class:`BasicBlock` s, pooling, read-out."""

    def __init__(self, channels: Sequence[int] = (16, 32), blocks: int = 1, in_channels: int = 1,
                 n_classes: int = 10, bias: bool = False, batchnorm: bool = False):
        from .._validation import check_int

        channels = _check_channels(channels)
        blocks = check_int("blocks", blocks, 1)
        layers: list[nn.Module] = [_conv(int(in_channels), channels[0], 3, 1, bias), _norm(channels[0], batchnorm),
                                   nn.ReLU()]
        c_in = channels[0]
        for i, c in enumerate(channels):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, c, stride, bias, batchnorm))
                c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, int(n_classes), bias=bias)]
        super().__init__(*layers)
        xavier_zero_bias(self)


register_lowering(ResNet)(lambda m, prefix: lower(nn.Sequential(*m), prefix))
