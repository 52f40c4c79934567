"""Stacked ("batched") ReLU MLPs: K independent models held as one [K, P] tensor.

The central object is :class:`MLPSpec`, an immutable description of an
architecture ``in -> h1 -> ... -> out`` (ReLU between layers, optional
BatchNorm1d after each hidden Linear, before its ReLU). Weights of K models live
in one tensor ``w`` of shape ``[K, P]``; row ``k`` is model ``k``'s flat
parameter vector.

Flat layout (per model row). For each Linear layer in order: weight
``[out, in]`` row-major, then bias ``[out]``; for a hidden layer with batch norm
that is followed by the BatchNorm1d weight ``[out]`` and bias ``[out]``. This is
the order of ``module.parameters()`` of :meth:`MLPSpec.to_module`, hence
``parameters_to_vector(spec.to_module(w[k])) == w[k]``.

Independence of models. Every model's loss depends only on its own row of
``w``, so the gradient of ``loss(w, x, y).sum()`` w.r.t. ``w`` has, in row k,
exactly the gradient of model k's own mean loss. Summing (not averaging) over
models is what keeps each model's gradient unscaled.

Batch norm. Running statistics are non-trainable state, kept outside ``w`` in a
tensor ``bn_state`` of shape ``[K, S]``. Per BN layer (in order) it holds
``running_mean [width]`` then ``running_var [width]``; ``S = 2 * sum(hidden
widths)``. :meth:`MLPSpec.init_bn_state` gives PyTorch's initial values
(mean 0, var 1). In training mode the forward normalizes with the batch
statistics (biased variance) and, when ``bn_state`` is given, updates it in
place exactly like ``torch.nn.BatchNorm1d`` (momentum 0.1, unbiased variance
for the running estimate). In eval mode it normalizes with ``bn_state``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

__all__ = ["MLPSpec", "BN_EPS", "BN_MOMENTUM"]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class MLPSpec:
    """A ReLU MLP architecture ``widths = (in, h1, ..., out)``.

    Parameters
    ----------
    widths : tuple of int
        Layer widths including input and output, at least two entries, all > 0.
    batchnorm : bool
        Insert ``BatchNorm1d`` after every hidden ``Linear`` (before ReLU).
    """

    widths: tuple[int, ...]
    batchnorm: bool = False

    #: model-protocol declarations (:class:`sgdbayes.models.protocol.ModelFamily`)
    kind: ClassVar[str] = "mlp"
    stochastic: ClassVar[bool] = False
    backend: ClassVar[str] = "fused"

    def __post_init__(self):
        widths = tuple(self.widths)
        if len(widths) < 2:
            raise ValueError(
                f"widths must have at least 2 entries (in, ..., out), got {widths!r}")
        clean = []
        for i, wd in enumerate(widths):
            try:
                v = operator.index(wd)
            except TypeError:
                v = None
            if v is None or isinstance(wd, bool) or v <= 0:
                raise ValueError(
                    f"width {i} of {widths!r} is {wd!r}; every width must be an integer > 0")
            clean.append(v)
        object.__setattr__(self, "widths", tuple(clean))

    # ------------------------------------------------------------------ layout
    @property
    def n_layers(self) -> int:
        """Number of Linear layers."""
        return len(self.widths) - 1

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...], int]]:
        """``[(name, shape, offset), ...]`` of every trainable tensor in a row of ``w``."""
        out, off = [], 0
        for l in range(self.n_layers):
            fi, fo = self.widths[l], self.widths[l + 1]
            out.append((f"linear{l}.weight", (fo, fi), off)); off += fo * fi
            out.append((f"linear{l}.bias", (fo,), off)); off += fo
            if self.batchnorm and l < self.n_layers - 1:
                out.append((f"bn{l}.weight", (fo,), off)); off += fo
                out.append((f"bn{l}.bias", (fo,), off)); off += fo
        return out

    @property
    def n_params(self) -> int:
        """Number of trainable parameters P of one model."""
        return sum(_numel(s) for _, s, _ in self.layout)

    @property
    def bn_state_size(self) -> int:
        """S, the number of batch-norm running-stat entries per model (0 without BN)."""
        return 2 * sum(self.widths[1:-1]) if self.batchnorm else 0

    def views(self, w: Tensor) -> dict[str, Tensor]:
        """Named views ``[K, *shape]`` into ``w [K, P]`` (no copy)."""
        self._check_w(w)
        K = w.shape[0]
        return {name: w[:, off:off + _numel(shape)].view(K, *shape) if w.is_contiguous()
                else w[:, off:off + _numel(shape)].reshape(K, *shape)
                for name, shape, off in self.layout}

    # ------------------------------------------------------------------ init
    def init(self, seeds: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
        """PyTorch default initialization, one model per seed: returns ``[K, P]``.

        Row i equals ``parameters_to_vector(m)`` of the module ``m`` that
        ``to_module``'s architecture builds right after ``torch.manual_seed(seeds[i])``.
        The global RNG state is restored afterwards (``torch.random.fork_rng``).
        """
        seeds = [int(s) for s in seeds]
        if len(seeds) == 0:
            raise ValueError("init needs at least one seed (K > 0)")
        rows = []
        with torch.random.fork_rng(devices=[]):
            for s in seeds:
                # the CPU generator is all nn.Linear's init uses; torch.manual_seed would also
                # seed (lazily, with a stack capture each) every accelerator backend: ~1 ms/seed
                torch.default_generator.manual_seed(s)
                m = self._build_module()
                rows.append(nn.utils.parameters_to_vector(m.parameters()).detach())
        return torch.stack(rows).to(device=device, dtype=dtype)

    def init_bn_state(self, K: int, device=None, dtype=torch.float32) -> Tensor | None:
        """Initial running stats ``[K, S]`` (means 0, variances 1); ``None`` without BN."""
        if not self.batchnorm:
            return None
        parts = []
        for wd in self.widths[1:-1]:
            parts += [torch.zeros(K, wd, device=device, dtype=dtype),
                      torch.ones(K, wd, device=device, dtype=dtype)]
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ forward
    def forward(self, w: Tensor, x: Tensor, bn_state: Tensor | None = None,
                train: bool = True) -> Tensor:
        """Logits ``[K, B, out]`` of K models.

        ``x`` is ``[B, in]`` (shared by all models) or ``[K, B, in]`` (one batch
        per model). Layers are ``h = a W^T + b`` via ``torch.baddbmm`` over the
        stacked weights. Differentiable w.r.t. ``w`` (autograd). With batch norm
        and ``train=True`` the batch statistics are used and ``bn_state`` (if
        given) is updated in place; with ``train=False`` ``bn_state`` is required.
        """
        self._check_w(w)
        K = w.shape[0]
        x = self._check_x(x, K)
        v = self.views(w)
        if self.batchnorm:
            if not train and bn_state is None:
                raise ValueError("eval-mode forward with batchnorm needs bn_state")
            if bn_state is not None and tuple(bn_state.shape) != (K, self.bn_state_size):
                raise ValueError(
                    f"bn_state must be [K, S] = [{K}, {self.bn_state_size}], got {tuple(bn_state.shape)}")
        a = x
        bn_off = 0
        for l in range(self.n_layers):
            W, b = v[f"linear{l}.weight"], v[f"linear{l}.bias"]
            if a.dim() == 2:
                h = torch.matmul(a, W.transpose(1, 2)) + b.unsqueeze(1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), a, W.transpose(1, 2))
            if l == self.n_layers - 1:
                return h
            if self.batchnorm:
                wd = self.widths[l + 1]
                if train:
                    mean = h.mean(dim=1)
                    var = h.var(dim=1, unbiased=False)
                    if bn_state is not None:
                        B = h.shape[1]
                        with torch.no_grad():
                            rm = bn_state[:, bn_off:bn_off + wd]
                            rv = bn_state[:, bn_off + wd:bn_off + 2 * wd]
                            rm.mul_(1 - BN_MOMENTUM).add_(mean.detach(), alpha=BN_MOMENTUM)
                            unb = var.detach() * (B / max(B - 1, 1))
                            rv.mul_(1 - BN_MOMENTUM).add_(unb, alpha=BN_MOMENTUM)
                else:
                    mean = bn_state[:, bn_off:bn_off + wd]
                    var = bn_state[:, bn_off + wd:bn_off + 2 * wd]
                h = (h - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + BN_EPS)
                h = h * v[f"bn{l}.weight"].unsqueeze(1) + v[f"bn{l}.bias"].unsqueeze(1)
                bn_off += 2 * wd
            a = torch.relu(h)
        raise AssertionError("unreachable")

    def loss(self, w: Tensor, x: Tensor, y: Tensor, bn_state: Tensor | None = None,
             train: bool = True) -> Tensor:
        """Mean cross-entropy per model, ``[K]``: L_k = (1/B) sum_b CE(f_k(x_b), y_b).

        ``y`` is ``[B]`` (shared) or ``[K, B]``. ``loss(...).sum()`` differentiated
        w.r.t. ``w`` gives in row k model k's own gradient (models are independent).
        """
        logits = self.forward(w, x, bn_state=bn_state, train=train)
        K, B, C = logits.shape
        if y.dim() == 1:
            y = y.unsqueeze(0).expand(K, B)
        if tuple(y.shape) != (K, B):
            raise ValueError(f"y must be [B] or [K, B] = [{K}, {B}], got {tuple(y.shape)}")
        ce = F.cross_entropy(logits.reshape(K * B, C), y.reshape(K * B), reduction="none")
        return ce.view(K, B).mean(dim=1)

    # ------------------------------------------------------------------ modules
    def _build_module(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        for l in range(self.n_layers):
            layers.append(nn.Linear(self.widths[l], self.widths[l + 1]))
            if l < self.n_layers - 1:
                if self.batchnorm:
                    layers.append(nn.BatchNorm1d(self.widths[l + 1]))
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def to_module(self, w_k: Tensor, bn_state_k: Tensor | None = None) -> nn.Sequential:
        """One model as a plain ``nn.Sequential(Linear, [BatchNorm1d], ReLU, ..., Linear)``.

        Parameters are copies of ``w_k [P]`` (same device/dtype); BN running
        stats come from ``bn_state_k [S]`` when given (else PyTorch defaults).
        Does not touch the global RNG.
        """
        w_k = w_k.detach()
        if w_k.dim() != 1 or w_k.shape[0] != self.n_params:
            raise ValueError(f"w_k must be [P] = [{self.n_params}], got {tuple(w_k.shape)}")
        with torch.random.fork_rng(devices=[]):
            m = self._build_module()
        m = m.to(device=w_k.device, dtype=w_k.dtype)
        nn.utils.vector_to_parameters(w_k.clone(), m.parameters())
        if bn_state_k is not None and self.batchnorm:
            off = 0
            for mod in m:
                if isinstance(mod, nn.BatchNorm1d):
                    wd = mod.num_features
                    mod.running_mean.copy_(bn_state_k[off:off + wd]); off += wd
                    mod.running_var.copy_(bn_state_k[off:off + wd]); off += wd
        return m

    def from_module(self, module: nn.Module) -> Tensor:
        """Flat parameter vector ``[P]`` of a module built like :meth:`to_module`."""
        v = nn.utils.parameters_to_vector(module.parameters()).detach()
        if v.shape[0] != self.n_params:
            raise ValueError(f"module has {v.shape[0]} parameters, spec expects {self.n_params}")
        return v

    def bn_state_from_module(self, module: nn.Module) -> Tensor | None:
        """Running stats ``[S]`` of a module (``None`` without BN)."""
        if not self.batchnorm:
            return None
        parts = []
        for mod in module.modules():
            if isinstance(mod, nn.BatchNorm1d):
                parts += [mod.running_mean.detach(), mod.running_var.detach()]
        return torch.cat(parts)

    # ------------------------------------------------------------------ model protocol
    @property
    def has_batchnorm(self) -> bool:
        return self.batchnorm

    @property
    def stateful(self) -> bool:
        """Batch norm keeps per-seed running statistics (state ``{"bn": [K, S]}``)."""
        return self.batchnorm

    def output_shape(self, input_shape, input_dtype=torch.float32) -> tuple[int, ...]:
        """``(widths[-1],)`` for inputs with ``widths[0]`` features (any shape, e.g. images)."""
        if math.prod(input_shape) != self.widths[0]:
            raise ValueError(f"inputs of shape {tuple(input_shape)} have {math.prod(input_shape)} features; "
                             f"the MLP's widths[0] is {self.widths[0]}")
        return (self.widths[-1],)

    def initialize(self, seeds: Sequence[int], device=None, dtype=torch.float32):
        """``(init(seeds), {"bn": init_bn_state(K)} or None)`` (the model protocol)."""
        w = self.init(seeds, device=device, dtype=dtype)
        bn = self.init_bn_state(len(w), device=device, dtype=dtype)
        return w, (None if bn is None else {"bn": bn})

    def flat_inputs(self, x: Tensor, K: Optional[int] = None) -> Tensor:
        """``x [B, ...]`` or ``[K, B, ...]`` with the feature axes flattened to ``widths[0]``
        (images ``[B, 1, 8, 8]`` feed a 64-input MLP)."""
        d = self.widths[0]
        if x.dim() >= 2 and math.prod(x.shape[1:]) == d and not (x.dim() == 3 and x.shape[0] == K
                                                                  and x.shape[2] == d):
            return x.reshape(x.shape[0], d)
        if K is not None and x.dim() >= 3 and x.shape[0] == K and math.prod(x.shape[2:]) == d:
            return x.reshape(K, x.shape[1], d)
        raise ValueError(f"inputs of shape {tuple(x.shape)} do not have the MLP's {d} features")

    def apply(self, w: Tensor, x: Tensor, state=None, train: bool = False, rng=None,
              shared=None) -> Tensor:
        """Logits ``[K, B, out]`` (the model protocol's name for :meth:`forward`, eval mode by
        default; ``state["bn"]`` are the running statistics)."""
        return self.forward(w, self.flat_inputs(x, w.shape[0]), bn_state=None if state is None else state["bn"],
                            train=train)

    def module(self, w_k: Tensor, state_k: Optional[dict] = None) -> nn.Sequential:
        """:meth:`to_module` under the protocol's name (``state_k["bn"]`` = running stats)."""
        return self.to_module(w_k, None if state_k is None else state_k["bn"])

    def kernel(self, k: int, batch_size: int, device, dtype, input_shape=None, input_dtype=None):
        from .mlp_kernel import MLPKernel

        return MLPKernel(self, k, batch_size, device, dtype)

    def describe(self) -> dict:
        return {"kind": "mlp", "widths": list(self.widths), "batchnorm": bool(self.batchnorm)}

    def activation_bytes(self, batch_size: int, dtype, input_shape=(), input_dtype=None) -> int:
        per = torch.finfo(dtype).bits // 8
        return int(batch_size * (sum(self.widths) + len(self.widths)) * 3 * per)

    # ------------------------------------------------------------------ checks
    def _check_w(self, w: Tensor) -> None:
        if w.dim() != 2 or w.shape[1] != self.n_params:
            raise ValueError(f"w must be [K, P] with P = {self.n_params}, got {tuple(w.shape)}")

    def _check_x(self, x: Tensor, K: int) -> Tensor:
        d_in = self.widths[0]
        if x.dim() == 2 and x.shape[1] == d_in:
            return x
        if x.dim() == 3 and x.shape[0] == K and x.shape[2] == d_in:
            return x
        raise ValueError(f"x must be [B, {d_in}] or [{K}, B, {d_in}], got {tuple(x.shape)}")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
