"""Checks of an LLC estimate: the trend of every chain, the multiplicity correction, and advice
that names the setting to change (docs/estimates.md#trend-check-per-chain).

* **Per chain**, the second-half minus first-half mean draw loss, z = diff / se with
  autocorrelation-aware standard errors (:func:`sgdbayes.sampling.diagnostics.trend_test`).
* **Per model**, flagged when *any* chain's |z| exceeds the Bonferroni threshold for its C
  chains: ``z*(C) = Φ⁻¹(1 − a / (2C))`` with ``a = 2(1 − Φ(trend_z))`` the two-sided size of
  ``trend_z`` for one chain (``z*(1) = trend_z``; ``trend_z = 3``: ``z*(4) = 3.40``,
  ``z*(8) = 3.61``). Summing the chains' z (Stouffer) would let chains that drift in opposite
  directions cancel; the sum is kept as a column, not used for the flag.
* **Advice**: a chain whose loss *rises* through the draws has not equilibrated (more
  ``num_burnin_steps``; the localization's relaxation time is 2/(εγ) steps); one whose loss
  *falls* is descending away from w* (w* is not at a minimum of the loss: a stronger
  ``localization`` keeps the chain near w*, or w* needs more training); a MALA acceptance
  below ``mala_target − mala_tol`` means the step discretizes the Langevin dynamics badly
  (lower ``step_size``), one above ``mala_target + mala_tol`` that the steps could be longer.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .diagnostics import trend_test

__all__ = ["bonferroni_z", "chain_trends", "advice"]


def bonferroni_z(trend_z: float, n_chains: int) -> float:
    """|z| threshold of one of ``n_chains`` chains so that the model-level size equals that of
    ``trend_z`` for one chain (Bonferroni)."""
    a = 2.0 * stats.norm.sf(float(trend_z))
    return float(stats.norm.isf(a / (2.0 * max(1, int(n_chains)))))


def chain_trends(losses: np.ndarray, diverged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z [K, C], diff [K, C])`` of every valid chain's trend test (NaN for diverged chains)."""
    K, C, _ = losses.shape
    z, diff = np.full((K, C), np.nan), np.full((K, C), np.nan)
    for k in range(K):
        for c in range(C):
            if not diverged[k, c]:
                t = trend_test(losses[k, c])
                z[k, c], diff[k, c] = t.z, t.diff
    return z, diff


def _ids(r, mask: np.ndarray) -> str:
    ids = r.model_ids[mask].tolist()
    return f"{ids[:8]}{' ...' if len(ids) > 8 else ''}"


def advice(r) -> list[str]:
    """Sentences naming the setting to change, for the problems an :class:`LLCResult` shows."""
    c = r.config
    K = r.n_models
    out = []
    zc = np.where(r.trend_flag_chain, r.trend_z_chain, np.nan)
    rising, falling = np.nan_to_num(zc) > 0, np.nan_to_num(zc) < 0
    relax = 2.0 / (c.step_size * c.localization) if c.localization > 0 else math.inf
    if rising.any():
        m = rising.any(axis=1)
        target = f"at least {3 * relax:.0f} (3 relaxation times 2/(εγ) = {relax:.0f} steps)" if math.isfinite(
            relax) else "(γ = 0: no localization time scale; try several times the current value)"
        out.append(f"{int(m.sum())} of {K} models (ids {_ids(r, m)}) have a chain whose draw loss still rises "
                   f"(|z| > {r.trend_threshold:.3g}): the chains have not equilibrated; increase num_burnin_steps "
                   f"(now {c.num_burnin_steps}) to {target}")
    if falling.any():
        m = falling.any(axis=1)
        out.append(f"{int(m.sum())} of {K} models (ids {_ids(r, m)}) have a chain whose draw loss falls "
                   f"(|z| > {r.trend_threshold:.3g}): the chain descends away from w*, which is not at a minimum "
                   f"of the loss; increase localization (now γ = {c.localization:g}) or train w* further")
    low = r.mala_flag_chain & (r.mala_chain < c.mala_target)
    high = r.mala_flag_chain & (r.mala_chain > c.mala_target)
    if low.any():
        m = low.any(axis=1)
        out.append(f"{int(m.sum())} of {K} models (ids {_ids(r, m)}) have a chain with MALA acceptance "
                   f"{np.nanmin(r.mala_chain[low]):.3g} < {c.mala_target - c.mala_tol:.3g} (target {c.mala_target:g} "
                   f"± {c.mala_tol:g}): the step is too long for the Langevin dynamics; lower step_size (now "
                   f"ε = {c.step_size:g})")
    if high.any():
        m = high.any(axis=1)
        out.append(f"{int(m.sum())} of {K} models (ids {_ids(r, m)}) have a chain with MALA acceptance above "
                   f"{c.mala_target + c.mala_tol:.3g}: the steps could be longer; step_size (now ε = "
                   f"{c.step_size:g}) may be raised")
    return out
