"""The potential of users' own ``nn.Module`` s: stacked with ``torch.func`` (``functional_call``
+ ``vmap``), for any architecture (the protocol of :mod:`sgdbayes.sampling.potentials`).

Rows are **groups x chains**: group k -- one module of a list (:class:`ModulePotential`), or
one weight snapshot of a single module (:meth:`ModulePotential.of_snapshots`, the tracker's
LLC) -- holds rows ``k * r + c``. The rows are the group's *sampled* parameters; every other
tensor (frozen parameters, buffers, untracked parameters of a snapshot) is the group's
constant. A constant that is the *same tensor object* in every group (a frozen backbone
shared by all snapshots) is held once, never repeated per group or chain. Rows are evaluated
by two nested ``vmap`` s (groups, then chains) on the potential's own copy of the module.

The loss of a row is ``evaluate(module, batch)`` when given (the module with the row's
tensors swapped in; ``batch`` the minibatch in the data's own form: a tuple or a dict of
tensors), else ``criterion(module(x), y)``, which must be a *mean* over the batch (default
mean cross-entropy over every output position, for integer labels). With the default loss, a
module built from the batched layers of :mod:`sgdbayes.models.lowering` (``Sequential`` of
convolutions, linear layers, pooling, ...; the built-in CNN and ResNet) runs its rows through
them instead of the two ``vmap`` s: the same numbers (tested), the ensemble engine's speed.
The full-data loss (``idx`` None) is the example-weighted mean over consecutive chunks of
:attr:`ModulePotential.full_chunk` examples (one chunk, i.e. exactly the mean loss, when
``n <= full_chunk``).

Row shards (:meth:`ModulePotential.rows`) each get their own module copy:
``functional_call`` swaps tensors *into* the module while it runs, so two threads must never
share one.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.executors import per_seed_inputs
from ..models.lowering import BatchedContext, NotLowerable, from_layout, lower, to_layout
from ..models.module import per_model_cross_entropy
from .data_args import SamplingData
from .potentials import BasePotential

__all__ = ["ModulePotential"]


class _RowLoss:
    """``evaluate(module, batch)``, or ``criterion(module(x), y)`` (default mean cross-entropy)."""

    def __init__(self, criterion: Optional[Callable] = None, evaluate: Optional[Callable] = None):
        self.criterion, self.evaluate = criterion, evaluate

    def __call__(self, module: nn.Module, batch) -> Tensor:
        if self.evaluate is not None:
            return self.evaluate(module, batch)
        x, y = batch
        out = module(x)
        if self.criterion is None:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return self.criterion(out, y)


class _LoweredRows:
    """Rows of a module built from the batched layers of :mod:`sgdbayes.models.lowering` (the
    ensemble engine's fast path: a convolution of k rows is one grouped convolution, the first
    conv -> ReLU -> max-pool of a CNN one compiled kernel), for the default loss (mean
    cross-entropy over every output position). The module is evaluated as it stands: eval
    mode, or train mode without batch norm or dropout (whose train behaviour it would change)."""

    def __init__(self, module: nn.Module):
        self.run = lower(module)                       # NotLowerable: the vmap path is used
        self.param_names = [n for n, _ in module.named_parameters()]
        self.buffer_names = [n for n, _ in module.named_buffers()]

    def losses(self, tensors: Mapping[str, Tensor], x: Tensor, y: Tensor, k: int, shared: bool) -> Tensor:
        """Losses ``[k]``: ``tensors`` maps ``model.<name>`` to ``[k, ...]`` (every parameter and
        buffer); ``x [k, B, ...]`` (``shared``: ``[B, ...]`` for every row), ``y`` likewise."""
        params = {n: tensors[f"model.{n}"] for n in self.param_names}
        state = {n: tensors[f"model.{n}"] for n in self.buffer_names} or None
        xk = per_seed_inputs(x, k, shared)
        out = from_layout(self.run(BatchedContext(k, xk.shape[1], params, state, False, None), to_layout(xk)), k)
        return per_model_cross_entropy(out, y)


def _lowered_rows(module: nn.Module, loss: "_RowLoss") -> Optional[_LoweredRows]:
    if loss.evaluate is not None or loss.criterion is not None:
        return None
    if any(m.training for m in module.modules()
           if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))):
        return None
    try:
        return _LoweredRows(module)
    except NotLowerable:
        return None


class _Bound(nn.Module):
    """``forward(batch) = loss(module, batch)``: lets ``functional_call`` swap the module's tensors."""

    def __init__(self, module: nn.Module, loss: _RowLoss):
        super().__init__()
        self.model = module
        self.loss = loss

    def forward(self, batch):
        return self.loss(self.model, batch)


class ModulePotential(BasePotential):
    """Stacked ``nn.Module`` s of one architecture as flat weights ``[K, P]`` (trainable
    parameters in ``named_parameters()`` order, = ``parameters_to_vector`` of those). Buffers
    and frozen parameters (``requires_grad=False``) are each module's own constants. The
    modules' train/eval mode is kept (and stated as :attr:`mode`)."""

    shardable = True
    full_chunk = 1024
    #: activation bytes of the rows evaluated together on the CPU: the loss and gradient of 16 rows
    #: of a digits CNN (16, 32 channels, 33 kB of activations per example, batch 128, one thread)
    #: took 0.69 of the time in blocks of 4 rows (17 MB) and 0.74 in blocks of 8 than all at once
    #: (cache); blocks of one row were 20 % slower (per-call overhead), so small models (an MLP's
    #: 1 kB per example) are not split
    cpu_block_bytes = 24 << 20

    def __init__(self, modules: Sequence[nn.Module], data: SamplingData, criterion: Optional[Callable] = None,
                 evaluate: Optional[Callable] = None):
        modules = _check_modules(modules)
        if criterion is not None and evaluate is not None:
            raise ValueError("give criterion= or evaluate=, not both")
        if evaluate is None and data.is_dict:
            raise ValueError("the data yields dict batches: pass evaluate=(model, batch) -> mean loss")
        if evaluate is None and len(data.columns) != 2:
            raise ValueError(f"the data has {len(data.columns)} columns: criterion(model(x), y) needs (x, y); "
                             f"pass evaluate=(model, batch) -> mean loss")
        if evaluate is None and criterion is None and data.y.is_floating_point():
            raise ValueError(f"the targets are {data.y.dtype}: cross-entropy (the default) needs integer class "
                             f"labels; pass criterion= (a mean loss, e.g. torch.nn.functional.mse_loss)")
        named = [(n, p) for n, p in modules[0].named_parameters() if p.requires_grad]
        consts = [dict([(n, p.detach()) for n, p in m.named_parameters() if not p.requires_grad]
                       + [(n, b.detach()) for n, b in m.named_buffers()]) for m in modules]
        self._setup(modules[0], [n for n, _ in named], [tuple(p.shape) for _, p in named], consts, data,
                    _RowLoss(criterion, evaluate))
        self._w_star = torch.stack([torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters()
                                               if p.requires_grad]) for m in modules])
        self.frozen = [n for n, p in modules[0].named_parameters() if not p.requires_grad]
        if criterion is not None:
            _check_mean_reduction(criterion, modules[0], data)

    @classmethod
    def of_snapshots(cls, module: nn.Module, names: Sequence[str], shapes: Sequence[tuple],
                     fixed: Sequence[Mapping[str, Tensor]], data: SamplingData,
                     evaluate: Optional[Callable]) -> "ModulePotential":
        """K weight snapshots of one module: rows hold the parameters ``names`` (shapes
        ``shapes``); ``fixed[k]`` maps every other parameter and buffer name to its value at
        snapshot k (the same object in every snapshot when it did not change). ``module`` is
        evaluated in the mode it is in (the tracker passes an eval-mode copy). ``evaluate``
        None: mean cross-entropy of ``module(x)`` on ``(x, y)``, over every output position."""
        self = cls.__new__(cls)
        if not fixed:
            raise ValueError("of_snapshots needs at least one snapshot")
        self._setup(module, names, shapes, fixed, data, _RowLoss(evaluate=evaluate))
        self._w_star = None
        tracked = set(names)
        self.frozen = [n for n, _ in module.named_parameters() if n not in tracked]
        return self

    def _setup(self, module, names, shapes, consts, data, loss) -> None:
        keys = list(consts[0])
        if any(list(c) != keys for c in consts):
            raise ValueError("the groups hold different sets of constant tensors")
        base = copy.deepcopy(module)
        base.requires_grad_(False)
        self._template, self._loss, self._consts = module, loss, consts
        self._bound = _Bound(base, loss)
        self.names = list(names)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.numels = [math.prod(s) for s in self.shapes]
        self.n_params = int(sum(self.numels))
        self.K = len(consts)
        self._shared, self._stacked = {}, {}
        for k in keys:
            vals = [c[k] for c in consts]
            if all(v is vals[0] for v in vals):
                self._shared[f"model.{k}"] = vals[0]
            else:
                self._stacked[f"model.{k}"] = torch.stack(vals)
        self.data, self.n = data, data.n
        self.mode = _mode_of(base)
        self._lowered = _lowered_rows(base, loss)
        bound = self._bound

        def f(p, stacked, shared, batch):
            return torch.func.functional_call(bound, (p, stacked, shared), (batch,))

        # outer vmap over groups (their constants), inner over a group's chains
        self._rows_fn = torch.func.vmap(torch.func.vmap(f, in_dims=(0, None, None, 0)), in_dims=(0, 0, None, 0))
        self._full_fn = torch.func.vmap(torch.func.vmap(f, in_dims=(0, None, None, None)),
                                        in_dims=(0, 0, None, None))

    @property
    def path(self) -> str:
        """How rows are evaluated: ``"lowered"`` (the batched layers) or ``"vmap"`` (torch.func)."""
        return "vmap" if self._lowered is None else "lowered"

    @property
    def w_star(self) -> Tensor:
        """Flat trainable weights ``[K, P]`` of the given modules (None for snapshots: the
        tracker holds them)."""
        return self._w_star

    def rows(self, a: int, b: int, M: int) -> "ModulePotential":
        """Rows ``a .. b-1`` of ``M = K * r``: a potential with its own module copy whose groups
        are the shard's (whole groups when the shard is aligned to them, else one row each)."""
        if M % self.K:
            raise ValueError(f"{M} rows for {self.K} groups: rows must be groups x chains")
        r = M // self.K
        if a % r == 0 and b % r == 0:
            groups = range(a // r, b // r)
        else:
            groups = [m // r for m in range(a, b)]
        part = copy.copy(self)
        part._setup(self._template, self.names, self.shapes, [self._consts[k] for k in groups], self.data, self._loss)
        part._w_star = None if self._w_star is None else self._w_star[list(groups)]
        return part

    def _split(self, w: Tensor) -> tuple[dict, int]:
        M = w.shape[0]
        if M % self.K != 0 or w.shape[1] != self.n_params:
            raise ValueError(f"ModulePotential got w of shape {tuple(w.shape)}; expected [K * chains, "
                             f"{self.n_params}] with K = {self.K} (rows k * chains + c)")
        r = M // self.K
        return self._params(w, self.K, r), r

    def _params(self, w: Tensor, g: int, c: int) -> dict:
        """Rows ``w [g * c, P]`` as the sampled tensors ``[g, c, *shape]`` by full name."""
        parts = torch.split(w, self.numels, dim=1)
        return {f"model.{n}": t.reshape(g, c, *s) for n, t, s in zip(self.names, parts, self.shapes)}

    def _group_losses(self, p: dict, stacked: dict, idx: Optional[Tensor]) -> Tensor:
        """Losses ``[g, c]`` of rows ``p`` (``[g, c, ...]``) of g groups (constants ``stacked``
        ``[g, ...]``), on minibatches ``idx [g, c, B]`` or the full data."""
        if self._lowered is not None:
            try:
                return self._losses(p, stacked, idx, self._lowered_fn(True), self._lowered_fn(False))
            except NotLowerable:     # a layer that cannot batch these inputs: the vmap path from now on
                self._lowered = None
        return self._losses(p, stacked, idx, self._rows_fn, self._full_fn)

    def _losses(self, p, stacked, idx, rows, full) -> Tensor:
        if idx is not None:
            return rows(p, stacked, self._shared, self.data.select(idx))
        total = None
        for chunk, count in self.data.chunks(self.full_chunk):
            part = full(p, stacked, self._shared, chunk)
            if count == self.n:  # a single chunk: exactly the mean loss
                return part
            part = part * (count / self.n)
            total = part if total is None else total + part
        return total

    def _lowered_fn(self, per_row: bool) -> Callable:
        """The lowered counterpart of ``_rows_fn`` (``per_row``: batches ``[g, c, B, ...]``) or
        ``_full_fn`` (one batch for every row): losses ``[g, c]``."""
        def f(p, stacked, shared, batch):
            g, c = next(iter(p.values())).shape[:2]
            k = g * c
            tensors = {n: v.reshape(k, *v.shape[2:]) for n, v in p.items()}
            tensors.update({n: v.unsqueeze(1).expand(g, c, *v.shape[1:]).reshape(k, *v.shape[1:])
                            for n, v in stacked.items()})
            tensors.update({n: v.expand(k, *v.shape) for n, v in shared.items()})
            x, y = batch
            if per_row:
                x, y = x.reshape(k, *x.shape[2:]), y.reshape(k, *y.shape[2:])
            return self._lowered.losses(tensors, x, y, k, shared=not per_row).reshape(g, c)
        return f

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        p, r = self._split(w)
        return self._group_losses(p, self._stacked, None if idx is None else idx.reshape(self.K, r, -1)).reshape(-1)

    def example_bytes(self) -> int:
        """Bytes of the outputs of every leaf module for one example (measured once, on the
        potential's own module copy with its own weights)."""
        if getattr(self, "_example_bytes", None) is None:
            total = [0]

            def hook(mod, inp, out):
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(t, Tensor):
                        total[0] += t.numel() * t.element_size()

            leaves = [m for m in self._bound.model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                with torch.no_grad():
                    self._bound(next(self.data.chunks(1))[0])
            finally:
                for h in handles:
                    h.remove()
            self._example_bytes = max(1, total[0])
        return self._example_bytes

    def _blocks(self, r: int, batch: int, device) -> list[tuple[int, int, int, int]]:
        """``(k0, k1, c0, c1)``: groups k0..k1-1, chains c0..c1-1, about :attr:`cpu_block_bytes` of
        activations each on the CPU (whole groups when they fit); one block elsewhere."""
        if device.type != "cpu":
            return [(0, self.K, 0, r)]
        per = max(1, self.cpu_block_bytes // (self.example_bytes() * max(1, batch)))
        if per >= self.K * r:
            return [(0, self.K, 0, r)]
        if per >= r:   # whole groups, in blocks of (nearly) equal size
            return [(a, b, 0, r) for a, b in _even(self.K, per // r)]
        return [(k, k + 1, a, b) for k in range(self.K) for a, b in _even(r, per)]

    def loss_and_grad(self, w: Tensor, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Loss and gradient, rows evaluated in cache-sized blocks on the CPU (each row's numbers
        do not depend on the blocking)."""
        r = w.shape[0] // max(1, self.K)
        blocks = self._blocks(r, self.n if idx is None else idx.shape[-1], w.device)
        if len(blocks) == 1:
            return super().loss_and_grad(w, idx)
        loss = torch.empty(w.shape[0], dtype=w.dtype, device=w.device)
        grad = torch.empty_like(w)
        idx3 = None if idx is None else idx.reshape(self.K, r, -1)
        for k0, k1, c0, c1 in blocks:
            a, b = k0 * r + c0, (k1 - 1) * r + c1        # a block is consecutive rows k * r + c
            wg = w[a:b].detach().requires_grad_(True)
            with torch.enable_grad():
                stacked = {n: v[k0:k1] for n, v in self._stacked.items()}
                lb = self._group_losses(self._params(wg, k1 - k0, c1 - c0), stacked,
                                        None if idx3 is None else idx3[k0:k1, c0:c1]).reshape(-1)
                (gb,) = torch.autograd.grad(lb.sum(), wg)
            loss[a:b], grad[a:b] = lb.detach(), gb
        return loss, grad


def _even(n: int, most: int) -> list[tuple[int, int]]:
    """``0 .. n`` in ``ceil(n / most)`` consecutive ranges of (nearly) equal size."""
    parts = -(-n // max(1, most))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _check_modules(modules) -> list:
    if isinstance(modules, nn.Module):
        raise ValueError("pass a list of modules (e.g. [model]); estimate_llc stacks several models of one "
                         "architecture")
    modules = list(modules)
    if not modules or not all(isinstance(m, nn.Module) for m in modules):
        raise ValueError("modules must be a non-empty list of nn.Module")
    sig = [(n, tuple(p.shape), p.requires_grad) for n, p in modules[0].named_parameters()]
    if not any(g for _, _, g in sig):
        raise ValueError(f"{type(modules[0]).__name__} has no trainable parameters (none, or all "
                         f"requires_grad=False): nothing to sample")
    for i, m in enumerate(modules[1:], 1):
        if [(n, tuple(p.shape), p.requires_grad) for n, p in m.named_parameters()] != sig:
            raise ValueError(f"all modules must share one architecture: module {i}'s parameters (names, shapes "
                             f"or requires_grad) differ from module 0's")
    for m in modules:
        if m.training:
            for sub in m.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    raise ValueError("a module is in train mode with BatchNorm: sampling would use each minibatch's "
                                     "statistics and update the running ones; call .eval() on the modules first "
                                     "(BatchNorm then uses its running statistics, a fixed function of the weights, "
                                     "and the batched sampler handles it)")
                if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0:
                    raise ValueError("a module is in train mode with dropout: the loss would be random; call "
                                     ".eval() on the modules first")
    return modules


def _mode_of(m: nn.Module) -> str:
    return "train (no batch norm or dropout)" if m.training else "eval"


def _check_mean_reduction(criterion, module: nn.Module, data: SamplingData) -> None:
    """The criterion must average over the batch: its value on a batch and on that batch
    duplicated must agree (a sum doubles)."""
    if isinstance(criterion, nn.modules.loss._Loss) and criterion.reduction != "mean":
        raise ValueError(f"criterion has reduction={criterion.reduction!r}; the LLC needs the mean loss of a batch "
                         f"(reduction='mean')")
    x, y = data.x[:4], data.y[:4]
    with torch.no_grad():
        out = copy.deepcopy(module)(x)
        a = criterion(out, y)
        b = criterion(torch.cat([out, out]), torch.cat([y, y]))
    if not (isinstance(a, Tensor) and a.numel() == 1):
        raise ValueError(f"criterion must return one number (the batch's mean loss), got shape "
                         f"{tuple(getattr(a, 'shape', ()))}")
    if not torch.isclose(a, b, rtol=1e-4, atol=1e-8):
        raise ValueError("criterion does not return the batch's mean loss (doubling the batch changed it: a sum?); "
                         "use reduction='mean'")
