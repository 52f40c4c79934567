"""Any ``nn.Module`` as a model family: K seeds of ``model()`` trained and sampled as one
batched computation (docs/models.md).

``ModuleSpec(model)`` takes a zero-argument callable returning an ``nn.Module``. Seed i's
initial weights are those of ``model()`` called right after ``torch.manual_seed(seed_i)``;
its buffers (BatchNorm running statistics, constants) are seed i's *state*, stacked
``[K, *shape]`` per buffer and threaded through training functionally.

Two executors (:mod:`sgdbayes.models.executors`) compute the same numbers (tested against each
other and against the plain module):

* **lowered** (:mod:`sgdbayes.models.lowering`): modules built from registered layers
  (``Sequential`` of ``Conv2d``/``Linear``/``ReLU``/pooling/``BatchNorm``/``Dropout``/...,
  and the blocks of the built-in families) run as batched layers: convolutions as batched
  matrix products over the models. The fast path.
* **vmap**: everything else through ``torch.func.functional_call`` + ``vmap`` over the
  stacked per-seed parameters and buffers (BatchNorm updates a per-seed copy of its buffers
  inside the vmapped call, which is returned and written back).

Dropout (``nn.Dropout``) masks come from per-seed generators
(:class:`~sgdbayes.models.protocol.SeedGenerators`, rule :func:`~sgdbayes.models.lowering.dropout_mask`)
in both executors, so seed i's masks do not depend on what else shares the batch.
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .executors import DROPOUT_TYPES, Executor, LoweredExecutor, SeededDropout, VmapExecutor, meta_copy
from .layout import EntryLayout, split_rows
from .lowering import NotLowerable, lower

__all__ = ["ModuleSpec", "SeededDropout", "fork_all_rng", "meta_copy"]

_UNSUPPORTED_RANDOM = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def fork_all_rng():
    """``torch.random.fork_rng`` over the CPU and every initialized CUDA device."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


class ModuleSpec:
    """K seeds of ``model()`` (any ``nn.Module``) behind the model protocol.

    Parameters
    ----------
    model : zero-argument callable returning an ``nn.Module`` (a class, a ``functools.partial``,
        a lambda). Every parameter must require grad (freeze nothing: the engine trains all).
    kind : the family name recorded in results (``"module"`` for user models).
    backend : ``"auto"`` (lowered when every layer has a batched implementation, else vmap),
        ``"lowered"`` or ``"vmap"``.
    sizes : the keyword arguments a built-in family was built with (for ``describe()``).
    """

    def __init__(self, model: Callable[[], nn.Module], *, kind: str = "module", backend: str = "auto",
                 sizes: Optional[dict] = None):
        if not callable(model):
            raise TypeError(f"model must be a zero-argument callable returning an nn.Module, got {model!r}")
        if backend not in ("auto", "lowered", "vmap"):
            raise ValueError(f"backend must be 'auto', 'lowered' or 'vmap', got {backend!r}")
        self.factory, self.kind, self.sizes = model, str(kind), dict(sizes or {})
        with fork_all_rng():
            torch.manual_seed(0)
            template = model()
        if not isinstance(template, nn.Module):
            raise TypeError(f"model() must return an nn.Module, got {type(template).__name__}")
        named = list(template.named_parameters())
        if not named:
            raise ValueError(f"{type(template).__name__} has no parameters: nothing to train or sample")
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.frozen = [n for n, p in named if not p.requires_grad]
        self.buffer_names = [n for n, _ in template.named_buffers()]
        self.n_params = sum(math.prod(s) for s in self.param_shapes)
        self.stateful = bool(self.buffer_names)
        self.has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in template.modules())
        bad = [type(m).__name__ for m in template.modules() if isinstance(m, _UNSUPPORTED_RANDOM)]
        if bad:
            raise ValueError(f"{bad[0]} is not supported (per-seed masks exist for nn.Dropout only)")
        self.stochastic = any(isinstance(m, DROPOUT_TYPES) for m in template.modules())
        self.template = template
        self.lowered_reason = None
        self.backend = self.requested_backend = backend
        if backend in ("auto", "lowered"):
            try:
                lower(template)
                self.backend = "lowered"
            except NotLowerable as e:
                if backend == "lowered":
                    raise ValueError(f"backend='lowered': {e}") from None
                self.backend, self.lowered_reason = "vmap", str(e)
        self._out_shapes: dict = {}
        self._input_rank: Optional[int] = None

    # ------------------------------------------------------------------ protocol
    def describe(self) -> dict:
        name = getattr(self.factory, "__qualname__", None) or repr(self.factory)
        return {"kind": self.kind, **_jsonable(self.sizes)} if self.kind != "module" else {
            "kind": "module", "factory": f"{getattr(self.factory, '__module__', '?')}.{name}"}

    def initialize(self, seeds: Sequence[int], device=None, dtype=torch.float32):
        """``(w [K, P], state)``: seed i's parameters / buffers of ``model()`` built right after
        ``torch.manual_seed(seeds[i])`` (the global RNG state is restored afterwards)."""
        rows, bufs = [], []
        with fork_all_rng():
            for s in seeds:
                torch.manual_seed(int(s))
                m = self.factory()
                rows.append(nn.utils.parameters_to_vector(m.parameters()).detach())
                bufs.append(dict(m.named_buffers()))
        w = torch.stack(rows).to(device=device, dtype=dtype)
        state = None
        if self.buffer_names:
            state = {n: torch.stack([b[n].detach() for b in bufs]).to(
                device=device, dtype=dtype if bufs[0][n].is_floating_point() else None) for n in self.buffer_names}
        return w, state

    def module(self, w_k: Tensor, state_k: Optional[dict] = None) -> nn.Module:
        """Seed k as a plain module: parameters from ``w_k [P]``, buffers from ``state_k``."""
        w_k = w_k.detach()
        if w_k.dim() != 1 or w_k.shape[0] != self.n_params:
            raise ValueError(f"w_k must be [P] = [{self.n_params}], got {tuple(w_k.shape)}")
        m = copy.deepcopy(self.template).to(device=w_k.device, dtype=w_k.dtype)
        nn.utils.vector_to_parameters(w_k.clone(), m.parameters())
        if state_k is not None:
            bufs = dict(m.named_buffers())
            for n, v in state_k.items():
                bufs[n].copy_(v)
        return m

    def from_module(self, module: nn.Module) -> Tensor:
        return nn.utils.parameters_to_vector(module.parameters()).detach()

    def output_shape(self, input_shape: Sequence[int], input_dtype=torch.float32) -> tuple[int, ...]:
        """Per-example output shape for per-example inputs of ``input_shape`` (a dry run of
        the template on two zero inputs of ``input_dtype``: int64 for token models)."""
        key = (tuple(int(s) for s in input_shape), input_dtype)
        self._input_rank = len(key[0])
        if key not in self._out_shapes:
            self._out_shapes[key] = self._dry_run(key[0], input_dtype, [])
            self._check_lowered(key[0], input_dtype)
        return self._out_shapes[key]

    def _check_lowered(self, input_shape, input_dtype) -> None:
        """The lowered executor on one model and two examples; a layer it cannot batch on these
        inputs switches the family to the vmap path (an error when ``backend="lowered"`` was asked)."""
        if self.backend != "lowered":
            return
        w, st = self.initialize([0])
        dt = w.dtype if input_dtype.is_floating_point else input_dtype
        try:
            with torch.no_grad():
                self.apply(w, torch.zeros(1, 2, *input_shape, dtype=dt), st, train=False, shared=False,
                           executor=self.executor())
        except NotLowerable as e:
            if self.requested_backend == "lowered":
                raise ValueError(f"backend='lowered': {e}") from None
            self.backend, self.lowered_reason = "vmap", str(e)

    def activation_bytes(self, batch_size: int, dtype, input_shape: Sequence[int] = (),
                         input_dtype=torch.float32) -> int:
        """Sum of every submodule's output size for a minibatch of ``batch_size`` (what
        autograd keeps for the backward), x 3 for gradients and scratch."""
        sizes: list = []
        self._dry_run(tuple(input_shape), input_dtype, sizes)
        return int(3 * batch_size * sum(sizes) * (torch.finfo(dtype).bits // 8)) // 2

    def _dry_run(self, input_shape, input_dtype, sizes: list) -> tuple[int, ...]:
        """Output shape of the template (eval mode, no grad) on two zero examples; the numel of
        every submodule's output per example is appended to ``sizes``."""
        m = copy.deepcopy(self.template).eval()
        hooks = [s.register_forward_hook(lambda mod, i, o: sizes.append(o.numel() if isinstance(o, Tensor) else 0))
                 for s in m.modules()]
        try:
            if input_dtype.is_floating_point:
                input_dtype = next(iter(m.parameters())).dtype
            with torch.no_grad():
                out = m(torch.zeros(2, *input_shape, dtype=input_dtype))
        except Exception as e:
            raise ValueError(f"{type(m).__name__} cannot be applied to inputs of shape {tuple(input_shape)} "
                             f"({type(e).__name__}: {e})") from None
        finally:
            for h in hooks:
                h.remove()
        return tuple(out.shape[1:])

    def executor(self) -> "Executor":
        """A fresh executor (own module copy: safe to use from one thread)."""
        return LoweredExecutor(self) if self.backend == "lowered" else VmapExecutor(self)

    def apply(self, w: Tensor, x: Tensor, state=None, train: bool = False, rng=None,
              shared: Optional[bool] = None, executor: Optional["Executor"] = None) -> Tensor:
        """Outputs ``[K, B, ...]`` of the models in rows ``w [K, P]`` on ``x``: one batch
        ``[B, ...]`` shared by all (``shared=True``) or one per model ``[K, B, ...]``. By default
        x is shared when it has one axis more than the per-example inputs seen by
        :meth:`output_shape`, else when its first axis is not K."""
        K = w.shape[0]
        if shared is None:
            shared = (x.dim() == self._input_rank + 1) if self._input_rank is not None else x.shape[0] != K
        params = split_rows(w, self.param_shapes)
        return (executor or self._thread_executor()).forward(params, x, state, train, rng, K, shared)

    def _thread_executor(self) -> "Executor":
        """One executor per calling thread (an executor owns a module copy whose mode it sets)."""
        local = self.__dict__.setdefault("_local", threading.local())
        ex = getattr(local, "ex", None)
        if ex is None:
            ex = local.ex = self.executor()
        return ex

    def kernel(self, k: int, batch_size: int, device, dtype, input_shape=None,
               input_dtype=torch.float32) -> "ModuleKernel":
        if self.frozen:
            raise ValueError(f"parameters {self.frozen[:5]} have requires_grad=False; the ensemble trains every "
                             f"parameter (build the model without freezing, or freeze by a zero learning rate)")
        return ModuleKernel(self, k, batch_size, device, dtype, input_shape, input_dtype)


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


#: target activation bytes of one block of models on the CPU (the lowered path). Measured on the
#: 2-core EPYC, Table-5 CNN on 8x8 digits (5 MB of activations per model), batch 64, one thread:
#: grouped convolutions of 16 models 2.4 ms per model-step, of 32 2.5, of 64 3.1; blocks of
#: one model serialize two workers on Python between the small ops
CPU_BLOCK_BYTES = 80 << 20


class ModuleKernel:
    """The model-protocol kernel of a :class:`ModuleSpec`: mean cross-entropy over every
    output position (``outputs [k, B, ..., C]``, labels ``[k, B, ...]``), autograd through the
    executor's batched forward; state updated in place. On the CPU the lowered path runs the
    k models in cache-sized blocks (per-model results do not depend on the blocking)."""

    def __init__(self, spec: ModuleSpec, k: int, batch_size: int, device, dtype, input_shape=None,
                 input_dtype=torch.float32):
        self.spec = spec
        self.layout = EntryLayout(spec.param_shapes)
        self.ex = spec.executor()
        self.block = k
        if torch.device(device).type == "cpu" and spec.backend == "lowered" and input_shape is not None:
            per = spec.activation_bytes(batch_size, dtype, input_shape, input_dtype)
            self.block = max(1, min(k, CPU_BLOCK_BYTES // max(1, per)))

    def prepare(self, x: Tensor) -> Tensor:
        return x

    def loss_and_grad(self, P, G, xb, yb, state, rng=None):
        k = xb.shape[0]
        if self.block >= k:
            return self._block(P, G, xb, yb, state, rng)
        parts = []
        for a in range(0, k, self.block):
            b = min(k, a + self.block)
            parts.append(self._block([p[a:b] for p in P], [g[a:b] for g in G], xb[a:b], yb[a:b],
                                     None if state is None else {n: v[a:b] for n, v in state.items()},
                                     None if rng is None else rng.subset(a, b)))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _block(self, P, G, xb, yb, state, rng):
        k = xb.shape[0]
        ps = [p.detach().requires_grad_(True) for p in P]
        with torch.enable_grad():
            out = self.ex.forward(ps, xb, state, True, rng, k, shared=False)
            loss = per_model_cross_entropy(out, yb)
            grads = torch.autograd.grad(loss.sum(), ps, allow_unused=True)
        with torch.no_grad():
            for g, gv in zip(grads, G):
                if g is None:          # a parameter the forward does not use: zero gradient
                    gv.zero_()
                else:
                    gv.copy_(g)
            correct = (out.detach().argmax(-1) == yb).reshape(k, -1).sum(1)
        return loss.detach(), correct


def per_model_cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy per model: ``out [K, B, ..., C]``, ``y [K, B, ...]`` (or ``[B, ...]``
    shared) -> ``[K]``, the mean over the B x ... positions."""
    K, C = out.shape[0], out.shape[-1]
    if y.dim() == out.dim() - 2:
        y = y.unsqueeze(0).expand(K, *y.shape)
    ce = F.cross_entropy(out.reshape(-1, C), y.reshape(-1), reduction="none")
    return ce.view(K, -1).mean(1)
