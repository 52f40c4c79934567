"""LLC of weight snapshots of one ``nn.Module``: the data, the loss and a batched potential.

:class:`SnapshotPotential` satisfies the batched-potential protocol of
:mod:`sgdbayes.sampling.sgld` (``potential(w [M, P], idx [M, B] | None) -> [M]``,
attribute ``n``) for K snapshots of one model, rows ``m = k * C + c`` (snapshot k,
chain c), so :func:`sgdbayes.sampling.estimate_llc_potential` samples all
snapshots x chains as one computation. It differs from
:class:`sgdbayes.sampling.ModulePotential` in three ways the tracker needs:

* the loss is ``loss(model, batch)`` (e.g. a Hugging Face model's own
  ``model(**batch).loss``) and a batch is any tuple or dict of tensors indexed on
  their first dimension, not only ``(x, y)`` with ``criterion(model(x), y)``;
* the rows hold only the *tracked* parameters; the other parameters and the
  buffers are held fixed at each snapshot's own values (shared across snapshots
  when they did not change, e.g. a frozen backbone);
* the model runs in eval mode (dropout off, batch norm on its running statistics of
  that snapshot), on a real copy of the model (not a meta-device one).

Rows are evaluated by two nested ``torch.func.vmap`` (snapshots, then chains), so a
snapshot's fixed tensors are never repeated per chain. The full-data loss (``idx``
None) is the example-weighted mean of the loss on consecutive chunks of
:attr:`SnapshotPotential.full_chunk` examples (one chunk, i.e. exactly the mean loss,
when n <= full_chunk).
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LLCData", "ModelLoss", "CriterionLoss", "OutputLoss", "FunctionLoss", "as_model_loss",
           "SnapshotPotential"]


class LLCData:
    """The training set used for the LLC: a tuple or dict of tensors with one first dimension n.

    Built by :meth:`from_any` from ``(x, y)`` tensors, a dict of tensors (e.g.
    ``input_ids``, ``labels``), an :class:`sgdbayes.data.Dataset` (its train split),
    a torch ``Dataset`` or a ``DataLoader`` (its whole dataset, in order; SGLD draws
    its own minibatches of ``LLCConfig.batch_size``).
    """

    def __init__(self, tree):
        if isinstance(tree, Mapping):
            tree = {str(k): v for k, v in tree.items()}
            items = list(tree.items())
        elif isinstance(tree, (tuple, list)):
            tree = tuple(tree)
            items = [(f"[{i}]", v) for i, v in enumerate(tree)]
        else:
            raise ValueError(f"LLC data must be a tuple or dict of tensors, got {type(tree).__name__}")
        if not items:
            raise ValueError("LLC data is empty (no tensors)")
        for k, v in items:
            if not isinstance(v, Tensor) or v.dim() == 0:
                raise ValueError(f"LLC data {k}: expected a tensor with a first (example) dimension, "
                                 f"got {type(v).__name__}")
        ns = {k: int(v.shape[0]) for k, v in items}
        if len(set(ns.values())) != 1:
            raise ValueError(f"LLC data tensors have different numbers of examples: {ns}")
        self.tree = tree
        self.n = next(iter(ns.values()))
        if self.n == 0:
            raise ValueError("LLC data has no examples")

    @classmethod
    def from_any(cls, data) -> "LLCData":
        from torch.utils.data import DataLoader, Dataset

        if isinstance(data, LLCData):
            return data
        if isinstance(data, (tuple, list, Mapping)):
            return cls(data)
        if isinstance(getattr(data, "x_train", None), Tensor):  # sgdbayes.data.Dataset
            return cls((data.x_train, data.y_train))
        ds = data.dataset if isinstance(data, DataLoader) else data
        if not (isinstance(ds, Dataset) or (hasattr(ds, "__len__") and hasattr(ds, "__getitem__"))):
            raise ValueError(f"data must be (x, y) tensors, a dict of tensors, a Dataset or a DataLoader, "
                             f"got {type(data).__name__}")
        batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
        return cls(batch)

    def map(self, fn: Callable[[Tensor], Tensor]):
        if isinstance(self.tree, dict):
            return {k: fn(v) for k, v in self.tree.items()}
        return tuple(fn(v) for v in self.tree)

    def to(self, device) -> "LLCData":
        return LLCData(self.map(lambda v: v.to(device)))

    def take(self, idx: Tensor):
        """The examples ``idx`` (any shape) of every tensor: leading dims ``idx.shape``."""
        return self.map(lambda v: v[idx])

    def chunks(self, size: int):
        for a in range(0, self.n, size):
            yield self.map(lambda v: v[a:a + size]), min(size, self.n - a)


@runtime_checkable
class ModelLoss(Protocol):
    """The mean loss of ``model`` on ``batch`` (a scalar), and the copy of the model the
    LLC runs (``prepare``: put in eval mode, or switch to a vmap-friendly kernel)."""

    def __call__(self, model: nn.Module, batch) -> Tensor: ...

    def prepare(self, model: nn.Module) -> nn.Module: ...


class CriterionLoss:
    """``criterion(model(x), y)`` on ``batch = (x, y)`` (default mean cross-entropy)."""

    def __init__(self, criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None):
        self.criterion = criterion if criterion is not None else nn.functional.cross_entropy

    def __call__(self, model, batch):
        x, y = batch
        return self.criterion(model(x), y)

    def prepare(self, model):
        return model.eval()


class OutputLoss:
    """The model's own loss: ``model(**batch).loss`` (the Hugging Face convention)."""

    def __call__(self, model, batch):
        return model(**batch).loss

    def prepare(self, model):
        return model.eval()


class FunctionLoss:
    """A user's ``fn(model, batch) -> mean loss``; the model runs in eval mode."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, model, batch):
        return self.fn(model, batch)

    def prepare(self, model):
        return model.eval()


def as_model_loss(loss, data: Optional[LLCData]) -> ModelLoss:
    """``loss`` as a :class:`ModelLoss`: None -> cross-entropy for tuple data, the model's
    own ``.loss`` for dict data; a plain callable ``fn(model, batch)`` is wrapped."""
    if isinstance(loss, ModelLoss):
        return loss
    if loss is None:
        return OutputLoss() if data is not None and isinstance(data.tree, dict) else CriterionLoss()
    if callable(loss):
        return FunctionLoss(loss)
    raise ValueError(f"loss must be None, a callable loss(model, batch) or a ModelLoss, got {type(loss).__name__}")


class _Bound(nn.Module):
    """``forward(batch) = loss(model, batch)``: lets ``functional_call`` swap the model's tensors."""

    def __init__(self, model: nn.Module, loss: ModelLoss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch):
        return self.loss(self.model, batch)


class SnapshotPotential:
    """Batched potential of K snapshots of one module (see the module docstring).

    ``model`` is copied (then ``loss.prepare`` d); ``names`` / ``shapes`` are the tracked
    parameters in row order; ``fixed[k]`` maps every other tensor name (parameters and
    buffers) to its value at snapshot k; entries that are the *same object* in every
    snapshot are shared. ``w_star [K, P]`` rows are the tracked parameters.
    """

    full_chunk = 1024

    def __init__(self, model: nn.Module, names: Sequence[str], shapes: Sequence[tuple],
                 fixed: Sequence[Mapping[str, Tensor]], data: LLCData, loss: ModelLoss):
        from torch.func import functional_call, vmap

        self.K = len(fixed)
        if self.K == 0:
            raise ValueError("SnapshotPotential needs at least one snapshot")
        base = loss.prepare(copy.deepcopy(model))
        base.requires_grad_(False)
        self._bound = _Bound(base, loss)
        self.names = [f"model.{n}" for n in names]
        self.shapes = [tuple(s) for s in shapes]
        self.numels = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.n_params = int(sum(self.numels))
        keys = list(fixed[0])
        if any(list(f) != keys for f in fixed):
            raise ValueError("snapshots hold different sets of fixed tensors")
        self._shared, self._stacked = {}, {}
        for k in keys:
            vals = [f[k] for f in fixed]
            if all(v is vals[0] for v in vals):
                self._shared[f"model.{k}"] = vals[0]
            else:
                self._stacked[f"model.{k}"] = torch.stack(vals)
        self.data = data
        self.n = data.n
        bound = self._bound

        def f(p, stacked, shared, batch):
            return functional_call(bound, (p, stacked, shared), (batch,))

        # outer vmap over snapshots (fixed tensors per snapshot), inner over chains
        self._rows = vmap(vmap(f, in_dims=(0, None, None, 0)), in_dims=(0, 0, None, 0))
        self._full = vmap(vmap(f, in_dims=(0, None, None, None)), in_dims=(0, 0, None, None))

    def _unflatten(self, w: Tensor, C: int) -> dict:
        parts = torch.split(w, self.numels, dim=1)
        return {n: p.reshape(self.K, C, *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        M = w.shape[0]
        if M % self.K != 0 or w.shape[1] != self.n_params:
            raise ValueError(f"SnapshotPotential got w of shape {tuple(w.shape)}; expected "
                             f"[K*chains, {self.n_params}] with K={self.K}")
        C = M // self.K
        p = self._unflatten(w, C)
        if idx is not None:
            batch = self.data.take(idx.reshape(self.K, C, -1))
            return self._rows(p, self._stacked, self._shared, batch).reshape(M)
        total = None
        for chunk, count in self.data.chunks(self.full_chunk):
            part = self._full(p, self._stacked, self._shared, chunk)
            if count == self.n:  # a single chunk: exactly the mean loss
                return part.reshape(M)
            part = part * (count / self.n)
            total = part if total is None else total + part
        return total.reshape(M)
