"""Batched potentials: the per-row minibatch mean loss the SGLD kernels sample from.

Protocol (:class:`Potential`): ``potential(w, idx)`` with ``w [M, P]`` (rows = chains) and
``idx`` a ``LongTensor [M, B]`` of training-set indices (one minibatch per row) or ``None``
(the full training set) returns the per-row mean loss ``[M]``; row m's loss depends on row m
of ``w`` only. Declared capabilities (never probed): ``n`` (training-set size),
``n_params`` (P, or None when any), ``shardable`` (rows can be split over threads: the
potential of rows ``a .. b-1`` of an ``M``-row set is ``rows(a, b, M)``, which is the potential
itself unless rows carry constants of their own, e.g. the model state of row ``m``),
``loss_and_grad(w, idx)`` (the loss and its gradient
``[M, P]``; autograd in :class:`BasePotential`), ``stepper(coefficients, w0, centers)`` (an
in-place SGLD stepper in the potential's own layout, or None) and ``mode`` (the train/eval
mode the model is evaluated in, stated in results).

A plain callable with an ``n`` attribute (the form of earlier releases and of quick
experiments) is adapted by :func:`as_potential`.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from .._validation import check_int

__all__ = ["Potential", "BasePotential", "FunctionPotential", "CallablePotential", "as_potential",
           "check_weights", "BatchedPotential"]


@runtime_checkable
class Potential(Protocol):
    n: int
    n_params: Optional[int]
    shardable: bool
    mode: str

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:  # pragma: no cover
        ...

    def loss_and_grad(self, w: Tensor, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        ...

    def stepper(self, coefficients, w0: Tensor, centers: Tensor):  # pragma: no cover
        """An in-place stepper (:class:`sgdbayes.sampling.sgld.Stepper`) or None."""

    def rows(self, a: int, b: int, M: int) -> "Potential":  # pragma: no cover
        """The potential of rows ``a .. b-1`` of an ``M``-row set (a row shard)."""


#: the name earlier releases used for the protocol
BatchedPotential = Potential


class BasePotential:
    """Defaults of the protocol: autograd gradient, no in-place stepper, not shardable."""

    n: int = 1
    n_params: Optional[int] = None
    shardable: bool = False
    mode: str = "n/a"

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss_and_grad(self, w: Tensor, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """``(loss [M], d loss.sum() / d w [M, P])`` by autograd (rows are independent)."""
        wg = w.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self(wg, idx)
            if loss.shape != (w.shape[0],):
                raise ValueError(f"the potential must return one loss per row [M] = [{w.shape[0]}], "
                                 f"got {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss.sum(), wg)
        return loss.detach(), grad

    def stepper(self, coefficients, w0: Tensor, centers: Tensor):
        return None

    def rows(self, a: int, b: int, M: int) -> "BasePotential":
        """Rows carry no constants of their own: a shard evaluates with the same potential."""
        return self


class FunctionPotential(BasePotential):
    """A data-free potential ``f(w [M, P]) -> [M]`` (e.g. a synthetic K(w)); ``n`` only
    matters for ``nbeta="n"``; indices are ignored."""

    shardable = True

    def __init__(self, f: Callable[[Tensor], Tensor], n: int = 1):
        self.f = f
        self.n = check_int("n", n, 1)

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        return self.f(w)


class CallablePotential(BasePotential):
    """A plain ``loss_fn(w, idx) -> [M]`` with an integer attribute ``n`` behind the protocol."""

    def __init__(self, fn: Callable[[Tensor, Optional[Tensor]], Tensor], n: int):
        self.fn = fn
        self.n = check_int("n (training-set size of the potential)", n, 1)

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        return self.fn(w, idx)


def as_potential(obj) -> BasePotential:
    """``obj`` itself when it is a :class:`BasePotential`, else a callable with ``n`` adapted
    by :class:`CallablePotential`."""
    if isinstance(obj, BasePotential):
        return obj
    if callable(obj) and isinstance(getattr(obj, "n", None), int):
        return CallablePotential(obj, obj.n)
    raise ValueError(f"a potential is a BasePotential, or a callable loss_fn(w, idx) -> [M] with an integer "
                     f"attribute n (training-set size); got {type(obj).__name__}")


def check_weights(w: Tensor, name: str = "w", n_params: Optional[int] = None) -> Tensor:
    """Validate stacked weights: a floating ``[M, P]`` tensor with finite entries."""
    if not isinstance(w, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [M, P], got {type(w).__name__}")
    if w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor [M, P], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {w.dtype}")
    if n_params is not None and w.shape[1] != n_params:
        raise ValueError(f"{name} has P = {w.shape[1]} columns, expected {n_params}")
    bad = ~torch.isfinite(w).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"{name} has non-finite entries in rows {rows[:10]}{'...' if len(rows) > 10 else ''}")
    return w
