"""Shared per-run code of the three diffusion studies (anomalous_diffusion, spectral_dimension,
ablations): data, training cells with LLC along training, per-run diffusion fits, hypothesis
rows and the held-out displacement prediction (H7).

Formulas (paper equation numbers; docs/methods.md):

* displacement R(t) = ||w_t - w_0||_2 over all trainable parameters, t = optimizer steps;
* eq 17: log R(t) = alpha log t + c with alpha = d_s / (2 lambda); so d_s = 2 lambda alpha and
  d_walk = 1/alpha = 2 lambda / d_s (eq 12); fitted by :func:`sgdbayes.stats.fit_diffusion`
  (GLS with AR(1) errors and a calibrated standard error, docs/intervals.md, on points evenly
  spaced in log t; whole range = the paper's fit, late window = after the two-segment
  crossover t_c of App B.3);
* se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2 (delta method);
* final lambda = mean of the last ``last`` LLC estimates along training (App G.1), se = their
  std / sqrt(count) (autocorrelated estimates: optimistic); lambda_bar = mean of all estimates
  (Cor 3.3, H3), se likewise.

Nothing here reads a study configuration: functions take explicit arguments or the library's own
objects (:class:`sgdbayes.engine.EnsembleConfig`, :class:`sgdbayes.sampling.LLCConfig`) and the
shared sections of :mod:`sgdbayes.pipelines.sections` (:class:`FitConfig`).
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ._ensemble_arrays import ensemble_arrays
from .sections import FitConfig

__all__ = [
    "parse_layers", "llc_training_hook", "train_cell", "llc_summaries", "fit_runs", "hypothesis_rows",
    "h7_prediction", "bootstrap_ci", "stats_of", "mean_ci",
]


# --------------------------------------------------------------------------- helpers

def parse_layers(text: str) -> list[int]:
    """A layer list of the paper's Table 7/8 (``"784, 128, 64"``) as integers.

    Each comma-separated piece contributes its first integer: the printed table has a stray
    footnote marker in ``"784, 128, 64 1"``, read as ``[784, 128, 64]``.
    """
    out = []
    for piece in str(text).split(","):
        m = re.search(r"\d+", piece)
        if m:
            out.append(int(m.group()))
    if len(out) < 2:
        raise ValueError(f"cannot read a layer list from {text!r}")
    return out


# --------------------------------------------------------------------------- training

def llc_training_hook(config, every: int):
    """An engine hook estimating λ̂ (``config``: :class:`sgdbayes.sampling.LLCConfig`) every
    ``every`` steps for the seeds that have not diverged.

    A diverged seed's weights are frozen where its loss stopped being finite, so it has no
    λ̂: it is left out of the estimate (NaN, ``skipped``) instead of stopping the training.
    Each seed's chains are keyed by its seed id, so leaving seeds out changes no other
    seed's estimate. Returns ``(engine Hook, LLCTrainingHook)``.
    """
    from ..engine import Hook
    from ..sampling import LLCTrainingHook, dataset_tensors

    hook = LLCTrainingHook(config, every=every)

    def estimate(state):
        step = int(state.step)
        if step % every != 0:
            return None
        w = state.w
        keep = (~state.diverged.to(w.device)) & torch.isfinite(w).all(1)
        k = int(w.shape[0])
        if bool(keep.all()):
            try:
                return {**hook(state), "skipped": np.zeros(k, bool)}
            except ValueError:  # a seed whose loss at w is not finite: estimate the others one by one
                pass
        out = {"llc": np.full(k, np.nan), "llc_std": np.full(k, np.nan), "negative": np.zeros(k, bool),
               "trend_flag": np.zeros(k, bool), "n_diverged": np.zeros(k, np.int64),
               "all_diverged": np.zeros(k, bool), "skipped": np.ones(k, bool)}
        x, y = dataset_tensors(state.data)
        seeds = [int(s) for s in state.seeds]
        for at, res in _estimates(hook, step, w, state.spec, x, y, seeds, torch.nonzero(keep).flatten().tolist()):
            out["llc"][at], out["llc_std"][at] = res.llc, res.llc_std
            out["negative"][at], out["trend_flag"][at] = res.negative, res.trend_flag
            out["n_diverged"][at], out["all_diverged"][at] = res.n_diverged, res.all_diverged
            out["skipped"][at] = False
        return out

    return Hook(every=every, fn=estimate, name="llc"), hook


def _estimates(hook, step, w, spec, x, y, seeds, rows):
    """``[(rows, LLCResult)]`` for the given rows of ``w``; when the batch fails because some seed's
    loss is not finite (its weights overflowed without the engine flagging it), each row is
    estimated alone and the failing ones are left out (their λ̂ stays NaN)."""
    if not rows:
        return []
    try:
        res = hook.record(step, w[rows], spec, x, y, model_ids=[seeds[i] for i in rows])
        return [(np.asarray(rows), res)]
    except ValueError:
        if len(rows) == 1:
            return []
        return [pair for i in rows for pair in _estimates(hook, step, w, spec, x, y, seeds, [i])]


def train_cell(data, ecfg, llc=None, every: int = 100) -> dict[str, Any]:
    """Train one cell (``ecfg``: an :class:`sgdbayes.engine.EnsembleConfig`) as one batched
    ensemble, with λ̂ (``llc``: an :class:`sgdbayes.sampling.LLCConfig`) every ``every`` steps.

    Returns arrays: ``steps [G]``, ``displacement [K, G]``, ``llc_steps [E]``, ``llc [K, E]``,
    ``llc_std [K, E]`` (chain std; NaN with one chain), final train/test loss and accuracy,
    ``diverged [K]``, ``diverged_step [K]``, and scalars ``n_params``, ``wall_s``.
    """
    from ..engine import train_ensemble

    hooks = []
    if llc is not None:
        hooks.append(llc_training_hook(llc, every)[0])
    t0 = time.perf_counter()
    res = train_ensemble(ecfg, data=data, hooks=hooks)
    wall = time.perf_counter() - t0
    K = len(ecfg.seeds)
    out: dict[str, Any] = {
        **ensemble_arrays(res),
        "widths": list(res.spec.widths),
        "wall_s": float(wall),
    }
    if llc is not None:
        df = res.hooks["llc"]
        if df.empty:
            raise RuntimeError(f"no LLC estimate was recorded: llc_schedule.every = {every} > steps = {ecfg.steps}")
        wide = df.pivot(index="seed", columns="step", values="llc").reindex(index=list(res.seeds))
        wstd = df.pivot(index="seed", columns="step", values="llc_std").reindex(index=list(res.seeds))
        out["llc_steps"] = np.asarray(wide.columns, dtype=np.int64)
        out["llc"] = wide.to_numpy(float).reshape(K, -1)
        out["llc_std"] = wstd.to_numpy(float).reshape(K, -1)
        out["nbeta"] = float(llc.resolve_nbeta(data.n_train))
        out["llc_trend_flags"] = int(df["trend_flag"].astype(bool).sum())
        out["llc_n_estimates"] = int((~df["skipped"].astype(bool)).sum())
    return out


def llc_summaries(llc: np.ndarray, last: int) -> dict[str, np.ndarray]:
    """Per run: final λ (mean of the last ``last`` estimates, App G.1) and its se; λ̄ (mean of all,
    Cor 3.3) and its se; count of negative estimates. NaN estimates (all chains diverged) are
    skipped and counted in ``n_missing``."""
    llc = np.asarray(llc, float)
    K, E = llc.shape
    fin = np.full(K, np.nan)
    fin_se = np.full(K, np.nan)
    bar = np.full(K, np.nan)
    bar_se = np.full(K, np.nan)
    for k in range(K):
        v = llc[k][np.isfinite(llc[k])]
        if v.size == 0:
            continue
        tail = v[-last:]
        fin[k] = tail.mean()
        fin_se[k] = tail.std(ddof=1) / math.sqrt(tail.size) if tail.size > 1 else 0.0
        bar[k] = v.mean()
        bar_se[k] = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0
    return {"llc_final": fin, "llc_final_se": fin_se, "llc_mean": bar, "llc_mean_se": bar_se,
            "n_negative_estimates": (llc < 0).sum(1), "n_missing": (~np.isfinite(llc)).sum(1)}


# --------------------------------------------------------------------------- fits

def fit_runs(steps: np.ndarray, displacement: np.ndarray, settings: FitConfig,
             run_ids: Sequence[Any], llc: Optional[np.ndarray] = None, llc_se: Optional[np.ndarray] = None,
             llc_mean: Optional[np.ndarray] = None, llc_mean_se: Optional[np.ndarray] = None,
             positions: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """One row per run: :meth:`DiffusionFit.to_row` (whole-range and late-window eq 17 fits,
    crossover t_c with its interval, d_s = 2 λ α with delta-method intervals when λ is given),
    plus ``run``, ``llc_mean``/``llc_mean_se`` (λ̄) and ``fit_error`` (reason when a run could
    not be fitted, e.g. a constant displacement; its numbers are then missing, never silently
    NaN). Run k's bootstrap seed is ``settings.seed + positions[k]``, its position in the full
    ensemble (default k), so a run's fit does not depend on which other runs were left out."""
    from ..stats.diffusion import fit_diffusion

    rows = []
    K = displacement.shape[0]
    positions = list(range(K)) if positions is None else [int(p) for p in positions]
    for k in range(K):
        d = np.asarray(displacement[k], float)
        ok = np.isfinite(d)
        lam = None if llc is None or not np.isfinite(llc[k]) else float(llc[k])
        lam_se = None if lam is None or llc_se is None or not np.isfinite(llc_se[k]) else float(llc_se[k])
        row: dict[str, Any] = {"run": run_ids[k]}
        try:
            f = fit_diffusion(np.asarray(steps)[ok], d[ok], llc=lam, llc_se=lam_se, n_grid=settings.n_grid,
                              method=settings.method, n_boot=settings.n_boot, level=settings.level,
                              seed=settings.seed + positions[k])
            row.update(f.to_row())
            row["fit_error"] = ""
        except (ValueError, np.linalg.LinAlgError) as exc:
            row["fit_error"] = str(exc)
        row["llc"] = lam
        row["llc_se"] = lam_se
        row["llc_mean"] = None if llc_mean is None or not np.isfinite(llc_mean[k]) else float(llc_mean[k])
        row["llc_mean_se"] = None if llc_mean_se is None or not np.isfinite(llc_mean_se[k]) else float(llc_mean_se[k])
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("alpha", "alpha_se", "late_alpha", "late_alpha_se", "d_s", "late_d_s", "llc", "llc_mean"):
        if c not in df:
            df[c] = np.nan
    return df


# --------------------------------------------------------------------------- summaries

def bootstrap_ci(values: np.ndarray, stat=np.median, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over runs; (NaN, NaN) with < 3 finite values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 3:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    b = np.apply_along_axis(stat, 1, v[idx]) if stat not in (np.median, np.mean) else stat(v[idx], axis=1)
    a = (1 - level) / 2
    return float(np.quantile(b, a)), float(np.quantile(b, 1 - a))


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t interval over runs: (mean, lo, hi); NaN interval with < 2 values."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def stats_of(values: np.ndarray, level: float = 0.95, seed: int = 0) -> dict:
    """Summary of a per-run quantity: n, mean with t interval, sd, median with bootstrap interval,
    5/95 % quantiles, min, max (None where undefined)."""
    v = np.asarray(values, float)
    f = v[np.isfinite(v)]
    if f.size == 0:
        return {"n": 0, "n_missing": int(v.size), "mean": None, "mean_ci": [None, None], "sd": None,
                "median": None, "median_ci": [None, None], "q05": None, "q95": None, "min": None, "max": None}
    m, lo, hi = mean_ci(f, level)
    mlo, mhi = bootstrap_ci(f, np.median, level=level, seed=seed)
    return {"n": int(f.size), "n_missing": int(v.size - f.size), "mean": m, "mean_ci": [lo, hi],
            "sd": float(f.std(ddof=1)) if f.size > 1 else None, "median": float(np.median(f)),
            "median_ci": [mlo, mhi], "q05": float(np.quantile(f, 0.05)), "q95": float(np.quantile(f, 0.95)),
            "min": float(f.min()), "max": float(f.max())}


def hypothesis_rows(hres, claim: str, statistic: str, values: np.ndarray, level: float, seed: int,
                    hyp_id: Optional[str] = None) -> dict:
    """One verdict-table row from a :class:`sgdbayes.stats.HypothesisResult`.

    statistic = median over tested runs of ``values`` (e.g. α − 1/2 or d_s − λ) with a percentile
    bootstrap interval; p = Wilcoxon signed-rank across runs (alternative "less"; H0 = the
    violation); ``sign_p`` = exact sign test of P(value < 0) > 1/2 (binomial, one-sided). Verdict: *supported* when the Wilcoxon p < 1 − level **and** the bootstrap upper
    bound of the median is < 0; *contradicted* when the lower bound is > 0; else *not supported*.
    The per-run view (share of runs with Holm-adjusted p < 1 − level, share of runs whose one-sided
    upper bound is below the threshold) is reported beside it.
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    med = float(np.median(v)) if v.size else float("nan")
    lo, hi = bootstrap_ci(v, np.median, level=level, seed=seed)
    p = hres.pvalue
    a = 1 - level
    from scipy.stats import binomtest

    n_below = int((v < 0).sum())
    n_nonzero = int((v != 0).sum())
    sign_p = float(binomtest(n_below, n_nonzero, 0.5, alternative="greater").pvalue) if n_nonzero else None
    if hres.n_tested == 0 or v.size == 0:
        verdict = "untestable: no run could be tested"
    elif p is not None and p < a and np.isfinite(hi) and hi < 0:
        verdict = "supported"
    elif np.isfinite(lo) and lo > 0:
        verdict = "contradicted (median above the threshold)"
    else:
        verdict = "not supported"
    return {
        "id": hyp_id or hres.id, "claim": claim, "window": hres.window, "statistic": statistic,
        "value": med, "ci": [lo, hi], "pvalue": p,
        "p_label": f"{hres.test or 'Wilcoxon signed-rank'} across runs, one-sided",
        "n_tested": hres.n_tested, "n_excluded": int(len(hres.excluded)), "n_support_holm": hres.n_reject,
        "share_support_holm": (hres.n_reject / hres.n_tested) if hres.n_tested else None,
        "share_upper_below": hres.share_upper_below, "verdict": verdict, "notes": list(hres.notes),
        "sign_p": sign_p, "n_below": n_below,
    }


# --------------------------------------------------------------------------- H7

def h7_prediction(steps: np.ndarray, displacement: np.ndarray, split: float, settings: FitConfig) -> dict:
    """Held-out prediction of late displacement from an early-window fit (Figs 14-15, I.1).

    Per run: fit eq 17 (``log R = α log t + c``) on t ≤ ``split``·T only, predict
    R̂(t) = exp(c) t^α for t > split·T. Returns per run: ``alpha_early``, ``R_pred_final`` (at T),
    ``R_true_final``, ``rel_err_final`` = R̂_T/R_T − 1, ``r2_heldout`` = 1 − SSE/SST of log R on the
    held-out points (SST around their own mean; can be < 0), and the in-sample r² of the whole fit
    is reported elsewhere (the paper's r², Fig 18). Runs whose early window has < 5 points get NaN
    and are counted in ``n_failed``.
    """
    from ..stats.diffusion import fit_loglog, log_grid

    t = np.asarray(steps, float)
    K = displacement.shape[0]
    T = t[-1]
    out = {k: np.full(K, np.nan) for k in ("alpha_early", "R_pred_final", "R_true_final", "rel_err_final",
                                           "r2_heldout", "log_err_final")}
    n_failed = 0
    for k in range(K):
        d = np.asarray(displacement[k], float)
        ok = np.isfinite(d) & (d > 0)
        tt, dd = t[ok], d[ok]
        if tt.size < 10 or tt[-1] != T:
            n_failed += 1
            continue
        early = tt <= split * T
        late = ~early
        idx = log_grid(tt[early], settings.n_grid)
        try:
            f = fit_loglog(np.log(tt[early][idx]), np.log(dd[early][idx]), method="ols")
        except ValueError:
            n_failed += 1
            continue
        pred = f.intercept + f.alpha * np.log(tt[late])
        y = np.log(dd[late])
        sst = float(((y - y.mean()) ** 2).sum())
        out["alpha_early"][k] = f.alpha
        out["R_pred_final"][k] = float(np.exp(pred[-1]))
        out["R_true_final"][k] = float(dd[-1])
        out["rel_err_final"][k] = float(np.exp(pred[-1]) / dd[-1] - 1.0)
        out["log_err_final"][k] = float(pred[-1] - y[-1])
        out["r2_heldout"][k] = 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else float("nan")
    out["n_failed"] = n_failed
    return out
