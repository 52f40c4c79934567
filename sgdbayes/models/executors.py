"""The two executors of :class:`sgdbayes.models.module.ModuleSpec`: the forward of K stacked
models of one architecture.

* :class:`LoweredExecutor` -- the batched layers of :mod:`sgdbayes.models.lowering`;
* :class:`VmapExecutor` -- ``torch.func.functional_call`` + ``vmap`` over the stacked per-seed
  parameters and buffers on a meta-device copy of the module (:func:`meta_copy`), with
  ``nn.Dropout`` replaced by :class:`SeededDropout`, whose masks come from the per-seed
  generators.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy

import torch
from torch import Tensor, nn

from .lowering import BatchedContext, dropout_mask, from_layout, lower, to_layout

__all__ = ["Executor", "LoweredExecutor", "VmapExecutor", "SeededDropout", "meta_copy", "per_seed_inputs",
           "DROPOUT_TYPES"]

#: the dropout layers whose masks come from the per-seed generators
DROPOUT_TYPES = (nn.Dropout,)


def meta_copy(module: nn.Module) -> nn.Module:
    """``module`` on the meta device (a shell for ``functional_call``) with its tied parameters
    still tied: ``.to("meta")`` gives every alias of a shared parameter (a Hugging Face LM's
    ``lm_head.weight`` = ``wte.weight``) its own tensor, which ``functional_call`` would then
    leave unset; each alias is pointed back at the first name's parameter."""
    first: dict[int, str] = {}
    aliases = []
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    meta = module.to("meta")
    for alias, name in aliases:
        owner, _, attr = alias.rpartition(".")
        setattr(meta.get_submodule(owner), attr, meta.get_parameter(name))
    return meta


def per_seed_inputs(x: Tensor, K: int, shared: bool) -> Tensor:
    """``x [K, B, ...]`` (``shared``: ``x [B, ...]`` broadcast to every model, no copy)."""
    return x.unsqueeze(0).expand(K, *x.shape) if shared else x


class Executor:
    """Forward of K stacked models: ``forward(params, x, state, train, rng, K)`` with
    ``params`` a list ``[K, *shape]`` in ``parameters()`` order and ``x [K, B, ...]`` or
    ``[B, ...]`` (``shared``: one batch for every model)."""

    def __init__(self, spec):
        self.spec = spec


class LoweredExecutor(Executor):
    def __init__(self, spec):
        super().__init__(spec)
        self.run = lower(spec.template)

    def forward(self, params, x, state, train, rng, K, shared: bool):
        xk = per_seed_inputs(x, K, shared)
        ctx = BatchedContext(K, xk.shape[1], dict(zip(self.spec.param_names, params)), state, train, rng)
        return from_layout(self.run(ctx, to_layout(xk)), K)


_MASKS: contextvars.ContextVar = contextvars.ContextVar("sgdbayes_dropout_masks", default=None)


class SeededDropout(nn.Module):
    """``nn.Dropout`` whose masks are given (by the vmap executor, or by a test reference):
    in train mode ``x * masks[slot]``; the masks follow :func:`dropout_mask`."""

    def __init__(self, p: float, slot: int):
        super().__init__()
        self.p, self.slot = float(p), int(slot)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        masks = _MASKS.get()
        if masks is None:
            raise RuntimeError("SeededDropout called outside a batched forward")
        if isinstance(masks, list):          # shape discovery: (slot, shape) in call order
            if any(slot == self.slot for slot, _ in masks):
                raise ValueError("an nn.Dropout module is called more than once in one forward; per-seed masks "
                                 "need one nn.Dropout module per call")
            masks.append((self.slot, tuple(x.shape)))
            return x
        return x * masks[self.slot]


@contextlib.contextmanager
def _masks(m):
    tok = _MASKS.set(m)
    try:
        yield
    finally:
        _MASKS.reset(tok)


class VmapExecutor(Executor):
    def __init__(self, spec):
        super().__init__(spec)
        base = copy.deepcopy(spec.template)
        slot = 0
        for mod in list(base.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, DROPOUT_TYPES):
                    setattr(mod, name, SeededDropout(child.p, slot))
                    slot += 1
        self.n_slots = slot
        self.base = meta_copy(base)
        self.mask_shapes: dict = {}

    def _call(self, p, b, m, x, train):
        b = {k: v.clone() for k, v in b.items()} if train else b
        with _masks(m):
            out = torch.func.functional_call(self.base, (p, b), (x,))
        return out, b

    def forward(self, params, x, state, train, rng, K, shared: bool):
        self.base.train(train)
        p = dict(zip(self.spec.param_names, params))
        b = state or {}
        masks = {}
        if train and self.n_slots:
            masks = self._draw_masks(p, b, x, shared, rng)
        fn = torch.func.vmap(lambda p_, b_, m_, x_: self._call(p_, b_, m_, x_, train),
                             in_dims=(0, 0, 0, None if shared else 0))
        out, new_b = fn(p, b, masks, x)
        if train and state:
            with torch.no_grad():
                for k, v in new_b.items():
                    state[k].copy_(v)
        return out

    def _draw_masks(self, p, b, x, shared, rng) -> dict:
        per_example = tuple(x.shape[0 if shared else 1:])
        if per_example not in self.mask_shapes:   # one real forward of seed 0 records the shapes
            rec: list = []
            with torch.no_grad(), _masks(rec):
                torch.func.functional_call(self.base, ({k: v[0] for k, v in p.items()},
                                                       {k: v[0].clone() for k, v in b.items()}),
                                           (x if shared else x[0],))
            self.mask_shapes[per_example] = rec
        if rng is None:
            raise ValueError("a train-mode forward with dropout needs per-seed generators (rng)")
        w0 = next(iter(p.values()))
        rate = {m.slot: m.p for m in self.base.modules() if isinstance(m, SeededDropout)}
        # drawn in call order, as the lowered executor and a plain module draw them
        return {slot: dropout_mask(rng.uniform(shape, dtype=w0.dtype, device=w0.device), rate[slot])
                for slot, shape in self.mask_shapes[per_example]}
