"""anomalous_diffusion: paper §3.1.1, Fig 1, eq 11 (docs/methods.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    the moons SGD ensemble (engine, batched), displacement R(t) = ||w_t − w_0||₂ per seed
2. ``analysis`` per-run eq-17 fits (whole range = the paper's fit; late window after the two-segment
                crossover t_c, App B.3), H1 per run (one-sided α < 1/2, Holm) and across runs
                (Wilcoxon), the ensemble mean curve with a band, the Brownian t^½ reference, the
                local slope d log R / d log t, and the crossover of the mean curve with its interval

Report: :func:`sgdbayes.reporting.diffusion_reports.write_anomalous_diffusion`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validation import check_float, check_int, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.typed import StudyConfig
from ._diffusion_common import fit_runs, hypothesis_rows, stats_of
from ._ensemble_arrays import divergence_summary, ensemble_arrays
from .sections import CurvesReport, FitConfig, ModelConfig, MoonsData, TrainConfig, sgd_ensemble

__all__ = ["CONFIG", "AnomalousDiffusionConfig", "AnalysisConfig", "STAGES", "write_report", "local_slopes"]


@dataclass(frozen=True)
class AnalysisConfig:
    """``[analysis]``: bootstrap of medians over runs; local slope window (ours)."""

    n_boot: int = 2000
    seed: int = 1
    local_slope_halfwidth: float = 0.35   # OLS of ln R on ln t over |Δ ln t| <= this

    def __post_init__(self):
        check_int("n_boot", self.n_boot, 1)
        check_seed(self.seed, "seed")
        check_float("local_slope_halfwidth", self.local_slope_halfwidth, 0.0, strict_min=True)


@dataclass(frozen=True)
class AnomalousDiffusionConfig(StudyConfig):
    """The sections of ``studies/anomalous_diffusion.toml``."""

    data: MoonsData = field(default_factory=MoonsData)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: CurvesReport = field(default_factory=CurvesReport)

    def __post_init__(self):
        self.train.check_data(self.data.n_train, "data.n")


CONFIG = AnomalousDiffusionConfig


def local_slopes(steps: np.ndarray, R: np.ndarray, halfwidth: float, n_points: int = 64):
    """Local slope d log R / d log t of each curve (rows of ``R``).

    On ``n_points`` grid steps evenly spaced in log t, the slope at x_i = ln t_i is the OLS slope of
    ln R on ln t over the points with |ln t − x_i| ≤ ``halfwidth`` (at least 3 points, else NaN).
    Brownian motion has slope 1/2 everywhere (eq 11 with d_walk = 2). Returns (t_grid [G], slopes [K, G]).
    """
    from ..stats.diffusion import log_grid

    t = np.asarray(steps, float)
    idx = log_grid(t, n_points)
    x = np.log(t[idx])
    Y = np.log(np.atleast_2d(R)[:, idx])
    out = np.full((Y.shape[0], x.size), np.nan)
    for i, xi in enumerate(x):
        m = np.abs(x - xi) <= halfwidth + 1e-12
        if m.sum() < 3:
            continue
        xc = x[m] - x[m].mean()
        out[:, i] = (Y[:, m] - Y[:, m].mean(1, keepdims=True)) @ xc / (xc @ xc)
    return t[idx], out


# --------------------------------------------------------------------------- stage 1

def stage_train(ctx: StageContext) -> dict[str, Any]:
    from ..engine import train_ensemble

    c = ctx.config
    res = train_ensemble(sgd_ensemble(c.data, c.model, c.train, c.data.n_train, ctx.device))
    fin = res.final
    arrays = ensemble_arrays(res)
    ctx.log(f"    {len(res.seeds)} runs, train acc {fin['train_acc'].mean():.3f}, {int(arrays['diverged'].sum())} diverged")
    return {
        **arrays,
        "divergence": divergence_summary(arrays["diverged"], arrays["diverged_step"], [f"seed {s}" for s in arrays["seeds"]]),
        "engine_s": float(res.meta.get("elapsed_s", float("nan"))),
    }


# --------------------------------------------------------------------------- stage 2

def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    from scipy import stats as sst

    from ..stats.diffusion import fit_crossover, fit_diffusion, log_grid
    from ..stats.hypotheses import test_h1

    tr = ctx["train"]
    fs = ctx.config.fit
    level = fs.level
    seed = ctx.config.analysis.seed
    steps = np.asarray(tr["steps"], float)
    ok = ~np.asarray(tr["diverged"], bool)
    disp = np.asarray(tr["displacement"], float)[ok]
    seeds = np.asarray(tr["seeds"])[ok]
    runs = fit_runs(steps, disp, fs, [int(s) for s in seeds], positions=np.flatnonzero(ok))
    n_fail = int((runs["fit_error"] != "").sum())
    notes = []
    if n_fail:
        notes.append(f"{n_fail} runs could not be fitted: {runs.loc[runs['fit_error'] != '', 'fit_error'].iloc[0]}")
    fitted = runs[runs["fit_error"] == ""]

    # -- hypotheses: H1 on the late window (the claim) and on the whole range (the paper's fit)
    hyps = []
    h_late = test_h1(fitted, "late", level)
    hyps.append(hypothesis_rows(h_late, "late SGD is sub-diffusive: α < 1/2 after t_c (eq 11, d_walk > 2)",
                                "median over runs of α_late − 1/2", fitted["late_alpha"].to_numpy(float) - 0.5,
                                level, seed, "H1"))
    h_whole = test_h1(fitted, "whole", level)
    hyps.append(hypothesis_rows(h_whole, "sub-diffusion over the whole range (the paper's single fit)",
                                "median over runs of α_whole − 1/2", fitted["alpha"].to_numpy(float) - 0.5,
                                level, seed + 1, "H1 (whole range)"))

    # -- ensemble mean curve, band, Brownian reference
    K = disp.shape[0]
    mean = disp.mean(0)
    sd = disp.std(0, ddof=1) if K > 1 else np.zeros_like(mean)
    q = sst.t.ppf((1 + level) / 2, max(K - 1, 1))
    mean_lo, mean_hi = mean - q * sd / np.sqrt(K), mean + q * sd / np.sqrt(K)
    q05, q95 = np.quantile(disp, 0.05, axis=0), np.quantile(disp, 0.95, axis=0)
    brownian = mean[0] * np.sqrt(steps / steps[0])  # R_B(t) = R̄(t_0) (t / t_0)^(1/2), anchored at the first step

    # -- local slope of the mean curve and of each run
    halfwidth = ctx.config.analysis.local_slope_halfwidth
    tg, slope_runs = local_slopes(steps, disp, halfwidth)
    _, slope_mean = local_slopes(steps, mean[None, :], halfwidth)
    slope_mean = slope_mean[0]
    import warnings

    with warnings.catch_warnings():  # the first log-grid points have < 3 neighbours: NaN slope, stated
        warnings.simplefilter("ignore", RuntimeWarning)
        sm = np.nanmean(slope_runs, 0)
        ssd = np.nanstd(slope_runs, 0, ddof=1) if K > 1 else np.zeros_like(sm)
        sq05, sq95 = np.nanquantile(slope_runs, 0.05, 0), np.nanquantile(slope_runs, 0.95, 0)
    slope_lo, slope_hi = sm - q * ssd / np.sqrt(K), sm + q * ssd / np.sqrt(K)
    fin_s = np.isfinite(slope_mean)
    below = fin_s & (slope_mean < 0.5)
    first_sub = float(tg[np.argmax(below)]) if below.any() else None
    # -- the mean curve: whole and late fits, crossover with interval
    fm = fit_diffusion(steps, mean, method=fs.method, n_boot=fs.n_boot, n_grid=fs.n_grid, level=level, seed=fs.seed)
    idx = log_grid(steps, fs.n_grid)
    cx = fit_crossover(np.log(steps[idx]), np.log(mean[idx]), level=level, records=idx)
    mean_fit = {
        "alpha_whole": fm.whole.alpha, "alpha_whole_ci": list(fm.whole.conf_int(level).loc["alpha"]),
        "r2_whole": fm.whole.r2,
        "alpha_late": fm.late.alpha if fm.late else None,
        "alpha_late_ci": list(fm.late.conf_int(level).loc["alpha"]) if fm.late else [None, None],
        "late_t_start": fm.late.t_min if fm.late else None, "r2_late": fm.late.r2 if fm.late else None,
        "t_c": cx.t_c, "t_c_ci": list(cx.conf_int(level).loc["t_c"]), "alpha_early": cx.alpha_early,
        "alpha_late_hinge": cx.alpha_late,
        "delta": cx.alpha_late - cx.alpha_early, "delta_ci": list(cx.conf_int(level).loc["delta"]),
        "significant": cx.significant,
        "p_late_less_half": fm.late.pvalue_less(0.5) if fm.late else None,
        "p_whole_less_half": fm.whole.pvalue_less(0.5), "notes": list(fm.notes),
    }
    # crossover hypothesis row: slope change on the mean curve (App B.3)
    hyps.append({
        "id": "crossover", "claim": "early super-diffusion gives way to slower late diffusion (App B.3)",
        "window": "mean curve", "statistic": "α_late − α_early of the two-segment fit of the mean curve",
        "value": mean_fit["delta"], "ci": mean_fit["delta_ci"], "pvalue": None,
        "p_label": "hinge-model posterior interval (no p)", "n_tested": 1, "n_excluded": 0,
        "n_support_holm": None, "share_support_holm": None, "share_upper_below": None,
        "verdict": ("supported: slope drops at t_c (interval < 0)" if mean_fit["delta_ci"][1] < 0 else
                    "not supported: the slope change's interval includes 0 or is > 0"),
        "notes": [],
    })
    per_run = {c: fitted[c].to_numpy(float) for c in ("alpha", "late_alpha", "t_c", "r2", "late_r2",
                                                       "alpha_early")}
    return {
        "runs": runs.to_dict(orient="list"),
        "hypotheses": hyps,
        "h1_late_per_run": h_late.per_run.to_dict(orient="list"),
        "summary": {
            "alpha_whole": stats_of(per_run["alpha"], level, seed), "alpha_late": stats_of(per_run["late_alpha"], level, seed),
            "alpha_early": stats_of(per_run["alpha_early"], level, seed), "t_c": stats_of(per_run["t_c"], level, seed),
            "r2_whole": stats_of(per_run["r2"], level, seed), "r2_late": stats_of(per_run["late_r2"], level, seed),
            "n_runs": int(K), "n_fitted": int(len(fitted)), "n_diverged": int((~ok).sum()),
            "n_crossover_significant": int(fitted["crossover_significant"].fillna(False).astype(bool).sum()),
            "first_subdiffusive_step_mean_curve": first_sub,
            "n_no_late_fit": int(fitted["late_alpha"].isna().sum()),
            "late_fit_notes": sorted({n for row in fitted["notes"].fillna("") for n in row.split("; ")
                                      if "late" in n or "crossover" in n}),
        },
        "mean_fit": mean_fit,
        "curve_steps": steps, "curve_mean": mean, "curve_mean_lo": mean_lo, "curve_mean_hi": mean_hi,
        "curve_q05": q05, "curve_q95": q95, "curve_brownian": brownian,
        "slope_t": tg, "slope_mean_curve": slope_mean, "slope_runs_mean": sm, "slope_lo": slope_lo,
        "slope_hi": slope_hi, "slope_q05": sq05, "slope_q95": sq95,
        "notes": notes,
    }


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} seeds diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", stage_train, "train the moons SGD ensemble"),
    Stage("analysis", stage_analysis, "per-run diffusion fits, H1, mean curve, local slope, crossover",
          skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.diffusion_reports import write_anomalous_diffusion

    return write_anomalous_diffusion(ctx)
