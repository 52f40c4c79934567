"""The Langevin update, written once (overdamped Langevin / SGLD integrator).

For stacked chains ``w [M, P]`` with gradient ``g`` of the minibatch mean loss, centre
``w*`` and standard normal noise ``ξ`` (devinterp 1.x ``SGLD``, paper eq 25)::

    w_new = w − (ε/2) [ nβ g + ω w + γ (w − w*) ] + sqrt(ε) σ ξ

evaluated term by term in this order (one pass per term). Every kernel uses this function:
the functional kernel of :mod:`sgdbayes.sampling.sgld` (``out=None``: a new tensor) and the
in-place MLP stepper (``out=``/``tmp=`` preallocated buffers, the same formula). The compiled
C kernel of the MLP (``sgdbayes/_ckernels.c``) evaluates the same expression model by model;
its equality with this one is tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["LangevinCoefficients", "langevin_step"]


@dataclass(frozen=True)
class LangevinCoefficients:
    """The update's coefficients: ``a_grad = −ε nβ / 2``, ``a_wd = −ε ω / 2``,
    ``a_loc = −ε γ / 2``, ``noise_scale = sqrt(ε) σ``."""

    a_grad: float
    a_wd: float
    a_loc: float
    noise_scale: float

    @classmethod
    def of(cls, step_size: float, nbeta: float, weight_decay: float = 0.0, localization: float = 0.0,
           noise_level: float = 1.0) -> "LangevinCoefficients":
        eps = float(step_size)
        return cls(a_grad=-0.5 * eps * nbeta, a_wd=-0.5 * eps * weight_decay, a_loc=-0.5 * eps * localization,
                   noise_scale=math.sqrt(eps) * noise_level)


@torch.no_grad()
def langevin_step(w: Tensor, grad: Tensor, center: Tensor, noise: Tensor, c: LangevinCoefficients, *,
                  out: Optional[Tensor] = None, tmp: Optional[Tensor] = None) -> Tensor:
    """``w − (ε/2)[nβ g + ω w + γ (w − w*)] + sqrt(ε) σ ξ`` (module docstring). All arguments
    share one layout (rows or blocks); ``out`` receives the result (a new tensor when None),
    ``tmp`` is scratch for ``w − w*``."""
    w_new = torch.add(w, grad, alpha=c.a_grad) if out is None else torch.add(w, grad, alpha=c.a_grad, out=out)
    if c.a_wd != 0.0:
        w_new.add_(w, alpha=c.a_wd)
    if c.a_loc != 0.0:
        w_new.add_(w - center if tmp is None else torch.sub(w, center, out=tmp), alpha=c.a_loc)
    w_new.add_(noise, alpha=c.noise_scale)
    return w_new
