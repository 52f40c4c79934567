"""Coverage of sgdbayes' intervals on simulated curves with a known truth (docs/intervals.md).

One :class:`Condition` is a cell of the suite: a step grid as users log it, a
curve length, the error correlation ``phi`` and its clock, the noise scale, the
true exponent, with or without a crossover, and the noise of the LLC estimates.
:func:`run_condition` simulates ``n_curves`` curves of that cell in one batch and
fits them with the same code as :func:`sgdbayes.stats.fit_diffusion` (vectorised
over curves; the calibration tables are pure functions of the design, so batch and
one-at-a-time agree), and counts how often each 95 % interval holds the truth:

* ``alpha``: the whole-range slope (cells without a crossover);
* ``alpha_late``: the late-window slope on t >= t_c_hat (cells with a crossover);
* ``d_s``: ``2 lambda alpha`` with lambda the mean of the last 10 of noisy LLC
  estimates (each ``lambda (1 + llc_noise z)``), se = sd / sqrt(10) on 9 df;
* ``t_c``: the crossover (cells with a crossover).

:func:`null_size` measures the false-positive rate of the per-run and cross-run
tests of :mod:`sgdbayes.stats.hypotheses` on ensembles whose true alpha is 1/2.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from . import ar_errors as ae
from .crossover import knot_candidates, knot_posterior, least_squares_knot, t_c_intervals
from .diffusion import spectral_dimension
from .results import Result, estimate_row
from .simulate import car_curves, design_steps
from .slope import _flags, fit_loglog, log_grid, slope_batch

__all__ = ["Condition", "CellResult", "run_condition", "suite", "wilson", "null_size", "LAMBDA", "PHIS", "GOAL"]

LAMBDA = 20.0          # true lambda of the d_s cells
N_LLC = 10             # LLC estimates averaged into the final lambda (App G.1)
EARLY_EXTRA = 0.4      # alpha_early = alpha + 0.4 in crossover cells
MIN_LATE = 10
PHIS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98)
GOAL = (0.93, 0.97)   # the band every alpha and d_s cell should fall in


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf((1 + level) / 2)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (mid - half, mid + half)


@dataclass(frozen=True)
class Condition(Result):
    """One cell of the coverage suite (module docstring); a Result so that cell results round-trip."""

    grid: str = "log+regular"
    n_points: int = 300
    phi: float = 0.5
    clock: str = "log t"
    sigma: float = 0.05
    alpha: float = 0.4
    crossover: bool = False
    llc_noise: Optional[float] = None
    method: str = "ar1-boot"

    def label(self) -> str:
        parts = [f"{self.grid} n={self.n_points}", f"phi={self.phi:g} ({self.clock})", f"sigma={self.sigma:g}",
                 f"alpha={self.alpha:g}"]
        if self.crossover:
            parts.append("crossover")
        if self.llc_noise is not None:
            parts.append(f"llc noise {self.llc_noise:g}")
        return ", ".join(parts)


@dataclass
class CellResult(Result):
    """Counts of one cell: ``hits[p]`` of ``scored[p]`` intervals held the truth; the same among
    runs without an interval flag (``hits_unflagged``, ``scored_unflagged``)."""

    condition: Condition
    n_curves: int
    n_fit_points: int
    hits: dict = field(default_factory=dict)
    scored: dict = field(default_factory=dict)
    hits_unflagged: dict = field(default_factory=dict)
    scored_unflagged: dict = field(default_factory=dict)
    level: float = 0.95

    def coverage(self, param: str, unflagged: bool = False) -> float:
        h, s = (self.hits_unflagged, self.scored_unflagged) if unflagged else (self.hits, self.scored)
        return h[param] / s[param] if s.get(param) else math.nan

    def _estimate_rows(self, level: float) -> list[dict]:
        rows = []
        for p in self.scored:
            lo, hi = wilson(self.hits[p], self.scored[p], level)
            rows.append(estimate_row(p, self.coverage(p), None, lo, hi))
        return rows

    def to_frame(self) -> pd.DataFrame:
        c = self.condition
        rows = []
        for p in self.scored:
            lo, hi = wilson(self.hits[p], self.scored[p], self.level)
            nf = self.scored[p] - self.scored_unflagged.get(p, 0)
            rows.append({"grid": c.grid, "n_points": c.n_points, "fit_points": self.n_fit_points, "phi": c.phi,
                         "clock": c.clock, "sigma": c.sigma, "alpha": c.alpha, "crossover": c.crossover,
                         "llc_noise": c.llc_noise, "method": c.method, "param": p, "n": self.scored[p],
                         "coverage": self.coverage(p), "ci_low": lo, "ci_high": hi,
                         "share_flagged": nf / self.scored[p], "coverage_unflagged": self.coverage(p, True)})
        return pd.DataFrame(rows)


def _mean_curve(c: Condition, x: np.ndarray) -> tuple[np.ndarray, Optional[float]]:
    if not c.crossover:
        return 0.3 + c.alpha * x, None
    xc = x[0] + 0.4 * (x[-1] - x[0])
    a_e = c.alpha + EARLY_EXTRA
    return 0.3 + a_e * x + (c.alpha - a_e) * np.maximum(x - xc, 0.0), float(np.exp(xc))


def _slopes(c: Condition, x, rec, Y, level, seed):
    """(alpha, alpha_se, df, flagged) per row, by the vectorised path or one fit at a time."""
    n = x.size
    if c.method in ("ar1-boot", "ar1"):
        b = slope_batch(x, rec, Y, c.method, level)
        up = b["rho_upper"]
        flagged = np.array([bool(_flags(n, None if np.isnan(u) else u)) for u in up])
        return b["alpha"], b["alpha_se"], b["df"], flagged
    fits = [fit_loglog(x, y, method=c.method, seed=seed + i, level=level, records=rec) for i, y in enumerate(Y)]
    return tuple(np.array([getattr(f, k) for f in fits]) for k in ("alpha", "alpha_se", "df")) + (
        np.array([bool(f.flags) for f in fits]),)


def _late(c, x, rec, Y, knot, level, seed):
    """Late-window fits on x >= knot per row (rows grouped by window start)."""
    R = Y.shape[0]
    a, se, df, fl = np.full(R, np.nan), np.full(R, np.nan), np.full(R, np.nan), np.zeros(R, bool)
    start = np.searchsorted(x, knot - 1e-12)
    for s0 in np.unique(start):
        m = start == s0
        if x.size - s0 >= MIN_LATE:
            a[m], se[m], df[m], fl[m] = _slopes(c, x[s0:], rec[s0:], Y[m][:, s0:], level, seed)
    return a, se, df, fl


class _Tally:
    def __init__(self):
        self.hits, self.scored, self.hu, self.su = {}, {}, {}, {}

    def add(self, p, hit, flagged, valid=None):
        valid = np.ones(hit.size, bool) if valid is None else valid
        hit, flagged = hit[valid], flagged[valid]
        self.hits[p], self.scored[p] = int(hit.sum()), int(hit.size)
        self.hu[p], self.su[p] = int(hit[~flagged].sum()), int((~flagged).sum())


def run_condition(c: Condition, n_curves: int = 400, seed: int = 0, level: float = 0.95) -> CellResult:
    """Simulate ``n_curves`` curves of cell ``c`` and count interval hits (module docstring)."""
    rng = np.random.default_rng(seed)
    t = design_steps(c.grid, c.n_points, seed=seed)
    xf = np.log(t)
    mean, t_c = _mean_curve(c, xf)
    Y = car_curves(t, mean, c.phi, c.sigma, n_curves, c.clock, seed=rng)
    idx = log_grid(t, 64)
    x, Yt = xf[idx], Y[:, idx]
    n = x.size
    tally = _Tally()
    if c.crossover:
        cand = knot_candidates(x, 8)
        j, _ = least_squares_knot(x, Yt, cand)
        lo, hi = t_c_intervals(cand, knot_posterior(x, idx, Yt, cand, with_delta=False)[0], level)
        a, se, dfs, flagged = _late(c, x, idx, Yt, cand[j], level, seed)
        tally.add("t_c", (lo <= t_c) & (t_c <= hi), np.zeros(n_curves, bool))
        name = "alpha_late"
    else:
        a, se, dfs, flagged = _slopes(c, x, idx, Yt, level, seed)
        name = "alpha"
    ok = np.isfinite(a)
    q = np.array([ae.t_quantile(level, d) if d > 0 else np.nan for d in dfs])
    tally.add(name, np.abs(a - c.alpha) <= q * se, flagged, ok)
    if c.llc_noise is not None:
        est = LAMBDA * (1.0 + c.llc_noise * rng.standard_normal((n_curves, N_LLC)))
        lam, lam_se = est.mean(1), (est.std(1, ddof=1) / math.sqrt(N_LLC) if c.llc_noise > 0
                                    else np.zeros(n_curves))
        hit = np.zeros(n_curves, bool)
        for i in np.flatnonzero(ok):
            _, _, (dl, dh) = spectral_dimension(a[i], se[i], lam[i], lam_se[i], level, alpha_df=dfs[i],
                                                llc_df=N_LLC - 1 if c.llc_noise > 0 else None)
            hit[i] = dl <= 2 * LAMBDA * c.alpha <= dh
        tally.add("d_s" + ("_late" if c.crossover else ""), hit, flagged, ok)
    return CellResult(condition=c, n_curves=n_curves, n_fit_points=n, hits=tally.hits, scored=tally.scored,
                      hits_unflagged=tally.hu, scored_unflagged=tally.su, level=level)


def null_size(n_ensembles: int = 400, n_runs: int = 12, phi: float = 0.8, grid: str = "log+regular",
              n_points: int = 300, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """False-positive rates under H0 (true alpha = 1/2 in every run) of the tests of H1.

    Each ensemble has ``n_runs`` curves with alpha = 1/2 and CAR(1) noise; the
    rates are the share of ensembles in which the test rejects at 1 - ``level``:
    per-run one-sided t (share of runs), Holm (any run rejected), Wilcoxon
    signed-rank and sign test across runs (one-sided). Returns one row per test
    with the rate and its Wilson interval.
    """
    from .hypotheses import test_h1

    rng = np.random.default_rng(seed)
    t = design_steps(grid, n_points, seed=seed)
    xf = np.log(t)
    Y = car_curves(t, 0.3 + 0.5 * xf, phi, 0.05, n_ensembles * n_runs, "log t", seed=rng)
    idx = log_grid(t, 64)
    b = slope_batch(xf[idx], idx, Y[:, idx], "ar1-boot", level)
    a = 1 - level
    counts = {"per-run t (share of runs)": 0, "Holm (any run)": 0, "Wilcoxon across runs": 0,
              "sign test across runs": 0}
    for e in range(n_ensembles):
        sl = slice(e * n_runs, (e + 1) * n_runs)
        runs = pd.DataFrame({"run": [f"r{i}" for i in range(n_runs)], "alpha": b["alpha"][sl],
                             "alpha_se": b["alpha_se"][sl], "alpha_df": b["df"][sl]})
        h = test_h1(runs, "whole", level)
        counts["per-run t (share of runs)"] += float((h.per_run["pvalue"] < a).mean())
        counts["Holm (any run)"] += bool(h.per_run["reject"].any())
        counts["Wilcoxon across runs"] += bool(h.pvalue is not None and h.pvalue < a)
        counts["sign test across runs"] += bool(h.sign_pvalue is not None and h.sign_pvalue < a)
    rows = []
    for k, v in counts.items():
        n = n_ensembles * (n_runs if k.startswith("per-run") else 1)
        hits = round(v * n_runs) if k.startswith("per-run") else int(v)
        lo, hi = wilson(hits, n)
        rows.append({"test": k, "nominal": a, "rate": hits / n, "ci_low": lo, "ci_high": hi, "n": n})
    return pd.DataFrame(rows)


def suite() -> dict[str, list[Condition]]:
    """The grid of conditions of benchmarks/coverage.py (docs/intervals.md), by block.

    A: grid shape x curve length x phi x noise clock (alpha 0.4, sigma 0.05);
    B: true alpha in [0.05, 1] x noise scale; C: with a crossover (t_c, late
    alpha, late d_s); D: noise of the LLC estimates; E: the previous default
    method (``pw-boot``) beside the current one on the issue's hard inputs.
    """
    grids = ("log", "regular", "log+regular", "irregular")
    prod = itertools.product
    return {
        "A. alpha: grid x length x phi x clock": [
            Condition(grid=g, n_points=n, phi=p, clock=c)
            for g, n, c, p in prod(grids, (30, 100, 500, 2000), ("log t", "record"), PHIS)],
        "B. alpha: true alpha and noise scale": [
            Condition(alpha=a, sigma=s, phi=p) for p, s, a in prod((0.5, 0.95), (0.01, 0.2), (0.05, 0.2, 0.6, 1.0))],
        "C. crossover: t_c, late alpha, late d_s": [
            Condition(grid=g, n_points=n, phi=p, sigma=s, crossover=True, llc_noise=0.2)
            for g, n, s, p in prod(("log", "log+regular"), (100, 500), (0.02, 0.05), PHIS)],
        "D. d_s: lambda noise": [
            Condition(phi=p, llc_noise=v) for p, v in prod((0.0, 0.5, 0.9, 0.98), (0.0, 0.05, 0.2, 0.5))],
        "E. previous default (pw-boot) for comparison": [
            Condition(phi=p, clock=c, method=m)
            for m, c, p in prod(("pw-boot", "ar1-boot"), ("log t", "record"), PHIS)],
    }
