"""Potentials of model families and of users' own modules (the protocol of
:mod:`sgdbayes.sampling.potentials`).

* :func:`potential_for` -- the potential of stacked models of any family
  (:mod:`sgdbayes.models.protocol`): the MLP's fused :class:`~sgdbayes.sampling.mlp.MLPPotential`,
  else :class:`ModelPotential` (the family's batched forward in eval mode, autograd gradient).
* users' own ``nn.Module`` s: :class:`sgdbayes.sampling.module_potential.ModulePotential`.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..models import MLPSpec
from ..models.module import per_model_cross_entropy
from ..models.protocol import state_repeat
from .mlp import MLPPotential
from .potentials import BasePotential

__all__ = ["ModelPotential", "potential_for", "starting_potential"]


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

    def rows(self, a: int, b: int, M: int) -> "ModelPotential":
        """Rows ``a .. b-1`` of ``M``: each row with its own model's state (rows ``k * chains + c``)."""
        if self.state is None or (a, b) == (0, M):
            return self
        state = {k: v[a:b] for k, v in self._state(M).items()}
        return ModelPotential(self.family, self.x, self.y, state)

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        xb, yb = (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])
        out = self.family.apply(w, xb, self._state(w.shape[0]), train=False, shared=idx is None)
        return per_model_cross_entropy(out, yb)


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
