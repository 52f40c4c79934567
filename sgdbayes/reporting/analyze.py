"""Report of ``python -m sgdbayes.analyze`` (your own runs' displacement curves; docs/analyze_your_runs.md).

:func:`figures` draws the stored fits of :class:`sgdbayes.analyze.AnalysisResult` over the input
curves; :func:`render` writes report.md from the result with the report toolkit: the same verdict
table (one :class:`~sgdbayes.stats.results.HypothesisTest` per row) as the studies, p-values
labelled with their null hypothesis, the one formatter and missing glyph.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .format import MISSING, fmt_estimate, fmt_level, fmt_num, fmt_p, p_header
from .toolkit import (
    md_table,
    package_versions,
    per_run_table,
    regressions_table,
    save_figure,
    verdict_notes,
    verdict_table,
    versions_table,
)

__all__ = ["figures", "render", "FIGURES"]

FIGURES = ("curves_loglog.png", "alpha_ds_vs_llc.png")


# --------------------------------------------------------------------------- figures

def _fig_curves(res, data, path: Path) -> None:
    import matplotlib.pyplot as plt

    runs = list(res.fits)
    show = runs[:16]
    ncol = min(4, len(show))
    nrow = math.ceil(len(show) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False, constrained_layout=True)
    df = data.data
    for ax, run in zip(axes.flat, show):
        g = df[(df["run"] == run) & (df["displacement"] > 0)]
        f = res.fits[run]
        t = g["step"].to_numpy(float)
        ax.loglog(t, g["displacement"], ".", ms=2, color="0.5", label="R(t)")
        tt = np.geomspace(t.min(), t.max(), 50)
        ax.loglog(tt, np.exp(f.intercept) * tt ** f.alpha, "-", color="C0", lw=1.2, label=f"whole α={fmt_num(f.alpha)}")
        if f.late is not None:
            tl = np.geomspace(f.late.t_min, f.late.t_max, 30)
            ax.loglog(tl, np.exp(f.late.intercept) * tl ** f.late.alpha, "-", color="C3", lw=1.2,
                      label=f"late α={fmt_num(f.late.alpha)}")
        row = res.runs.loc[res.runs["run"] == run].iloc[0]
        if pd.notna(row.get("t_c")):
            if pd.notna(row["t_c_lo"]) and pd.notna(row["t_c_hi"]):
                ax.axvspan(row["t_c_lo"], row["t_c_hi"], color="C3", alpha=0.12)
            ax.axvline(row["t_c"], color="C3", lw=0.6, ls="--")
        ax.set_title(str(run), fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
        ax.tick_params(labelsize=6)
        ax.minorticks_off()
    for ax in list(axes.flat)[len(show):]:
        ax.set_visible(False)
    fig.supxlabel("step t")
    fig.supylabel("displacement R(t)")
    title = "log-log displacement with eq-17 fits (shaded: t_c interval)"
    if len(runs) > len(show):
        title += f" - first {len(show)} of {len(runs)} runs"
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=90, bbox_inches=None)


def _fig_llc(tab: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    t = tab[tab["llc"].notna()]
    for pre, color, lab in (("", "C0", "whole"), ("late_", "C3", "late")):
        if pre + "alpha" not in t or t[pre + "alpha"].isna().all():
            continue
        a = t[pre + "alpha"].astype(float)
        axes[0].errorbar(t["llc"], a, yerr=[a - t[pre + "alpha_lo"].astype(float), t[pre + "alpha_hi"].astype(float) - a],
                         xerr=t["llc_se"].astype(float), fmt="o", ms=3, color=color, label=lab, lw=0.7)
        d = t[pre + "d_s"].astype(float)
        axes[1].errorbar(t["llc"], d, yerr=[d - t[pre + "d_s_lo"].astype(float), t[pre + "d_s_hi"].astype(float) - d],
                         xerr=t["llc_se"].astype(float), fmt="o", ms=3, color=color, label=lab, lw=0.7)
    axes[0].axhline(0.5, color="k", ls="--", lw=0.8, label="α = 1/2")
    axes[0].set_xlabel("λ (final LLC)")
    axes[0].set_ylabel("α (eq 17)")
    lim = np.array([min(0, t["llc"].min()), t["llc"].max()])
    axes[1].plot(lim, lim, "k--", lw=0.8, label="d_s = λ")
    axes[1].set_xlabel("λ (final LLC)")
    axes[1].set_ylabel("d_s = 2λα")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("α and d_s vs λ (95 % intervals)", fontsize=9)
    save_figure(fig, path)


def figures(res, data, figdir: Path) -> list[str]:
    """``curves_loglog.png`` (every figure of a run comes from its stored fit) and, with LLC,
    ``alpha_ds_vs_llc.png``; returns the file names written."""
    _fig_curves(res, data, figdir / FIGURES[0])
    out = [FIGURES[0]]
    if "llc" in res.runs and res.runs["llc"].notna().any():
        _fig_llc(res.runs, figdir / FIGURES[1])
        out.append(FIGURES[1])
    return out


# --------------------------------------------------------------------------- markdown

METHODS = [
    "- Eq 17: `log R(t) = α log t + c`, α = d_s / (2λ); d_walk = 1/α (eq 12); d_s = 2λα. r² is the OLS r² of the "
    "log-log fit (the paper's r²). docs/methods.md#diffusion-fits-eq-17.",
    "- Residuals of log R(t) are strongly autocorrelated, so OLS (and Newey-West) intervals undercover. Intervals here "
    "come from regression with AR(1) errors with a calibrated standard error (docs/methods.md#diffusion-fits-eq-17, "
    "with the simulations that measure their coverage).",
    "- Crossover t_c: two-segment (hinge) fit in log-log space; the late window is t ≥ t_c.",
    "- Final λ = mean of the last 10 non-missing LLC estimates, se = std/√n (the estimates are autocorrelated, so this "
    "se is optimistic); λ̄ (H3) = mean of all estimates.",
    "- d_s interval by the delta method: se(d_s)² = (2α)² se(λ)² + (2λ)² se(α)².",
    "- **Equivalence:** because d_s = 2λα, H2 (d_s ≤ λ, Lemma 3.4) is equivalent to α ≤ 1/2 whenever λ > 0: as "
    "measured by eq 17 it is a test of sub-diffusion and λ enters only through its sign. H3 (α ≤ λ̄ / (2λ_final)) "
    "does depend on λ. Runs with λ ≤ 0 are excluded from H2/H3 tests and listed separately.",
    "- Per-run tests are one-sided with the claim as the alternative; Holm-adjusted across runs "
    "(`multipletests(method='holm')`). Across runs: the median difference with a percentile bootstrap interval and "
    "the Wilcoxon signed-rank p-value (H0: median ≥ 0); the verdict by the one rule of every sgdbayes report "
    "(docs/methods.md#verdicts).",
]


def _per_run(tab: pd.DataFrame, level: float) -> str:
    pct = fmt_level(level).replace(" ", "")
    rows = []
    for r in tab.itertuples(index=False):
        lam = MISSING
        if pd.notna(r.llc):
            lam = fmt_num(r.llc) + (f" ± {fmt_num(r.llc_se)}" if pd.notna(r.llc_se) else "")
        rows.append([r.run, r.n_points, fmt_estimate(r.alpha, r.alpha_lo, r.alpha_hi), fmt_num(r.r2),
                     fmt_p(r.p_subdiffusive), fmt_estimate(r.t_c, r.t_c_lo, r.t_c_hi),
                     fmt_estimate(r.late_alpha, r.late_alpha_lo, r.late_alpha_hi), lam,
                     fmt_estimate(r.d_s, r.d_s_lo, r.d_s_hi)])
    return md_table(["run", "n", f"α [{pct} CI]", "r²", f"one-sided {p_header('α ≥ 1/2')}", "t_c [CI]",
                     "late α [CI]", "λ ± se", "d_s [CI]"], rows)


def _hypotheses(res) -> list[str]:
    tab = res.runs
    if not res.hypotheses:
        return ["No run could be fitted, so no hypothesis was tested.", ""]
    out = [verdict_table(res.hypotheses), "", verdict_notes(res.hypotheses), "",
           "Per-run view (each run's own one-sided test, Holm across runs):", "",
           per_run_table(res.hypotheses), ""]
    if "llc" in tab:
        neg = tab[tab["llc"].notna() & (tab["llc"] <= 0)]
        nol = tab[tab["llc"].isna()]
        out.append(f"Runs with λ ≤ 0: {len(neg)}" + (f" ({', '.join(map(str, neg['run']))})" if len(neg) else "")
                   + f"; runs without LLC: {len(nol)}.")
        if len(neg):
            out += ["", md_table(["run", "λ", "λ se", "α", "d_s"], neg[["run", "llc", "llc_se", "alpha", "d_s"]]
                                 .itertuples(index=False)), ""]
        out.append("")
    return out


def render(res, runs_file: str, figs: list[str]) -> str:
    """report.md of an analysis: settings, methods, verdicts, per-run fits, skipped runs, regressions,
    figures, versions."""
    s, tab = res.settings, res.runs
    n_unfit = int(res.skipped["reason"].str.startswith("could not be fitted").sum()) if len(res.skipped) else 0
    L = [f"# Diffusion analysis of `{runs_file}`", "",
         f"- runs in file: {len(tab) + len(res.skipped)}; fitted: {len(tab)}; skipped (fewer than {s['min_points']} "
         f"points with R > 0): {len(res.skipped) - n_unfit}; could not be fitted: {n_unfit}",
         f"- run covariates: {', '.join(res.covariates) if res.covariates else 'none'}",
         f"- late window: {s['late_window'] or 'none'}; grid: {s['n_grid']} points evenly spaced in log t; interval "
         f"method: {s['method']} ({s['n_boot']} bootstrap draws); level {fmt_num(s['level'])}", ""]
    L += [f"- warning: {w}" for w in res.warnings]
    L += ["## Methods", "", *METHODS, "", "## Verdicts", "", *_hypotheses(res), "## Per-run fits", ""]
    if len(tab):
        L += [_per_run(tab, s["level"]), ""]
    if len(res.skipped):
        L += [f"Skipped and unfit runs ({len(res.skipped)}), with the reason:", "",
              md_table(["run", "points with R > 0", "reason"], res.skipped.itertuples(index=False)), ""]
    L += ["## Cross-run regressions", ""]
    if res.regressions is not None:
        n_p = int(res.regressions.frame["pvalue"].notna().sum())
        L += ["OLS slopes with HC3 intervals, Spearman ρ with bootstrap intervals over runs (exact p-value for ≤ 10 "
              "runs), Deming (errors-in-variables) slope for d_s vs λ with bootstrap interval; all p-values "
              f"Holm-adjusted across the {n_p} tests of this table (docs/methods.md#summaries-and-regressions-across-runs).",
              "", regressions_table(res.regressions), ""]
    else:
        L += ["Not computed (fewer than 4 fitted runs or no numeric covariate / LLC).", ""]
    L += ["## Figures", "", *[f"![{f}](figures/{f})" for f in figs], "", "## Versions", "",
          versions_table(package_versions(["sgdbayes", "numpy", "scipy", "pandas", "statsmodels", "matplotlib"])), ""]
    return "\n".join(L)
