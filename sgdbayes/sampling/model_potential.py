"""Potentials of model families and of users' own modules (the protocol of
:mod:`sgdbayes.sampling.potentials`).

* :func:`potential_for` -- the potential of stacked models of any family
  (:mod:`sgdbayes.models.protocol`): the MLP's fused :class:`~sgdbayes.sampling.mlp.MLPPotential`,
  else :class:`ModelPotential` (the family's batched forward in eval mode, autograd gradient).
* :class:`ModulePotential` -- a list of ``nn.Module`` s of one architecture, stacked with
  ``torch.func`` (``functional_call`` + ``vmap``): mean ``criterion(model(x), y)`` or a user's
  ``evaluate(model, batch)`` (dict batches, Hugging Face models), frozen parameters held fixed.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import MLPSpec
from ..models.module import meta_copy, per_model_cross_entropy
from ..models.protocol import state_repeat
from .data_args import SamplingData
from .mlp import MLPPotential
from .potentials import BasePotential

__all__ = ["ModelPotential", "ModulePotential", "potential_for"]


def potential_for(family, x: Tensor, y: Tensor, state=None) -> BasePotential:
    """Mean cross-entropy of stacked models of ``family`` on ``(x, y)``; ``state`` is the K models'
    state (buffers), repeated over the chains of each model."""
    if isinstance(family, MLPSpec) and (not family.batchnorm or state is None):
        return MLPPotential(family, x, y)   # with batch norm and no state: train-mode batch statistics
    return ModelPotential(family, x, y, state)


class ModelPotential(BasePotential):
    """Mean cross-entropy (over every output position) of stacked models of a family, evaluated
    in eval mode: BatchNorm uses each model's running statistics (``state``, rows
    ``k * chains + c`` share model k's), dropout is off. Rows may be evaluated in shards."""

    shardable = True

    def __init__(self, family, x: Tensor, y: Tensor, state=None):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
        self.family, self.x, self.y, self.state = family, x, y, state
        self.n, self.n_params = int(x.shape[0]), family.n_params
        self.K = None if state is None else int(next(iter(state.values())).shape[0])
        self.mode = "eval (running statistics)" if family.stateful else "eval"

    def _state(self, M: int):
        if self.state is None:
            return None
        if M % self.K:
            raise ValueError(f"{M} rows for {self.K} models: rows must be models x chains")
        return state_repeat(self.state, M // self.K)

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        xb, yb = (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])
        out = self.family.apply(w, xb, self._state(w.shape[0]), train=False, shared=idx is None)
        return per_model_cross_entropy(out, yb)


class ModulePotential(BasePotential):
    """Stacked ``nn.Module`` s of one architecture as flat weights ``[K, P]`` (trainable
    parameters in ``named_parameters()`` order, = ``parameters_to_vector`` of those), evaluated
    with ``functional_call`` + ``vmap``. Buffers and frozen parameters (``requires_grad=False``)
    are each module's own constants, repeated over its chains.

    The loss of a row is ``evaluate(model, batch)`` when given (``model`` is callable like the
    module, ``batch`` the minibatch in the data's own form: a tuple or a dict of tensors), else
    ``criterion(model(x), y)``, which must be a *mean* over the batch (default cross-entropy,
    for integer labels only).
    """

    def __init__(self, modules: Sequence[nn.Module], data: SamplingData, criterion: Optional[Callable] = None,
                 evaluate: Optional[Callable] = None):
        modules = _check_modules(modules)
        if criterion is not None and evaluate is not None:
            raise ValueError("give criterion= or evaluate=, not both")
        if evaluate is None and data.is_dict:
            raise ValueError("the data yields dict batches: pass evaluate=(model, batch) -> mean loss")
        if evaluate is None and criterion is None and data.y.is_floating_point():
            raise ValueError(f"the targets are {data.y.dtype}: cross-entropy (the default) needs integer class "
                             f"labels; pass criterion= (a mean loss, e.g. torch.nn.functional.mse_loss)")
        self.data, self.criterion, self.evaluate = data, criterion, evaluate
        train_names = [n for n, p in modules[0].named_parameters() if p.requires_grad]
        self.names = train_names
        self.shapes = [tuple(p.shape) for n, p in modules[0].named_parameters() if p.requires_grad]
        self.numels = [math.prod(s) for s in self.shapes]
        self.n_params = int(sum(self.numels))
        self.K = len(modules)
        self._w_star = torch.stack([torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters()
                                               if p.requires_grad]) for m in modules])
        consts = [dict([(n, p.detach()) for n, p in m.named_parameters() if not p.requires_grad]
                       + [(n, b.detach()) for n, b in m.named_buffers()]) for m in modules]
        self._consts = {k: torch.stack([c[k] for c in consts]) for k in consts[0]}
        self.frozen = [n for n, p in modules[0].named_parameters() if not p.requires_grad]
        self.base = meta_copy(copy.deepcopy(modules[0]))
        self.base.train(modules[0].training)
        self.n = data.n
        self.mode = _mode_of(modules[0])
        if criterion is not None:
            _check_mean_reduction(criterion, modules[0], data)

    @property
    def w_star(self) -> Tensor:
        """Flat trainable weights ``[K, P]`` of the given modules."""
        return self._w_star

    def _row_loss(self, p, c, batch):
        params = {**p, **c}

        def model(*args, **kwargs):
            return torch.func.functional_call(self.base, params, args, kwargs)

        if self.evaluate is not None:
            return self.evaluate(model, batch)
        x, y = batch
        out = model(x)
        if self.criterion is None:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return self.criterion(out, y)

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        M = w.shape[0]
        if M % self.K != 0:
            raise ValueError(f"ModulePotential got {M} rows; expected a multiple of K={self.K} (rows = k*chains + c)")
        r = M // self.K
        consts = {k: v.repeat_interleave(r, dim=0) for k, v in self._consts.items()}
        parts = torch.split(w, self.numels, dim=1)
        p = {n: t.reshape(M, *s) for n, t, s in zip(self.names, parts, self.shapes)}
        batch = self.data.select(idx)
        fn = torch.func.vmap(self._row_loss, in_dims=(0, 0, None if idx is None else 0))
        return fn(p, consts, batch)


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


def starting_potential(w_start: Tensor, potential=None, spec=None, data=None, state=None):
    """The potential the posterior samplers (``sample_posterior``, ``sample_posterior_until``,
    ``sample_hmc``) run on: ``potential`` as given, or the model's from ``spec`` and ``data``;
    checks that ``w_start`` [S, P] is finite and has the model's P columns."""
    from .data_args import sampling_data
    from .potentials import as_potential, check_weights

    check_weights(w_start, "w_start")
    if potential is None:
        if spec is None or data is None:
            raise ValueError("give potential=, or spec= and data=")
        d = sampling_data(data)
        potential = potential_for(spec, d.x, d.y, state)
    pot = as_potential(potential)
    if pot.n_params is not None and w_start.shape[1] != pot.n_params:
        raise ValueError(f"w_start has P = {w_start.shape[1]} columns but the model has {pot.n_params}")
    return pot
