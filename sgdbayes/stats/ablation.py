"""H6: d_s tracks the learning rate much more than λ does (paper App H, Fig 11; docs/methods.md).

Within a set of runs (vanilla SGD), standardized partial slopes from OLS with HC3 errors,

    z(y) = β_lr z(log10 lr) + β_B z(log2 B) + ... + ε,   y ∈ {d_s, λ},

(z = standardized over the runs; the first covariate is the learning rate), and the contrast
``Δ = |β_lr(d_s)| − |β_lr(λ)|`` with a paired percentile bootstrap over runs (both slopes refitted
on each resample; resamples with a constant column are skipped and counted); one-sided bootstrap
p = (#{Δ* ≤ 0} + 1) / (B + 1). The claim is Δ > 0: :func:`test_h6` decides it with
:func:`~sgdbayes.stats.results.decide` (threshold 0, direction "greater").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .._validation import check_columns, check_generator, check_level, check_n_boot
from .results import HypothesisTest, Result, Verdict, estimate_row

__all__ = ["standardized_slopes", "SlopeContrast", "h6_contrast", "test_h6"]


def standardized_slopes(Y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Standardized partial slopes: OLS of z(y) on the z-scored columns of ``X`` (z over the rows).

    ``Y`` is ``[n]`` or ``[n, m]`` (m responses fitted at once); returns ``[p]`` or ``[p, m]``."""
    Xz = (X - X.mean(0)) / X.std(0, ddof=1)
    Yz = (Y - Y.mean(0)) / Y.std(0, ddof=1)
    A = np.column_stack([np.ones(len(Xz)), Xz])
    return np.linalg.lstsq(A, Yz, rcond=None)[0][1:]


@dataclass
class SlopeContrast(Result):
    """The H6 contrast (:func:`h6_contrast`).

    ``beta_d_s`` / ``beta_llc``: standardized partial slopes of d_s and λ on the first covariate
    (log10 lr), with HC3 standard errors ``*_se``, their t degrees of freedom ``df`` and two-sided
    p-values ``*_pvalue``; ``delta`` = |β(d_s)| − |β(λ)| with its paired bootstrap values
    ``delta_boot`` (intervals at any level come from them) and the one-sided bootstrap
    ``delta_pvalue`` of H0 Δ ≤ 0. ``note`` says why nothing was estimated (then the numbers are NaN).
    """

    n: int
    covariates: list
    beta_d_s: float = float("nan")
    beta_d_s_se: float = float("nan")
    beta_d_s_pvalue: float = float("nan")
    beta_llc: float = float("nan")
    beta_llc_se: float = float("nan")
    beta_llc_pvalue: float = float("nan")
    df: float = float("nan")
    delta: float = float("nan")
    delta_boot: np.ndarray = field(default_factory=lambda: np.zeros(0))
    delta_pvalue: float = float("nan")
    level: float = 0.95
    n_boot: int = 0
    scope: str = ""
    note: str = ""

    @property
    def estimable(self) -> bool:
        return not self.note

    @property
    def n_boot_used(self) -> int:
        return int(np.asarray(self.delta_boot).size)

    def _beta_ci(self, est: float, se: float, level: float) -> tuple[float, float]:
        from scipy import stats

        if not np.isfinite(self.df):
            return float("nan"), float("nan")
        alpha = 1 - level
        q = stats.t.ppf(1 - alpha / 2, self.df)  # as statsmodels' conf_int(alpha)
        return float(est - q * se), float(est + q * se)

    def _delta_ci(self, level: float) -> tuple[float, float]:
        bs = np.asarray(self.delta_boot, float)
        if bs.size == 0:
            return float("nan"), float("nan")
        a = (1 - level) / 2
        return float(np.quantile(bs, a)), float(np.quantile(bs, 1 - a))

    def _estimate_rows(self, level: float) -> list[dict]:
        return [estimate_row("beta_d_s", self.beta_d_s, self.beta_d_s_se, *self._beta_ci(self.beta_d_s,
                                                                                         self.beta_d_s_se, level),
                             self.beta_d_s_pvalue),
                estimate_row("beta_llc", self.beta_llc, self.beta_llc_se, *self._beta_ci(self.beta_llc,
                                                                                         self.beta_llc_se, level),
                             self.beta_llc_pvalue),
                estimate_row("delta", self.delta, None, *self._delta_ci(level), self.delta_pvalue)]


def h6_contrast(runs: pd.DataFrame, covariates: Sequence[str], n_boot: int = 1000, level: float = 0.95, seed=0,
                scope: str = "") -> SlopeContrast:
    """The H6 contrast within ``runs`` (columns d_s, llc and ``covariates``, the first = log10 lr).

    Rows with a missing value are dropped. Not estimable (``note`` set) with fewer than
    ``len(covariates) + 3`` runs or a constant column. ``seed``: int or numpy Generator.
    """
    import statsmodels.api as sm

    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    xs = list(covariates)
    if not xs:
        raise ValueError("h6_contrast needs at least one covariate (the first is the learning rate)")
    check_columns(runs, ["d_s", "llc", *xs], "runs table")
    sub = runs[["d_s", "llc", *xs]].dropna()
    n = len(sub)
    out = SlopeContrast(n=n, covariates=xs, level=level, n_boot=n_boot, scope=scope)
    if n < len(xs) + 3 or any(sub[c].std() == 0 for c in ["d_s", "llc", *xs]):
        out.note = f"not estimable: {n} runs or a constant column"
        return out
    Z = (sub - sub.mean()) / sub.std(ddof=1)
    for y in ("d_s", "llc"):
        res = sm.OLS(Z[y].to_numpy(), sm.add_constant(Z[xs].to_numpy())).fit(cov_type="HC3", use_t=True)
        setattr(out, f"beta_{y}", float(res.params[1]))
        setattr(out, f"beta_{y}_se", float(res.bse[1]))
        setattr(out, f"beta_{y}_pvalue", float(res.pvalues[1]))
        out.df = float(res.df_resid)
    out.delta = abs(out.beta_d_s) - abs(out.beta_llc)
    rng = check_generator(seed)
    X = sub[xs].to_numpy(float)
    Y = sub[["d_s", "llc"]].to_numpy(float)
    bs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        Xb, Yb = X[idx], Y[idx]
        if (Xb.std(0) == 0).any() or (Yb.std(0) == 0).any():
            continue
        b = standardized_slopes(Yb, Xb)[0]  # slopes on the first covariate (log10 lr) for d_s and λ
        bs.append(abs(b[0]) - abs(b[1]))
    out.delta_boot = np.asarray(bs, dtype=float)
    out.delta_pvalue = float((np.sum(out.delta_boot <= 0) + 1) / (out.delta_boot.size + 1))
    return out


def test_h6(contrast: SlopeContrast, level=None) -> HypothesisTest:
    """H6 from its contrast: Δ > 0, i.e. d_s tracks the learning rate more than λ does."""
    level = contrast.level if level is None else check_level(level)
    claim = "d_s tracks the learning rate much more than λ does"
    statistic = "|β_std(d_s, log lr)| − |β_std(λ, log lr)|"
    test = "paired bootstrap over runs, one-sided H0: Δ ≤ 0"
    common = dict(window="whole (paper's d_s)", n_tested=int(contrast.n),
                  details={"scope": contrast.scope, "covariates": list(contrast.covariates),
                           "n_boot_used": contrast.n_boot_used})
    if not contrast.estimable or contrast.n_boot_used == 0:
        why = contrast.note or "every bootstrap resample had a constant column"
        return HypothesisTest.decided("H6", claim, statistic, None, None, None, None, test, level,
                                      direction="greater", override=(Verdict.UNTESTABLE, why), **common)
    lo, hi = contrast._delta_ci(level)
    p = contrast.delta_pvalue if not math.isnan(contrast.delta_pvalue) else None
    return HypothesisTest.decided("H6", claim, statistic, contrast.delta, lo, hi, p, test, level, threshold=0.0,
                                  direction="greater", **common)


test_h6.__test__ = False
