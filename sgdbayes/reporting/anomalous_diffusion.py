"""Report of the anomalous_diffusion study (paper §3.1.1, Fig 1, eq 11; docs/methods.md).

``build`` gathers the stored stage outputs (Results kept as Results) into results.json, the
figures plot stored numbers only, and ``render`` writes report.md from results.json as read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import MISSING, fmt_estimate, fmt_interval, fmt_num
from .toolkit import (
    apply_style,
    divergence_sentence,
    executor_sentence,
    header,
    md_table,
    methods_section,
    per_run_table,
    preset_label,
    save_figure,
    study_header,
    summary_cell,
    verdict_notes,
    verdict_table,
    write_skipped_report,
    write_study_report,
)

__all__ = ["write_report", "build", "render", "PROTOTYPE"]

#: a prototype of this ensemble at the paper's settings, before sgdbayes (docs/methods.md#diffusion-fits-eq-17)
PROTOTYPE = {"alpha_whole": 0.70, "alpha_whole_pm": 0.05, "alpha_late": 0.39, "alpha_late_pm": 0.05,
             "source": "a prototype of this ensemble at the paper's settings (docs/methods.md#diffusion-fits-eq-17)"}


def build(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    st = np.asarray(an["slope_t"], float)
    slopes = {k: np.asarray(an[k], float) for k in ("slope_mean_curve", "slope_runs_mean", "slope_lo", "slope_hi")}
    return {**study_header(ctx, ["mnist1d"]), "ensemble": an["ensemble"], "hypotheses": an["hypotheses"],
            "summary": an["summary"], "mean_fit": an["mean_fit"], "notes": an["notes"], "divergence": tr["divergence"],
            "prototype": PROTOTYPE,
            "slope_final": {"t": st[-1], "mean_curve": slopes["slope_mean_curve"][-1],
                            "runs_mean": slopes["slope_runs_mean"][-1],
                            "ci": [slopes["slope_lo"][-1], slopes["slope_hi"][-1]]},
            "slope_at": {"t": st[::8], "mean_curve": slopes["slope_mean_curve"][::8],
                         "runs_mean": slopes["slope_runs_mean"][::8], "lo": slopes["slope_lo"][::8],
                         "hi": slopes["slope_hi"][::8]}}


# --------------------------------------------------------------------------- figures

def _fig_displacement(ctx, r: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tr, an = ctx["train"], ctx["analysis"]
    t = np.asarray(an["curve_steps"], float)
    mf = r["mean_fit"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    disp = np.asarray(tr["displacement"], float)
    show = np.linspace(0, disp.shape[0] - 1, min(disp.shape[0], ctx.config.report.max_curves)).astype(int)
    for k in show:
        ax.plot(t, disp[k], color="#999999", lw=0.3, alpha=0.4)
    ax.fill_between(t, an["curve_q05"], an["curve_q95"], color="#1f77b4", alpha=0.15, label="5–95 % of runs")
    ax.fill_between(t, an["curve_mean_lo"], an["curve_mean_hi"], color="#1f77b4", alpha=0.45,
                    label="95 % CI of the mean")
    ax.plot(t, an["curve_mean"], color="#1f77b4", lw=1.8, label="mean R(t)")
    ax.plot(t, an["curve_brownian"], color="k", ls="--", lw=1.2, label=r"Brownian $\propto t^{1/2}$ (anchored at t=1)")
    ax.axvline(mf["t_c"], color="#d62728", lw=0.9, ls=":", label=f"crossover t_c = {fmt_num(mf['t_c'])}")
    ax.axvspan(*mf["t_c_ci"], color="#d62728", alpha=0.1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step t")
    ax.set_ylabel(r"displacement $R(t)=\|w_t-w_0\|_2$")
    ax.set_title("Fig 1 analogue: mean weight displacement", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1]
    st = np.asarray(an["slope_t"], float)
    ax.fill_between(st, an["slope_q05"], an["slope_q95"], color="#2ca02c", alpha=0.15, label="5–95 % of runs")
    ax.fill_between(st, an["slope_lo"], an["slope_hi"], color="#2ca02c", alpha=0.45, label="95 % CI of mean run slope")
    ax.plot(st, an["slope_runs_mean"], color="#2ca02c", lw=1.5, label="mean of per-run local slopes")
    ax.plot(st, an["slope_mean_curve"], color="#1f77b4", lw=1.2, ls="-.", label="local slope of the mean curve")
    ax.axhline(0.5, color="k", ls="--", lw=1, label="Brownian 1/2")
    ax.axvline(mf["t_c"], color="#d62728", lw=0.9, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("SGD step t")
    ax.set_ylabel(r"local slope $d\log R/d\log t$")
    ax.set_title("Local diffusion exponent over time", fontsize=9)
    ax.legend(fontsize=6)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_alpha(ctx, path: Path) -> Path:
    import matplotlib.pyplot as plt

    runs = ctx["analysis"]["runs"]
    a_w, a_l = runs["alpha"].to_numpy(float), runs["late_alpha"].to_numpy(float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    both = np.r_[a_w, a_l]
    bins = np.linspace(np.nanmin(both) - 0.02, np.nanmax(both) + 0.02, 40)
    axes[0].hist(a_w[np.isfinite(a_w)], bins=bins, alpha=0.6, label="whole range (paper's fit)")
    axes[0].hist(a_l[np.isfinite(a_l)], bins=bins, alpha=0.6, label="late window (t ≥ t_c)")
    axes[0].axvline(0.5, color="k", ls="--", lw=1)
    axes[0].set_xlabel(r"per-run slope $\alpha$ (eq 17)")
    axes[0].set_ylabel("runs")
    axes[0].legend(fontsize=7)
    axes[0].set_title("Whole-range vs late-window α per run", fontsize=9)
    tc = runs["t_c"].to_numpy(float)
    tc = tc[np.isfinite(tc)]
    if tc.size:
        axes[1].hist(tc, bins=np.geomspace(tc.min(), tc.max() * 1.01 + 1e-9, 30), color="#d62728", alpha=0.7)
        axes[1].set_xscale("log")
    axes[1].set_xlabel("per-run crossover t_c")
    axes[1].set_ylabel("runs")
    axes[1].set_title("Two-segment crossover per run (App B.3)", fontsize=9)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def figures(ctx, r: dict, figdir: Path) -> list[Path]:
    apply_style()
    return [_fig_displacement(ctx, r, figdir / "fig1_displacement.png"),
            _fig_alpha(ctx, figdir / "alpha_and_crossover.png")]


# --------------------------------------------------------------------------- markdown

def _summary(r: dict) -> list[str]:
    s, mf = r["summary"], r["mean_fit"]
    h1, hw = r["hypotheses"][0], r["hypotheses"][1]
    al, aw = s["alpha_late"], s["alpha_whole"]
    flips = (str(h1.verdict) == "supported") != (str(hw.verdict) == "supported")
    sf = r["slope_final"]
    return [
        f"- **H1 (late window)**: median α_late = {fmt_estimate(al.median, al.median_ci_low, al.median_ci_high)}; "
        f"{h1.details['n_support_holm']} of {h1.n_tested} runs individually significant after Holm; verdict: "
        f"**{h1.verdict}**."
        + (" The support is at the population level only: the median is below 1/2 but no single run's late "
           "window is long enough for its own one-sided test to pass Holm." if str(h1.verdict) == "supported"
           and not h1.details["n_support_holm"] else ""),
        f"- **Local slope at the end of training** (t = {fmt_num(sf['t'])}): mean of per-run slopes "
        f"{fmt_estimate(sf['runs_mean'], *sf['ci'])}; slope of the mean curve {fmt_num(sf['mean_curve'])}. The local "
        f"slope keeps falling after t_c, so a single late power law averages a still-decreasing exponent.",
        f"- **Whole range (the paper's single fit)**: median α = "
        f"{fmt_estimate(aw.median, aw.median_ci_low, aw.median_ci_high)}; verdict on α < 1/2: **{hw.verdict}**. "
        + ("The H1 conclusion flips with the window (as in a prototype of this ensemble, "
           "docs/methods.md#diffusion-fits-eq-17)." if flips else
           "The H1 conclusion does not flip with the window here (a prototype of this ensemble found that it did, "
           "docs/methods.md#diffusion-fits-eq-17)."),
        f"- **Mean curve**: whole-range α = {fmt_estimate(mf['alpha_whole'], *mf['alpha_whole_ci'])}, late α = "
        f"{fmt_estimate(mf['alpha_late'], *mf['alpha_late_ci'])} (t ≥ {fmt_num(mf['late_t_start'])}); crossover "
        f"t_c = {fmt_estimate(mf['t_c'], *mf['t_c_ci'])}; early slope {fmt_num(mf['alpha_early'])} → late "
        f"{fmt_num(mf['alpha_late_hinge'])}. The local slope of the mean curve first drops below 1/2 at t ≈ "
        f"{fmt_num(s['first_subdiffusive_step_mean_curve'])}.",
    ]


def _beside_paper(r: dict) -> str:
    s, mf, p = r["summary"], r["mean_fit"], r["prototype"]
    return md_table(["quantity", "this study (median over runs [95 % bootstrap CI])", "mean curve fit [95 % CI]",
                     "prototype / paper"], [
        ["α, whole range (eq 17 over all t)", summary_cell(s["alpha_whole"]),
         fmt_estimate(mf["alpha_whole"], *mf["alpha_whole_ci"]),
         f"{fmt_num(p['alpha_whole'])} ± {fmt_num(p['alpha_whole_pm'])} (prototype)"],
        ["α, late window (t ≥ t_c)", summary_cell(s["alpha_late"]), fmt_estimate(mf["alpha_late"], *mf["alpha_late_ci"]),
         f"{fmt_num(p['alpha_late'])} ± {fmt_num(p['alpha_late_pm'])} (prototype, late half)"],
        ["α, early segment (hinge fit)", summary_cell(s["alpha_early"]), fmt_num(mf["alpha_early"]),
         "super-diffusive (> 1/2), Fig 1"],
        ["crossover t_c", summary_cell(s["t_c"]), fmt_estimate(mf["t_c"], *mf["t_c_ci"]), "not given"],
        ["r² of the whole-range fit", summary_cell(s["r2_whole"]), fmt_num(mf["r2_whole"]), "not given"],
        ["r² of the late fit", summary_cell(s["r2_late"]), fmt_num(mf["r2_late"]), "not given"],
    ])


def _methods(r: dict) -> str:
    cfg = r["config"]
    tr, fit, an = cfg["train"], cfg["fit"], cfg["analysis"]
    sgd = "plain SGD" if not tr.get("momentum") else f"SGD with momentum {fmt_num(tr['momentum'])}"
    notes = [
        f"**Data / model / SGD** (paper App G.4): `make_moons`, n = {cfg['data']['n']}, noise "
        f"{fmt_num(cfg['data']['noise'])}, data seed {cfg['data']['seed']}; MLP "
        f"2→{'→'.join(map(str, cfg['model']['hidden']))}→2 ReLU ({r['ensemble']['n_params']} parameters), PyTorch "
        f"default init; {sgd} lr {fmt_num(tr['lr'])}, batch {tr['batch_size']} (per-seed shuffles, drop_last), "
        f"{tr['steps']} steps; all seeds trained as one batched computation. Mean final train accuracy "
        f"{fmt_num(r['ensemble']['train_acc_mean'])}, test {fmt_num(r['ensemble']['test_acc_mean'])}.",
        f"**Displacement**: R(t) = ‖w_t − w_0‖₂ over all parameters, recorded every {tr['record_every']} steps and "
        f"at {tr['record_log_points']} geometric steps ({r['ensemble']['n_grid_points']} points).",
        f"**Per-run fit (eq 17)**: log R = α log t + c on {fit['n_grid']} points evenly spaced in log t; interval "
        f"method `{fit['method']}` ({fit['n_boot']} bootstrap resamples; the plain OLS interval is far too narrow for "
        f"a cumulative curve; docs/methods.md#diffusion-fits-eq-17). Whole range = the paper's fit. Late window: "
        f"t ≥ t_c, the knot of a two-segment (hinge) least-squares fit in log–log space (App B.3).",
        f"**H1** (docs/methods.md#h1-h2-h3-per-run-and-across-runs): per run, one-sided test of H0 α ≥ 1/2; Holm "
        f"across runs; across runs, the median of α − 1/2 with a percentile bootstrap interval ({an['n_boot']} "
        f"resamples) and the Wilcoxon signed-rank p-value of H0 (median ≥ 0); verdict by the one rule "
        f"(docs/methods.md#verdicts).",
        f"**Mean curve**: mean over runs of R(t) (band: t-interval of the mean; 5–95 % quantiles of runs). Brownian "
        f"reference R_B(t) = R̄(1)·t^½. Local slope: OLS of ln R on ln t over |Δ ln t| ≤ "
        f"{fmt_num(an['local_slope_halfwidth'])} around each of 64 log-spaced steps.",
    ]
    seeds = f"{tr['seed_offset']}..{tr['seed_offset'] + tr['seeds'] - 1}"
    timings = {**r["timing"], "report": {"wall_s": r["timing_report_s"], "device": r["device"], "cached": False}}
    return methods_section(cfg, seeds=seeds, device=f"{r['device']} (torch CPU threads {r['torch_threads']})",
                           executor=executor_sentence(r.get("executor")), versions=r["versions"], timings=timings,
                           notes=notes)


def _diagnostics(r: dict) -> list[str]:
    s, mf, sa = r["summary"], r["mean_fit"], r["slope_at"]
    lines = [f"- Runs: {s['n_runs']} trained, {s['n_diverged']} diverged, {s['n_fitted']} fitted. Per-run crossover "
             f"slope change significant (interval excludes 0) in {s['n_crossover_significant']} of {s['n_fitted']} "
             f"runs. {s['n_no_late_fit']} runs have no late-window fit (excluded from the late H1 test): "
             + ("; ".join(s["late_fit_notes"][:5]) or MISSING) + ".",
             "- Local slope at selected steps (mean of per-run slopes [95 % CI]; slope of the mean curve): "
             + "; ".join(f"t = {fmt_num(t)}: {fmt_num(m)} {fmt_interval(lo, hi)}, {fmt_num(mc)}"
                         for t, m, lo, hi, mc in zip(sa["t"], sa["runs_mean"], sa["lo"], sa["hi"], sa["mean_curve"]))
             + "."]
    return lines + [f"- note: {n}" for n in r["notes"] + mf["notes"]]


FIGURES = [("fig1_displacement.png", "Left: Fig 1 analogue — mean R(t) with the 95 % CI of the mean and the 5–95 % "
            "band of runs, against a Brownian t^½ line anchored at the mean at t = 1; the dotted line and shading are "
            "t_c and its interval. Right: local slope d log R / d log t."),
           ("alpha_and_crossover.png", "Per-run α (whole range vs late window) and per-run crossover t_c.")]


def render(r: dict) -> str:
    cfg = r["config"]
    L = [header("Anomalous diffusion (paper §3.1.1, Fig 1, eq 11)", preset=preset_label(r),
                seeds=f"{cfg['train']['seeds']} seeds", device=r["device"], config_hash=r["config_hash"],
                generated=r["generated"], wall_total_s=r["wall_total_s"]),
         divergence_sentence(r.get("divergence")) + "\n", "## Verdicts\n", verdict_table(r["hypotheses"]), "",
         verdict_notes(r["hypotheses"]) + "\n",
         "Per-run view (each run's own one-sided test, Holm across runs):\n", per_run_table(r["hypotheses"]), "",
         "**Summary.**\n", *_summary(r), "", "## Results beside the paper\n",
         "The paper reports Fig 1 qualitatively (\"early super-diffusion followed by late stage sub-diffusion\") with "
         f"no numbers; the last column gives {r['prototype']['source']}.\n", _beside_paper(r), "", "## Figures\n"]
    L += [f"![{cap}](figures/{f})\n\n*{cap}*\n" for f, cap in FIGURES]
    L += [_methods(r), "## Diagnostics\n", *_diagnostics(r), ""]
    return "\n".join(L) + "\n"


def write_report(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build, figures, render)
