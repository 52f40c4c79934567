"""MCMC diagnostics for loss traces: split-R̂, ESS, and a stationarity (trend) check.

* :func:`split_rhat` — Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021),
  "Rank-normalization, folding, and localization: an improved R̂": each chain is
  split in halves; R̂ = sqrt(var⁺ / W) with W the mean within-half variance and
  var⁺ = (N−1)/N · W + B/N. ``rank_normalize=True`` (default) returns
  max(bulk R̂ of rank-normalized draws, tail R̂ of rank-normalized folded draws
  |x − median|); ``False`` gives the classic split-R̂ (Gelman et al., BDA3).
  A single chain is allowed (its two halves are compared).
* :func:`ess` — effective sample size via autocorrelation (FFT) with Geyer's
  initial positive sequence made monotone (Geyer 1992; Stan / BDA3 multi-chain
  form): ρ̂_t = 1 − (W − mean_chains acov_t)/var⁺, τ = −1 + 2 Σ P̂_k with
  P̂_k = ρ̂_{2k} + ρ̂_{2k+1} truncated at the first negative pair,
  ESS = C·N/τ.
* :func:`trend_test` — first vs second half of a trace: z = (m₂ − m₁)/se with
  se² = s₁²/ESS₁ + s₂²/ESS₂ (autocorrelation-aware standard errors).
* :func:`categorical_rhat` — split-R̂ of a categorical trace (e.g. the cluster a sample is
  assigned to): the classic split-R̂ of each category's indicator, the largest over the
  categories (a category whose indicator is constant within every half-chain but differs between
  them gives ∞; one constant everywhere carries no information and is skipped; a trace in one
  category throughout gives 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["split_rhat", "ess", "ess_per_chain", "autocorr", "trend_test", "TrendResult", "categorical_rhat"]


def _as_chains(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"draws must be [draws] or [chains, draws], got shape {a.shape}")
    return a


def autocorr(x) -> np.ndarray:
    """Autocovariance (biased, divisor N) of each row of ``[C, N]`` by FFT, lags 0..N-1."""
    a = _as_chains(x)
    n = a.shape[1]
    a = a - a.mean(axis=1, keepdims=True)
    m = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(a, n=m, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=m, axis=1)[:, :n] / n
    return acov


def ess(x) -> float:
    """Multi-chain effective sample size of draws ``[C, N]`` (or ``[N]``).

    NaN when there are fewer than 4 draws per chain or any draw is non-finite;
    ``C*N`` for a constant trace is not meaningful so NaN is returned as well.
    """
    a = _as_chains(x)
    C, N = a.shape
    if N < 4 or not np.all(np.isfinite(a)):
        return float("nan")
    acov = autocorr(a)
    chain_mean = a.mean(axis=1)
    W = np.mean(acov[:, 0] * N / (N - 1.0))
    var_plus = W * (N - 1.0) / N
    if C > 1:
        var_plus += np.var(chain_mean, ddof=1)
    if not var_plus > 0:
        return float("nan")
    rho = 1.0 - (W - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer's initial positive sequence, made monotone
    t = 0
    pair_sums = []
    while t + 1 < N:
        p = rho[t] + rho[t + 1]
        if p < 0:
            break
        pair_sums.append(p)
        t += 2
    if not pair_sums:
        return float(C * N)
    P = np.minimum.accumulate(np.asarray(pair_sums))
    tau = -1.0 + 2.0 * P.sum()
    tau = max(tau, 1.0 / np.log10(C * N)) if C * N > 1 else tau  # Stan's antithetic cap
    return float(C * N / tau)


def ess_per_chain(x) -> np.ndarray:
    """ESS of each chain of ``[C, N]`` separately."""
    a = _as_chains(x)
    return np.array([ess(row) for row in a])


def _split(a: np.ndarray) -> np.ndarray:
    C, N = a.shape
    h = N // 2
    if N % 2:
        a = np.concatenate([a[:, :h], a[:, h + 1:]], axis=1)
    return np.concatenate([a[:, :h], a[:, h:2 * h]], axis=0)


def _rhat_plain(a: np.ndarray) -> float:
    C, N = a.shape
    W = a.var(axis=1, ddof=1).mean()
    B = N * a.mean(axis=1).var(ddof=1)
    if not W > 0:
        return float("nan")
    var_plus = (N - 1.0) / N * W + B / N
    return float(np.sqrt(var_plus / W))


def _rank_normal(a: np.ndarray) -> np.ndarray:
    r = stats.rankdata(a, method="average").reshape(a.shape)
    S = a.size
    return stats.norm.ppf((r - 3.0 / 8.0) / (S + 0.25))


def split_rhat(x, rank_normalize: bool = True) -> float:
    """Split-R̂ of draws ``[C, N]`` (or one chain ``[N]``); NaN if N < 4 or non-finite draws."""
    a = _as_chains(x)
    if a.shape[1] < 4 or not np.all(np.isfinite(a)):
        return float("nan")
    s = _split(a)
    if not rank_normalize:
        return _rhat_plain(s)
    bulk = _rhat_plain(_rank_normal(s))
    folded = np.abs(s - np.median(s))
    tail = _rhat_plain(_rank_normal(folded))
    vals = [v for v in (bulk, tail) if np.isfinite(v)]
    return float(max(vals)) if vals else float("nan")


def categorical_rhat(labels) -> float:
    """Split-R̂ of integer labels ``[C, N]`` (module docstring); NaN if N < 4."""
    a = np.asarray(labels)
    if a.ndim == 1:
        a = a[None, :]
    if a.shape[1] < 4:
        return float("nan")
    s = _split(a)
    worst = 1.0
    for k in np.unique(s):
        ind = (s == k).astype(np.float64)
        W = ind.var(axis=1, ddof=1).mean()
        B = ind.mean(axis=1).var(ddof=1)
        if W > 0:
            worst = max(worst, _rhat_plain(ind))
        elif B > 0:
            return float("inf")
    return float(worst)


@dataclass(frozen=True)
class TrendResult:
    """First-half vs second-half comparison of a trace.

    diff = mean(second half) − mean(first half); se from each half's variance
    over its ESS; z = diff / se (NaN when undefined)."""

    diff: float
    se: float
    z: float


def trend_test(trace) -> TrendResult:
    """Stationarity check of one trace (1-D): z-test of first vs second half means,
    with autocorrelation-aware standard errors (variance / ESS per half)."""
    t = np.asarray(trace, dtype=np.float64).ravel()
    n = t.size
    if n < 8 or not np.all(np.isfinite(t)):
        return TrendResult(float("nan"), float("nan"), float("nan"))
    h = n // 2
    a, b = t[:h], t[n - h:]
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1), b.var(ddof=1)
    ea, eb = ess(a), ess(b)
    ea = ea if np.isfinite(ea) else float(h)
    eb = eb if np.isfinite(eb) else float(h)
    se = float(np.sqrt(va / ea + vb / eb))
    z = diff / se if se > 0 else (0.0 if diff == 0 else float("inf") * np.sign(diff))
    return TrendResult(diff, se, float(z))
