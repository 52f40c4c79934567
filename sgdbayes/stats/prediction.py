"""H7: weights move further when λ is small, predictably (paper Figs 14-15, 17-18; docs/methods.md).

* :func:`predict_late_displacement`: per run, fit eq 17 (``log R = α log t + c``, OLS on points
  evenly spaced in log t) on the early window ``t <= split·T`` only and predict the held-out late
  displacement ``R̂(t) = exp(c) t^α`` for ``t > split·T``.
* :func:`test_h7`: two tests,

  - ``"H7"``: Spearman ρ(R_T, λ_final) < 0 (weights move further when λ is small), with a
    percentile bootstrap interval over runs and a one-sided p-value (exact permutation for
    n <= 10); decided by :func:`~sgdbayes.stats.results.decide`, threshold 0, "less";
  - ``"H7-prediction"``: the median over runs of ``|R̂_T / R_T − 1|`` is below ``margin``
    (late displacement is predictable from the early window), with a percentile bootstrap
    interval; decided by its interval alone (threshold ``margin``, "less").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validation import check_float, check_int, check_level, check_n_boot
from .results import HypothesisTest, Result, Verdict
from .summaries import bootstrap_ci

__all__ = ["DisplacementPrediction", "predict_late_displacement", "test_h7"]


@dataclass
class DisplacementPrediction(Result):
    """Held-out prediction of late displacement (:func:`predict_late_displacement`), per run.

    ``alpha_early`` / ``intercept_early``: slope and intercept of the early-window fit (so the
    predicted curve is ``exp(intercept_early) t^alpha_early``); ``R_pred_final`` / ``R_true_final``: predicted
    and true displacement at the last step T; ``rel_err_final`` = R̂_T / R_T − 1;
    ``log_err_final`` = log R̂_T − log R_T; ``r2_heldout`` = 1 − SSE/SST of log R on the held-out
    points (SST around their own mean; can be < 0). Runs that could not be fitted (fewer than 10
    positive points, a curve not reaching T, a failed fit) are NaN and counted in ``n_failed``.
    """

    split: float
    n_grid: int
    alpha_early: np.ndarray
    intercept_early: np.ndarray
    R_pred_final: np.ndarray
    R_true_final: np.ndarray
    rel_err_final: np.ndarray
    r2_heldout: np.ndarray
    log_err_final: np.ndarray
    n_failed: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({k: getattr(self, k) for k in ("alpha_early", "intercept_early", "R_pred_final",
                                                           "R_true_final", "rel_err_final", "r2_heldout",
                                                           "log_err_final")})


def predict_late_displacement(steps, displacement, split: float, n_grid: int = 64) -> DisplacementPrediction:
    """Fit eq 17 on ``t <= split·T`` of each run (rows of ``displacement``) and predict the rest."""
    from .diffusion import fit_loglog, log_grid

    split = check_float("split", split, 0.0, 1.0, strict_min=True, strict_max=True)
    n_grid = check_int("n_grid", n_grid, 3)
    t = np.asarray(steps, float)
    disp = np.atleast_2d(np.asarray(displacement, float))
    if disp.shape[1] != t.size:
        raise ValueError(f"displacement has {disp.shape[1]} columns but steps has {t.size} values")
    K = disp.shape[0]
    T = t[-1]
    out = {k: np.full(K, np.nan) for k in ("alpha_early", "intercept_early", "R_pred_final", "R_true_final",
                                           "rel_err_final", "r2_heldout", "log_err_final")}
    n_failed = 0
    for k in range(K):
        d = disp[k]
        ok = np.isfinite(d) & (d > 0)
        tt, dd = t[ok], d[ok]
        if tt.size < 10 or tt[-1] != T:
            n_failed += 1
            continue
        early = tt <= split * T
        late = ~early
        idx = log_grid(tt[early], n_grid)
        try:
            f = fit_loglog(np.log(tt[early][idx]), np.log(dd[early][idx]), method="ols")
        except ValueError:
            n_failed += 1
            continue
        pred = f.intercept + f.alpha * np.log(tt[late])
        y = np.log(dd[late])
        sst = float(((y - y.mean()) ** 2).sum())
        out["alpha_early"][k] = f.alpha
        out["intercept_early"][k] = f.intercept
        out["R_pred_final"][k] = float(np.exp(pred[-1]))
        out["R_true_final"][k] = float(dd[-1])
        out["rel_err_final"][k] = float(np.exp(pred[-1]) / dd[-1] - 1.0)
        out["log_err_final"][k] = float(pred[-1] - y[-1])
        out["r2_heldout"][k] = 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else float("nan")
    return DisplacementPrediction(split=split, n_grid=n_grid, n_failed=n_failed, **out)


def test_h7(R_final, llc, rel_err_final, *, margin: float, level: float = 0.95, n_boot: int = 1000, seed=0,
            n_failed: int = 0) -> list[HypothesisTest]:
    """H7 across runs: ``[H7 (ρ(R_T, λ) < 0), H7-prediction (median |R̂_T/R_T − 1| < margin)]``.

    ``R_final``, ``llc`` and ``rel_err_final`` have one value per run (non-finite ones are left
    out). Both bootstraps start from ``seed`` (an int, or a Generator whose stream continues).
    """
    from .regression import spearman

    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    margin = check_float("margin", margin, 0.0, strict_min=True)
    R, lam = np.asarray(R_final, float), np.asarray(llc, float)
    if R.shape != lam.shape:
        raise ValueError(f"R_final and llc need one value per run, got {R.shape} and {lam.shape}")
    out = []
    ok = np.isfinite(R) & np.isfinite(lam)
    try:
        c = spearman(lam, R, n_boot=n_boot, level=level, seed=seed, names=("llc", "R_final"))
        out.append(HypothesisTest.decided(
            "H7", "weights move further when λ is small", "Spearman ρ(R_T, λ_final)", c.estimate, c.ci_low,
            c.ci_high, c.pvalue_less, f"Spearman ({c.p_method}), one-sided H0: ρ ≥ 0", level, threshold=0.0,
            direction="less", window="final R_T", n_tested=c.n,
            details={"pvalue_two_sided": c.pvalue, "n_boot_used": c.n_boot_used}, notes=[c.note] if c.note else []))
    except ValueError as exc:
        out.append(HypothesisTest.decided(
            "H7", "weights move further when λ is small", "Spearman ρ(R_T, λ_final)", None, None, None, None,
            "Spearman", level, override=(Verdict.UNTESTABLE, str(exc)), window="final R_T", n_tested=int(ok.sum())))
    err = np.abs(np.asarray(rel_err_final, float))
    fe = err[np.isfinite(err)]
    med = float(np.median(fe)) if fe.size else float("nan")
    lo, hi = bootstrap_ci(fe, "median", n_boot=n_boot, level=level, seed=seed)
    override = (Verdict.UNTESTABLE, "no early-window fit") if not fe.size else None
    out.append(HypothesisTest.decided(
        "H7-prediction", "late displacement is predicted by an early-window eq-17 fit", "median |R̂_T/R_T − 1|",
        med, lo, hi, None, "percentile bootstrap over runs (no p-value)", level, threshold=margin,
        direction="less", override=override, window="held-out late window", n_tested=int(fe.size),
        n_excluded=int(n_failed)))
    return out


test_h7.__test__ = False
