"""The loss a tracker's LLC runs on: ``loss(model, batch)`` and the copy of the model it runs.

The batched potential of a run's snapshots is
:meth:`sgdbayes.sampling.ModulePotential.of_snapshots` (rows = snapshots x chains; the
untracked parameters and buffers held at each snapshot's own values, shared across snapshots
when unchanged); its data are :class:`sgdbayes.sampling.SamplingData` (a tuple or dict of
tensors with one first dimension, from ``(x, y)``, a dict, an :class:`sgdbayes.data.Dataset`,
a torch ``Dataset`` or a ``DataLoader``).
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["ModelLoss", "CriterionLoss", "OutputLoss", "FunctionLoss", "as_model_loss"]


@runtime_checkable
class ModelLoss(Protocol):
    """The mean loss of ``model`` on ``batch`` (a scalar), and the copy of the model the
    LLC runs (``prepare``: put in eval mode, or switch to a vmap-friendly kernel)."""

    def __call__(self, model: nn.Module, batch) -> Tensor: ...

    def prepare(self, model: nn.Module) -> nn.Module: ...


class CriterionLoss:
    """``criterion(model(x), y)`` on ``batch = (x, y)`` (default mean cross-entropy, over every
    output position for outputs ``[B, ..., C]``; :attr:`default` says it is the default, which
    the batched potential may then evaluate by its fast layers)."""

    def __init__(self, criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None):
        self.default = criterion is None
        self.criterion = criterion if criterion is not None else _cross_entropy

    def __call__(self, model, batch):
        x, y = batch
        return self.criterion(model(x), y)

    def prepare(self, model):
        return model.eval()


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


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


def as_model_loss(loss, data) -> ModelLoss:
    """``loss`` as a :class:`ModelLoss`: None -> cross-entropy for tuple data, the model's
    own ``.loss`` for dict data; a plain callable ``fn(model, batch)`` is wrapped."""
    if isinstance(loss, ModelLoss):
        return loss
    if loss is None:
        return OutputLoss() if data is not None and data.is_dict else CriterionLoss()
    if callable(loss):
        return FunctionLoss(loss)
    raise ValueError(f"loss must be None, a callable loss(model, batch) or a ModelLoss, got {type(loss).__name__}")
