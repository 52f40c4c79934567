"""Known-λ models of devinterp 1.3.2's accuracy tests, as sgdbayes potentials (batched rows).

* Normal crossing (devinterp ``tests/slt/sampler_accuracy_test.py``): ``ŷ = x · w1^p1 · w2^p2``,
  x ~ N(0, 2²), y = 0.25 · N(0, 1), n = 1000, MSE; w* = 0. λ = 1 / (2 max(p)) (0.5, 0.25, 1/6).
  devinterp's tolerance: the truth lies within λ̂ ± 3.5 · (chain std).
* Reduced-rank regression (devinterp ``tests/slt/rrr_test.py``, Aoyagi & Watanabe 2005):
  x ~ N(0, I_m), y ~ N(0, I_n) independent (the true map has rank 0), ``ŷ = B A x`` with A
  [h, m], B [n, h], n = 1000, MSE over all outputs; w* the least-squares fit of rank h (closed
  form: the ordinary fit's fitted values truncated to rank h, here instead of devinterp's 5000
  Adam steps). λ by Aoyagi's cases; devinterp's tolerance: relative 0.4.
"""
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from sgdbayes.sampling.potentials import BasePotential


class NormalCrossing(BasePotential):
    shardable = True

    def __init__(self, powers=(0, 1), n: int = 1000, seed: int = 42):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, generator=g, dtype=torch.float64) * 2.0
        self.y = 0.25 * torch.randn(n, generator=g, dtype=torch.float64)
        self.p = torch.tensor(powers, dtype=torch.float64)
        self.n, self.n_params = n, 2
        self.true_llc = 1.0 / (2.0 * max(powers))

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        f = torch.prod(w ** self.p, dim=1)                  # [M]
        x = self.x if idx is None else self.x[idx]
        y = self.y if idx is None else self.y[idx]
        return (f[:, None] * x - y).square().mean(-1)

    def w_star(self) -> Tensor:
        return torch.zeros(1, 2, dtype=torch.float64)


def rrr_true_llc(m: int, h: int, n: int) -> float:
    if m + h < n:
        return m * h / 2
    if n + h < m:
        return h * n / 2
    if m + n < h:
        return m * n / 2
    odd = (m + h + n) % 2
    return (odd + 2 * m * n + 2 * h * n + 2 * m * h - n ** 2 - m ** 2 - h ** 2) / 8


class ReducedRankRegression(BasePotential):
    shardable = True

    def __init__(self, m: int = 5, h: int = 3, n_out: int = 5, n: int = 1000, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, m, generator=g, dtype=torch.float64)
        self.y = torch.randn(n, n_out, generator=g, dtype=torch.float64)
        self.m, self.h, self.k = m, h, n_out
        self.n, self.n_params = n, m * h + h * n_out
        self.true_llc = rrr_true_llc(m, h, n_out)

    def _ab(self, w: Tensor):
        M = w.shape[0]
        a = w[:, : self.m * self.h].reshape(M, self.h, self.m)
        b = w[:, self.m * self.h:].reshape(M, self.k, self.h)
        return a, b

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        a, b = self._ab(w)
        x = self.x if idx is None else self.x[idx]          # [N, m] or [M, B, m]
        y = self.y if idx is None else self.y[idx]
        pred = torch.matmul(x, (b @ a).transpose(1, 2))     # [M, N, k]
        return (pred - y).square().mean(dim=(-1, -2))

    def w_star(self) -> Tensor:
        """The rank-h least-squares fit, split as A = Σ^½ Vᵀ, B = U Σ^½ (balanced)."""
        coef = torch.linalg.lstsq(self.x, self.y).solution            # [m, k]: y ≈ x coef
        fitted = self.x @ coef
        _, _, vt = torch.linalg.svd(fitted, full_matrices=False)
        proj = vt[: self.h].T @ vt[: self.h]                         # rank-h projection of outputs
        c = (coef @ proj).T                                          # [k, m] = B A
        u, s, vt2 = torch.linalg.svd(c, full_matrices=False)
        r = s[: self.h].sqrt()
        a = r[:, None] * vt2[: self.h]                               # [h, m]
        b = u[:, : self.h] * r[None, :]                              # [k, h]
        return torch.cat([a.reshape(-1), b.reshape(-1)])[None, :]
