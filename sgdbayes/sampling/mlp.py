"""The MLP's potential and in-place SGLD stepper: the fast path behind the potential protocol.

:class:`MLPPotential` is the mean cross-entropy of stacked :class:`sgdbayes.models.MLPSpec`
models with a hand-written gradient (:mod:`sgdbayes._fused_mlp`); its stepper advances the
chains in the fused kernel's own blocked layout, with the update of
:func:`sgdbayes.sampling.integrator.langevin_step` (torch path) or its compiled twin (C kernel).
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor

from .._fused_mlp import AugmentedLayout, FusedMLP, augment_inputs
from .integrator import LangevinCoefficients, langevin_step
from .potentials import BasePotential

__all__ = ["MLPPotential"]


class MLPPotential(BasePotential):
    """Mean cross-entropy of stacked :class:`sgdbayes.models.MLPSpec` models on
    a training set ``x [n, in]``, ``y [n]``; ``idx [M, B]`` picks one minibatch
    per row (``None`` = full set, shared by all rows). With batch norm the model is evaluated
    in train mode (batch statistics of each minibatch, running statistics untouched)."""

    shardable = True

    def __init__(self, spec, x: Tensor, y: Tensor):
        if x.dim() > 2 and x.shape[0] > 0:
            x = spec.flat_inputs(x)
        if x.dim() != 2 or x.shape[1] != spec.widths[0]:
            raise ValueError(f"x must be [n, {spec.widths[0]}], got {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be [n] with n = {x.shape[0]}, got {tuple(y.shape)}")
        self.spec = spec
        self.x = x
        self.y = y
        self.n = int(x.shape[0])
        self.n_params = spec.n_params
        self.mode = "train (batch statistics)" if spec.batchnorm else "n/a (no batch norm or dropout)"
        self._ws: dict = {}
        self._ws_lock = threading.Lock()

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        if idx is None:
            return self.spec.loss(w, self.x, self.y)
        return self.spec.loss(w, self.x[idx], self.y[idx])

    @torch.no_grad()  # explicit gradients (the batch-norm fallback re-enables autograd itself)
    def loss_and_grad(self, w: Tensor, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-row mean cross-entropy ``[M]`` and its gradient ``[M, P]``.

        Plain ReLU MLPs use the hand-written forward/backward of
        :class:`sgdbayes._fused_mlp.FusedMLP` (dz = (softmax(z) − onehot(y))/B,
        dW_l = dh_lᵀ a_{l−1}, db_l = Σ_b dh_l, dh_{l−1} = (dh_l W_l) ⊙ 1[h_{l−1} > 0]);
        batch norm falls back to autograd. Equality with autograd is tested.
        Thread-safe: each calling thread gets its own workspace.
        """
        if self.spec.batchnorm:
            wg = w.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self(wg, idx)
                (g,) = torch.autograd.grad(loss.sum(), wg)
            return loss.detach(), g
        M = w.shape[0]
        ws = self._workspace(M, self.n if idx is None else idx.shape[1], w.device, w.dtype)
        ws.layout.unpack(w, ws.P)
        xa, yb = ws.minibatch(idx)
        loss, _ = ws.fused.loss_and_grad(ws.P, ws.G, xa, yb, accuracy=False)
        return loss, ws.layout.pack(ws.G)

    def stepper(self, coefficients: LangevinCoefficients, w0: Tensor, centers: Tensor) -> Optional["_MLPStepper"]:
        """In-place SGLD on the fused kernel's own parameter layout (used by the chain runner);
        None with batch norm (the functional kernel is used then)."""
        return None if self.spec.batchnorm else _MLPStepper(self, coefficients, w0, centers)

    def _workspace(self, M: int, B: int, device, dtype) -> "_MLPWorkspace":
        key = (threading.get_ident(), M, B, device, dtype)
        with self._ws_lock:
            ws = self._ws.get(key)
            if ws is None:
                if len(self._ws) >= 8:  # shapes change rarely; don't grow without bound
                    self._ws.clear()
                ws = self._ws[key] = _MLPWorkspace(self, M, B, device, dtype)
        return ws


class _MLPWorkspace:
    """Preallocated buffers of :meth:`MLPPotential.loss_and_grad` for one (thread, M, B)."""

    def __init__(self, pot: MLPPotential, M: int, B: int, device, dtype):
        self.layout = AugmentedLayout(pot.spec)
        self.P = self.layout.views(torch.empty(M * pot.n_params, device=device, dtype=dtype), M)
        self.G = self.layout.views(torch.empty(M * pot.n_params, device=device, dtype=dtype), M)
        self.x_aug = augment_inputs(pot.x.to(device=device, dtype=dtype))
        self.y = pot.y.to(device)
        self.xa = torch.empty(M, B, self.x_aug.shape[1], device=device, dtype=dtype)
        self.yb = torch.empty(M, B, device=device, dtype=self.y.dtype)
        self.fused = FusedMLP(pot.spec, M, B, device, dtype)

    def minibatch(self, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Augmented inputs ``[M, B, d+1]`` and labels ``[M, B]`` of rows' minibatches
        ``idx [M, B]`` (gathered into the fixed buffers), or of the full set for ``None``
        (every row shares it, no copy)."""
        M = self.xa.shape[0]
        if idx is None:
            return self.x_aug.unsqueeze(0).expand(M, -1, -1), self.y.unsqueeze(0).expand(M, -1)
        flat = idx.reshape(-1)
        torch.index_select(self.x_aug, 0, flat, out=self.xa.view(flat.numel(), -1))
        torch.index_select(self.y, 0, flat, out=self.yb.view(flat.numel()))
        return self.xa, self.yb


class _MLPStepper:
    """M chains of SGLD on :class:`MLPPotential`, held in the blocked ``[W | b]`` layout of
    :class:`sgdbayes._fused_mlp.AugmentedLayout` and updated in place: no conversion of
    weights and gradients to and from rows each step. The update is
    :func:`~sgdbayes.sampling.integrator.langevin_step` on the blocked buffers (the row-layout
    noise copied into the same layout, entry ``j`` of a chain's noise to its parameter ``j``),
    so it gives the numbers of the functional kernel. With the C kernel gradient and update
    happen model by model in one call (:meth:`sgdbayes._fused_mlp.FusedMLP.sgld_step`);
    otherwise through torch on double-buffered flat tensors.
    """

    def __init__(self, pot: MLPPotential, coef: LangevinCoefficients, w0: Tensor, centers: Tensor):
        M = w0.shape[0]
        self.pot, self.M, self.coef = pot, M, coef
        self.layout = lay = AugmentedLayout(pot.spec)
        self.device, self.dtype = w0.device, w0.dtype
        n = M * pot.n_params
        self._flat = [torch.empty(n, device=self.device, dtype=self.dtype)]  # [current, next] (torch path)
        self._views = [lay.views(self._flat[0], M)]
        self.cur = 0
        lay.unpack(w0.detach(), self._views[0])
        self.center = torch.empty(n, device=self.device, dtype=self.dtype)
        self.center_v = lay.views(self.center, M)
        lay.unpack(centers.detach(), self.center_v)
        self._B = None

    def rows(self) -> Tensor:
        return self.layout.pack(self._views[self.cur])

    def step(self, batch, noise: Tensor) -> Tensor:
        pot, M, c = self.pot, self.M, self.coef
        P = self._views[self.cur]
        B = pot.n if batch is None else batch.shape[1]
        if self._B != B:
            self._B = B
            self.ws = pot._workspace(M, B, self.device, self.dtype)
        ws = self.ws
        xa, yb = ws.minibatch(batch)
        if ws.fused.c is not None:  # the C kernel: gradient and update model by model, in place
            return ws.fused.sgld_step(P, self.center_v, xa, yb, noise, c.a_grad, c.a_wd, c.a_loc, c.noise_scale)
        if len(self._flat) == 1:  # torch path: next-weights, gradient, noise and scratch buffers
            self._flat.append(torch.empty_like(self.center))
            self._views.append(self.layout.views(self._flat[1], M))
            self.gflat = torch.empty_like(self.center)
            self.gv = self.layout.views(self.gflat, M)
            self.nflat = torch.empty_like(self.center)
            self.nv = self.layout.views(self.nflat, M)
            self.tmp = torch.empty_like(self.center) if c.a_loc != 0.0 else None
        loss, _ = ws.fused.loss_and_grad(P, self.gv, xa, yb, accuracy=False)
        self.layout.unpack(noise, self.nv)
        langevin_step(self._flat[self.cur], self.gflat, self.center, self.nflat, c,
                      out=self._flat[1 - self.cur], tmp=self.tmp)
        self.cur = 1 - self.cur
        return loss

    def finite_rows(self) -> Tensor:
        ok = None
        for v in self._views[self.cur]:
            f = torch.isfinite(v).view(self.M, -1).all(dim=1)
            ok = f if ok is None else ok & f
        return ok

    def reset(self, rows: Tensor) -> None:
        idx = torch.nonzero(rows).flatten()
        for v, cv in zip(self._views[self.cur], self.center_v):
            v.index_copy_(0, idx, cv.index_select(0, idx))
