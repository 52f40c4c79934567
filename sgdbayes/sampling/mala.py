"""MALA acceptance of SGLD steps: an observer of the chain runner (docs/estimates.md#mala-acceptance).

SGLD is an unadjusted Langevin sampler: it never rejects. How far one of its steps is from an
exact Langevin move is measured by the Metropolis-Hastings acceptance probability that MALA
(Metropolis-adjusted Langevin) would give the same transition ``w → w'`` (devinterp 1.x
``devinterp.slt.mala.mala_acceptance_probability``)::

    U(w)  = nβ L_B(w) + (γ/2)|w − w*|² + (ω/2)|w|²        G(w) = ∇U(w) = nβ ∇L_B(w) + γ (w − w*) + ω w
    log q(w' | w) = −|w' − w + (ε/2) G(w)|² / (2 ε σ²)
    α(w → w') = min(1, exp( [U(w) − U(w')]/σ² + log q(w | w') − log q(w' | w) ))

Which minibatch ``L_B`` is (``batches``):

* ``"same"`` (default): both ends of the transition on the minibatch the step itself used
  (``U_B(w)``, ``U_B(w')``, ``G_B(w)``, ``G_B(w')`` with one B): the MH ratio of the move the
  kernel actually made on its own target, so the acceptance measures the step's
  discretization only and tends to 1 as ε → 0, whatever the batch size.
* ``"devinterp"``: as devinterp computes it, each end on the minibatch of *its own* step
  (consecutive steps, different batches). The energy difference then carries the
  batch-to-batch noise nβ (L_B(w) − L_B'(w')), which does not vanish as ε → 0: on the moons
  MLP with batch 32 the acceptance stays at 0.76 for ε from 1e-4 to 1e-6 (same-batch: 0.975,
  0.999, 1.000), so a low value there need not mean the step is too long.

Full batch (``batch_size=None``): the two agree exactly. devinterp leaves weight decay out of
``U`` (but not of ``G``), sgdbayes puts it in both (the same number when ω = 0). The
transition measured at a draw is the single SGLD step into it, from the step before
(devinterp: between consecutive draws, the same with one step between draws).

Cost: two extra loss-and-gradient evaluations of the rows per measured transition (the kernel's
own gradient is not kept), so only every ``every``-th draw is measured.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._validation import check_choice, check_int
from .chains import Draw, _ArrayObserver
from .sgld import SGLDConfig

__all__ = ["MALAAcceptance", "mala_log_acceptance", "MALA_BATCHES"]

#: the minibatch each end of a measured transition is evaluated on (module docstring)
MALA_BATCHES = ("same", "devinterp")


def _energy(loss: Tensor, w: Tensor, center: Tensor, k: SGLDConfig) -> Tensor:
    u = k.nbeta * loss.double()
    if k.localization:
        u = u + 0.5 * k.localization * (w.double() - center.double()).square().sum(1)
    if k.weight_decay:
        u = u + 0.5 * k.weight_decay * w.double().square().sum(1)
    return u


def _drift(grad: Tensor, w: Tensor, center: Tensor, k: SGLDConfig) -> Tensor:
    g = k.nbeta * grad.double()
    if k.localization:
        g = g + k.localization * (w.double() - center.double())
    if k.weight_decay:
        g = g + k.weight_decay * w.double()
    return g


def mala_log_acceptance(w0: Tensor, loss0: Tensor, grad0: Tensor, w1: Tensor, loss1: Tensor, grad1: Tensor,
                        center: Tensor, kernel: SGLDConfig) -> Tensor:
    """``log α`` (before the min with 0) of the transitions ``w0 → w1`` of rows ``[M, P]``, from
    the mean losses ``[M]`` and their gradients at both ends (module docstring; float64)."""
    eps, s2 = kernel.step_size, kernel.noise_level ** 2
    u0, u1 = _energy(loss0, w0, center, kernel), _energy(loss1, w1, center, kernel)
    g0, g1 = _drift(grad0, w0, center, kernel), _drift(grad1, w1, center, kernel)
    d = w1.double() - w0.double()
    fwd = (d + 0.5 * eps * g0).square().sum(1)      # |w1 − w0 + (ε/2) G(w0)|²
    rev = (-d + 0.5 * eps * g1).square().sum(1)     # |w0 − w1 + (ε/2) G(w1)|²
    return (u0 - u1) / s2 + (fwd - rev) / (2.0 * eps * s2)


class MALAAcceptance(_ArrayObserver):
    """``[M, D]`` MALA acceptance probability of the SGLD step into every ``every``-th draw
    (NaN elsewhere, at step 0 and after divergence). ``kernel`` is the run's :class:`SGLDConfig`;
    ``batches`` the minibatch each end is evaluated on (``"same"`` or ``"devinterp"``, module
    docstring)."""

    name = "mala"
    step_hook = True

    def __init__(self, kernel: SGLDConfig, schedule, every: int = 1, batches: str = "same"):
        super().__init__()
        if not isinstance(kernel, SGLDConfig):
            raise ValueError(f"kernel must be an SGLDConfig, got {type(kernel).__name__}")
        check_choice("batches", batches, MALA_BATCHES)
        self.kernel, self.schedule, self.batches = kernel, schedule, batches
        self.every = check_int("every", every, 1)
        self._prev: Optional[tuple] = None

    @classmethod
    def for_draws(cls, kernel: SGLDConfig, schedule, max_transitions: int = 50,
                  batches: str = "same") -> "MALAAcceptance":
        """Measure at most ``max_transitions`` transitions per chain, evenly spread over the draws."""
        max_transitions = check_int("max_transitions", max_transitions, 1)
        return cls(kernel, schedule, every=max(1, math.ceil(schedule.num_draws / max_transitions)),
                   batches=batches)

    def shard(self, a: int, b: int):
        view = super().shard(a, b)
        view._prev = None
        return view

    def _measured(self, i: int) -> bool:
        s = self.schedule
        if i < 1 or not s.is_draw(i):
            return False
        return ((i - s.num_burnin_steps + 1) // s.num_steps_bw_draws - 1) % self.every == 0

    def wants_step(self, i: int) -> bool:
        return self._measured(i) or self._measured(i + 1)

    def on_step(self, ev: Draw) -> None:
        # ev.w: the rows before step ev.step, ev.batch: that step's minibatch
        own = None
        if self._measured(ev.step) and self._prev is not None and self._prev[0] == ev.step - 1:
            _, w0, l0, g0, b0 = self._prev
            batch = b0 if self.batches == "same" else ev.batch   # the step into w's batch, or w's own
            loss, grad = ev.potential.loss_and_grad(ev.w, batch)
            if batch is ev.batch:
                own = (loss, grad)
            la = mala_log_acceptance(w0, l0, g0, ev.w, loss, grad, ev.center, self.kernel)
            acc = torch.exp(torch.clamp(la, max=0.0)).to(self.data.dtype)
            acc = torch.where(ev.diverged | ~torch.isfinite(acc), torch.full_like(acc, float("nan")), acc)
            self.data[self.rows, ev.index] = acc
        if self._measured(ev.step + 1):
            loss, grad = own if own is not None else ev.potential.loss_and_grad(ev.w, ev.batch)
            self._prev = (ev.step, ev.w, loss, grad, ev.batch)

    def on_draw(self, draw: Draw) -> None:  # recorded by on_step
        return None
