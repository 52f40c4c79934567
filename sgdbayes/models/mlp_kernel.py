"""The MLP's training kernel behind the model protocol: the hand-written fused
forward/backward of :mod:`sgdbayes._fused_mlp` (C or numpy/torch) for plain MLPs,
autograd on the stacked forward for MLPs with batch norm."""

from __future__ import annotations

import torch
from torch import Tensor

from .._fused_mlp import AugmentedLayout, FusedMLP, augment_inputs
from .layout import EntryLayout

__all__ = ["MLPKernel"]


class MLPKernel:
    """:class:`sgdbayes.models.protocol.ModelKernel` of an :class:`~sgdbayes.models.MLPSpec`.

    Plain MLPs: blocks ``[k, out, in + 1]`` (:class:`AugmentedLayout`) and inputs with a
    ones column (the bias enters the products). With batch norm: one block per tensor
    (:class:`EntryLayout`), loss ``-mean_b log softmax(z)_{y_b}`` differentiated by autograd,
    running statistics ``state["bn"]`` updated in place."""

    def __init__(self, spec, k: int, batch_size: int, device, dtype):
        self.spec = spec
        if spec.batchnorm:
            self.layout = EntryLayout([shape for _, shape, _ in spec.layout])
            self.fused = None
        else:
            self.layout = AugmentedLayout(spec)
            self.fused = FusedMLP(spec, k, batch_size, device, dtype)

    def prepare(self, x: Tensor) -> Tensor:
        x = self.spec.flat_inputs(x)
        return x if self.fused is None else augment_inputs(x)

    def loss_and_grad(self, P, G, xb, yb, state, rng=None) -> tuple[Tensor, Tensor]:
        if self.fused is not None:
            return self.fused.loss_and_grad(P, G, xb, yb)
        w = self.layout.pack(P).requires_grad_(True)
        with torch.enable_grad():
            z = self.spec.forward(w, xb, bn_state=state["bn"], train=True)
            logp = torch.log_softmax(z, dim=2)
            loss = -logp.gather(2, yb.unsqueeze(2)).squeeze(2).mean(1)
            (g,) = torch.autograd.grad(loss.sum(), w)
        self.layout.unpack(g, G)
        return loss.detach(), (z.detach().argmax(2) == yb).sum(1)
