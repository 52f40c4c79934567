"""``torch.optim.SGD`` / ``Adam`` update rules on one flat buffer holding k models.

SGD: momentum (dampening 0), optional Nesterov, L2 weight decay added to the gradient;
Adam: L2 weight decay added to the gradient, bias-corrected moments, ``eps`` outside the
square root; constant learning rate. Exactly the rules of ``torch.optim`` (tested per seed).
"""

from __future__ import annotations

import math

from torch import Tensor
import torch

__all__ = ["FlatOptimizer"]


class FlatOptimizer:
    """torch.optim.SGD / Adam update rules on one flat parameter buffer (in place)."""

    def __init__(self, cfg, flat: Tensor):
        self.cfg = cfg
        self.t = 0
        self.buf = None
        self.m = self.v = None
        if cfg.optimizer == "sgd" and cfg.momentum > 0:
            self.buf = torch.zeros_like(flat)
        if cfg.optimizer == "adam":
            self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)

    def state_tensors(self) -> list[Tensor]:
        return [t for t in (self.buf, self.m, self.v) if t is not None]

    def step(self, w: Tensor, g: Tensor) -> None:
        c = self.cfg
        self.t += 1
        if c.weight_decay:
            g.add_(w, alpha=c.weight_decay)
        if c.optimizer == "sgd":
            if self.buf is not None:
                if self.t == 1:
                    self.buf.copy_(g)
                else:
                    self.buf.mul_(c.momentum).add_(g)
                if c.nesterov:
                    g.add_(self.buf, alpha=c.momentum)
                else:
                    g = self.buf
            w.add_(g, alpha=-c.lr)
        else:
            b1, b2 = c.betas
            self.m.lerp_(g, 1 - b1)
            self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1 = 1 - b1 ** self.t
            bc2_sqrt = math.sqrt(1 - b2 ** self.t)
            denom = (self.v.sqrt() / bc2_sqrt).add_(c.eps)
            w.addcdiv_(self.m, denom, value=-c.lr / bc1)
