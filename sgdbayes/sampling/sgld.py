"""The SGLD kernel: settings, functional ``build(potential, config) -> (init, update)``, and the
steppers the chain runner advances (docs/methods.md, "LLC").

Update rule (devinterp 1.x ``devinterp.optim.sgld.SGLD``, matched term by term; paper eq 25 /
Lau et al. 2024; :mod:`sgdbayes.sampling.integrator` writes it once)::

    dw    = nβ ∇L_B(w) + ω w + γ (w − w*)
    w_new = w − (ε/2) dw + sqrt(ε) σ ξ,        ξ ~ N(0, I)

with step size ε, inverse temperature nβ, weight decay ω, localization γ towards the centre
w* (the starting point), and noise level σ (1 for a true sampler). ``L_B`` is the minibatch
*mean* loss. With γ = ω = 0 and nβ = n this is Welling & Teh's temperature-1 SGLD:
``Δw = −(ε/2) n ∇L_B(w) + N(0, ε I)``.

Style follows the functional samplers of ``posteriors`` / ``blackjax``: the kernel holds no
random state; noise comes in as an argument (from :class:`sgdbayes.sampling.streams.ChainStreams`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, runtime_checkable

import math

import torch
from torch import Tensor

from .._validation import check_float
from .integrator import LangevinCoefficients, langevin_step
from .potentials import as_potential

__all__ = ["SGLDConfig", "SGLDState", "SGLDTransform", "build", "default_nbeta", "Stepper", "KernelStepper",
           "make_stepper"]


def default_nbeta(batch_size: int) -> float:
    """devinterp 1.x ``default_nbeta``: ``B / log B`` (1 when ``B <= 1``)."""
    b = int(batch_size)
    return 1.0 if b <= 1 else b / math.log(b)


def _pos(name: str, v, allow_zero: bool = False) -> float:
    return check_float(name, v, 0.0, strict_min=not allow_zero)


@dataclass(frozen=True)
class SGLDConfig:
    """Kernel settings of one SGLD step (all resolved numbers): ``step_size`` ε > 0, ``nbeta``
    nβ > 0, ``localization`` γ >= 0, ``weight_decay`` ω >= 0, ``noise_level`` σ > 0 (1 for a
    sampler)."""

    step_size: float
    nbeta: float
    localization: float = 0.0
    weight_decay: float = 0.0
    noise_level: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "step_size", _pos("step_size (epsilon)", self.step_size))
        object.__setattr__(self, "nbeta", _pos("nbeta", self.nbeta))
        object.__setattr__(self, "localization", _pos("localization (gamma)", self.localization, True))
        object.__setattr__(self, "weight_decay", _pos("weight_decay", self.weight_decay, True))
        object.__setattr__(self, "noise_level", _pos("noise_level", self.noise_level))

    @property
    def coefficients(self) -> LangevinCoefficients:
        return LangevinCoefficients.of(self.step_size, self.nbeta, self.weight_decay, self.localization,
                                       self.noise_level)


class SGLDState(NamedTuple):
    """State of M chains: weights ``w [M, P]``, centres ``center [M, P]``, the loss at the
    weights *before* the last update (``[M]``, NaN before any), and the number of updates."""

    w: Tensor
    center: Tensor
    loss: Tensor
    step: int


class SGLDTransform(NamedTuple):
    init: Callable[[Tensor], SGLDState]
    update: Callable[..., SGLDState]


def build(potential, config: SGLDConfig) -> SGLDTransform:
    """The SGLD transform of a potential (:mod:`sgdbayes.sampling.potentials`).

    ``update(state, batch, noise)``: ``batch`` is the potential's second argument (``[M, B]``
    indices or ``None``), ``noise`` a standard normal ``[M, P]`` tensor. Returns the new state;
    ``state.loss`` holds ``L_B(w_old)`` (devinterp records this pre-update loss as the draw).
    Non-finite rows are not hidden here; :func:`sgdbayes.sampling.chains.run_chains` handles them.
    """
    pot = as_potential(potential)
    coef = config.coefficients

    def init(w0: Tensor) -> SGLDState:
        w0 = w0.detach()
        return SGLDState(w=w0.clone(), center=w0.clone(),
                         loss=torch.full((w0.shape[0],), float("nan"), dtype=w0.dtype, device=w0.device), step=0)

    def update(state: SGLDState, batch, noise: Tensor) -> SGLDState:
        loss, grad = pot.loss_and_grad(state.w, batch)
        w_new = langevin_step(state.w, grad, state.center, noise, coef)
        return SGLDState(w=w_new, center=state.center, loss=loss.detach(), step=state.step + 1)

    return SGLDTransform(init=init, update=update)


@runtime_checkable
class Stepper(Protocol):
    """M chains advanced in place by the chain runner: ``rows()`` (current weights ``[M, P]``,
    a tensor the next step does not modify), ``step(batch, noise) -> loss [M]`` (the loss at
    the pre-update weights), ``finite_rows() -> [M] bool`` and ``reset(rows)`` (rows back to
    their centres)."""

    def rows(self) -> Tensor:  # pragma: no cover
        ...

    def step(self, batch, noise: Tensor) -> Tensor:  # pragma: no cover
        ...

    def finite_rows(self) -> Tensor:  # pragma: no cover
        ...

    def reset(self, rows: Tensor) -> None:  # pragma: no cover
        ...


class KernelStepper:
    """Chains advanced by the functional kernel (:func:`build`) on row-layout weights."""

    def __init__(self, potential, kernel: SGLDConfig, w0: Tensor, centers: Tensor):
        self.tr = build(potential, kernel)
        self.state = self.tr.init(w0)._replace(center=centers.detach().clone())

    def rows(self) -> Tensor:
        return self.state.w

    def step(self, batch, noise: Tensor) -> Tensor:
        self.state = self.tr.update(self.state, batch, noise)
        return self.state.loss

    def finite_rows(self) -> Tensor:
        return torch.isfinite(self.state.w).all(dim=1)

    def reset(self, rows: Tensor) -> None:
        st = self.state
        self.state = st._replace(w=torch.where(rows.unsqueeze(1), st.center, st.w))


def make_stepper(potential, kernel: SGLDConfig, w0: Tensor, centers: Tensor) -> Stepper:
    """The potential's own in-place stepper when it declares one (same update, same numbers),
    else the functional kernel."""
    pot = as_potential(potential)
    st = pot.stepper(kernel.coefficients, w0, centers)
    return st if st is not None else KernelStepper(pot, kernel, w0, centers)
