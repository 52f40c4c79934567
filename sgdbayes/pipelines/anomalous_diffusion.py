"""anomalous_diffusion: paper §3.1.1, Fig 1, eq 11 (docs/methods.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    the moons SGD ensemble (engine, batched), displacement R(t) = ||w_t − w_0||₂ per seed
2. ``analysis`` per-run eq-17 fits (whole range = the paper's fit; late window after the two-segment
                crossover t_c, App B.3), H1 per run (one-sided α < 1/2, Holm) and across runs
                (Wilcoxon), the ensemble mean curve with a band, the Brownian t^½ reference, the
                local slope d log R / d log t, and the crossover of the mean curve with its interval

Report: :mod:`sgdbayes.reporting.anomalous_diffusion`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validation import check_float, check_int, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.shards import Partial, Sharding, ShardTask
from ..runner.typed import StudyConfig
from ..stats.summaries import summarize
from ..stats.verdicts import test_crossover, test_h1_h3
from ._diffusion_common import fit_runs
from ._ensemble_arrays import ENSEMBLE_ROWS, divergence_summary, ensemble_arrays, single_cell, train_shard_ensemble
from .sections import CurvesReport, FitConfig, ModelConfig, MoonsData, TrainConfig

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

def train_shard(task: ShardTask) -> Partial:
    """Some seeds of the moons ensemble as one batched computation (the data is rebuilt from the config)."""
    res = train_shard_ensemble(task)
    return Partial.split({**ensemble_arrays(res), "engine_s": float(res.meta.get("elapsed_s", float("nan")))},
                         rows=ENSEMBLE_ROWS, totals=("engine_s",))


def train_merge(ctx: StageContext, cells: list[Partial]) -> dict[str, Any]:
    arrays = cells[0].flat()
    ctx.log(f"    {np.size(arrays['seeds'])} runs, train acc {np.mean(arrays['final_train_acc']):.3f}, "
            f"{int(arrays['diverged'].sum())} diverged")
    labels = [f"seed {s}" for s in arrays["seeds"]]
    return {**arrays, "divergence": divergence_summary(arrays["diverged"], arrays["diverged_step"], labels)}


# --------------------------------------------------------------------------- stage 2

def _mean_band(values: np.ndarray, level: float, skip_nan: bool = False):
    """Mean over runs (rows) with its Student-t band, per column: (mean, lo, hi); ``skip_nan``
    leaves missing values out of each column."""
    from scipy import stats as sst

    K = values.shape[0]
    mean = np.nanmean(values, 0) if skip_nan else values.mean(0)
    sd = (np.nanstd(values, 0, ddof=1) if skip_nan else values.std(0, ddof=1)) if K > 1 else np.zeros_like(mean)
    h = sst.t.ppf((1 + level) / 2, max(K - 1, 1)) * sd / np.sqrt(K)
    return mean, mean - h, mean + h


def _curves(steps: np.ndarray, disp: np.ndarray, level: float, halfwidth: float) -> dict[str, Any]:
    """The ensemble mean curve with its band and the 5-95 % band of runs, the Brownian t^½
    reference anchored at the first step, and the local slopes of the runs and of the mean curve."""
    import warnings

    mean, mean_lo, mean_hi = _mean_band(disp, level)
    tg, slope_runs = local_slopes(steps, disp, halfwidth)
    _, slope_mean = local_slopes(steps, mean[None, :], halfwidth)
    with warnings.catch_warnings():  # the first log-grid points have < 3 neighbours: NaN slope, stated
        warnings.simplefilter("ignore", RuntimeWarning)
        sm, slope_lo, slope_hi = _mean_band(slope_runs, level, skip_nan=True)
        sq05, sq95 = np.nanquantile(slope_runs, 0.05, 0), np.nanquantile(slope_runs, 0.95, 0)
    below = np.isfinite(slope_mean[0]) & (slope_mean[0] < 0.5)
    return {"curve_steps": steps, "curve_mean": mean, "curve_mean_lo": mean_lo, "curve_mean_hi": mean_hi,
            "curve_q05": np.quantile(disp, 0.05, axis=0), "curve_q95": np.quantile(disp, 0.95, axis=0),
            "curve_brownian": mean[0] * np.sqrt(steps / steps[0]),  # R_B(t) = R̄(t_0) (t / t_0)^(1/2)
            "slope_t": tg, "slope_mean_curve": slope_mean[0], "slope_runs_mean": sm, "slope_lo": slope_lo,
            "slope_hi": slope_hi, "slope_q05": sq05, "slope_q95": sq95,
            "first_subdiffusive_step_mean_curve": float(tg[np.argmax(below)]) if below.any() else None}


def _mean_curve_fit(steps: np.ndarray, mean: np.ndarray, fs: FitConfig) -> tuple[dict, Any]:
    """eq 17 on the mean curve (whole range and late window, from ``DiffusionFit.to_row``) and its
    two-segment crossover (App B.3) with the slope change α_late − α_early and its interval."""
    from ..stats.diffusion import fit_crossover, fit_diffusion, log_grid

    row = fit_diffusion(steps, mean, method=fs.method, n_boot=fs.n_boot, n_grid=fs.n_grid, level=fs.level,
                        seed=fs.seed)
    notes = list(row.notes)
    row = row.to_row()
    idx = log_grid(steps, fs.n_grid)
    cx = fit_crossover(np.log(steps[idx]), np.log(mean[idx]), level=fs.level, records=idx)
    cx_ci = cx.conf_int(fs.level)
    fit = {"alpha_whole": row["alpha"], "alpha_whole_ci": [row["alpha_lo"], row["alpha_hi"]], "r2_whole": row["r2"],
           "alpha_late": row["late_alpha"], "alpha_late_ci": [row["late_alpha_lo"], row["late_alpha_hi"]],
           "late_t_start": row["late_t_start"], "r2_late": row["late_r2"],
           "t_c": cx.t_c, "t_c_ci": list(cx_ci.loc["t_c"]), "alpha_early": cx.alpha_early, "alpha_late_hinge": cx.alpha_late,
           "delta": cx.alpha_late - cx.alpha_early, "delta_ci": list(cx_ci.loc["delta"]), "significant": cx.significant,
           "p_late_less_half": row["late_p_subdiffusive"], "p_whole_less_half": row["p_subdiffusive"],
           "notes": notes}
    return fit, test_crossover(fit["delta"], *fit["delta_ci"], fs.level, window="mean curve")


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    """Per-run eq-17 fits; H1 per run and across runs (late window = the claim, whole range = the
    paper's fit); the mean curve, its local slope and its crossover; summaries across runs."""
    tr, fs, an = ctx["train"], ctx.config.fit, ctx.config.analysis
    level = fs.level
    steps = np.asarray(tr["steps"], float)
    ok = ~np.asarray(tr["diverged"], bool)
    disp = np.asarray(tr["displacement"], float)[ok]
    runs = fit_runs(steps, disp, fs, [int(s) for s in np.asarray(tr["seeds"])[ok]], positions=np.flatnonzero(ok))
    bad = runs["fit_error"] != ""
    notes = [f"{int(bad.sum())} runs could not be fitted: {runs.loc[bad, 'fit_error'].iloc[0]}"] if bad.any() else []
    fitted = runs[~bad]
    hyps, per = test_h1_h3(fitted, level, an.seed, an.n_boot, h1_windows=("late", "whole"), windows=())
    curves = _curves(steps, disp, level, an.local_slope_halfwidth)
    mean_fit, crossover = _mean_curve_fit(steps, curves["curve_mean"], fs)
    hyps.append(crossover)

    def summ(col):
        return summarize(fitted[col].to_numpy(float), level, an.seed, n_boot=an.n_boot)

    late_notes = sorted({n for row in fitted["notes"].fillna("") for n in row.split("; ") if "late" in n or
                         "crossover" in n})
    summary = {"alpha_whole": summ("alpha"), "alpha_late": summ("late_alpha"), "alpha_early": summ("alpha_early"),
               "t_c": summ("t_c"), "r2_whole": summ("r2"), "r2_late": summ("late_r2"),
               "n_runs": int(disp.shape[0]), "n_fitted": int(len(fitted)), "n_diverged": int((~ok).sum()),
               "n_crossover_significant": int(fitted["crossover_significant"].fillna(False).astype(bool).sum()),
               "first_subdiffusive_step_mean_curve": curves.pop("first_subdiffusive_step_mean_curve"),
               "n_no_late_fit": int(fitted["late_alpha"].isna().sum()), "late_fit_notes": late_notes}
    ensemble = {"n_runs": int(np.size(tr["seeds"])), "n_params": int(tr["n_params"]),
                "train_acc_mean": float(np.mean(tr["final_train_acc"])),
                "test_acc_mean": float(np.mean(tr["final_test_acc"])), "n_grid_points": int(steps.size)}
    return {"runs": runs, "hypotheses": hyps, "h1_late_per_run": per["H1_late"].per_run_frame(), "summary": summary,
            "mean_fit": mean_fit, "ensemble": ensemble, **curves, "notes": notes}


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} seeds diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", description="train the moons SGD ensemble", shard=Sharding(single_cell, train_shard, train_merge)),
    Stage("analysis", stage_analysis, "per-run diffusion fits, H1, mean curve, local slope, crossover",
          skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.anomalous_diffusion import write_report as write

    return write(ctx)
