"""Reports of the three diffusion studies: anomalous_diffusion, spectral_dimension, ablations.

Same pattern as :mod:`sgdbayes.reporting.pc_report`: ``build_*`` collects every number the report
shows from the cached stage outputs into one dict, ``results.json`` is written atomically, and the
markdown is rendered from the *stored* file only (so every number in the text is in results.json).
Figures are drawn into ``figures/``.
"""
from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..runner.cache import to_jsonable  # noqa: E402
from .markdown import atomic_savefig, md_table  # noqa: E402
from .pc_report import fmt, fmt_ci  # noqa: E402
from .study_report import (  # noqa: E402
    divergence_sentence,
    package_versions,
    preset_label,
    write_skipped_report,
    write_study_report,
)

__all__ = ["write_anomalous_diffusion", "write_spectral_dimension", "write_ablations",
           "render_anomalous_diffusion", "render_spectral_dimension", "render_ablations", "EQUIVALENCE_NOTE"]

EQUIVALENCE_NOTE = (
    "**d_s ≤ λ is α ≤ 1/2.** d_s is measured by eq 17 as d_s = 2λα, so for every run with λ > 0 "
    "the inequality d_s ≤ λ (Lemma 3.4, H2) is exactly α ≤ 1/2: as measured, Lemma 3.4 is a test of "
    "sub-diffusion and λ's value enters only through its sign (SCIENCE.md §3). For H3 the test is "
    "α ≤ λ̄ / (2 λ_final), which does depend on λ. Runs with λ ≤ 0 are reported separately (for them "
    "d_s ≤ λ would mean α ≥ 1/2) and excluded from the per-run H2/H3 tests.")


# --------------------------------------------------------------------------- shared pieces

def _versions() -> dict:
    return package_versions(["sgdbayes", "torch", "numpy", "scipy", "statsmodels", "pandas", "matplotlib", "mnist1d"])


def _timing(ctx) -> dict:
    return {s: {"wall_s": float(info.get("wall_s", float("nan"))), "device": info.get("device"),
                "cached": bool(info.get("cached", False))}
            for s, info in ctx.stage_info.items() if not s.startswith("_")}


def _header(ctx) -> dict:
    # threads of the stages as they were computed (a cached stage keeps its own)
    threads = sorted({int(info["torch_threads"]) for s, info in ctx.stage_info.items()
                      if not s.startswith("_") and info.get("torch_threads") is not None})
    return {"study": ctx.study.name, "title": ctx.study.title, "presets": ctx.presets, "sets": ctx.sets,
            "config_hash": ctx.config_hash, "config": ctx.config_dict, "device": ctx.device,
            "torch_threads": "/".join(map(str, threads)) or "n/a",
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": _versions(), "timing": _timing(ctx)}


def _table(headers, rows) -> str:
    return md_table([[str(c) for c in r] for r in rows], headers=headers)


def _verdict_table(hyps: list[dict], level: float) -> str:
    rows = []
    for h in hyps:
        per = "—"
        if h.get("n_tested") is not None and h.get("n_support_holm") is not None:
            per = (f"{h['n_support_holm']}/{h['n_tested']} (Holm); upper bound below threshold in "
                   f"{fmt(100 * h['share_upper_below']) if h.get('share_upper_below') is not None else '—'} %")
            if h.get("n_excluded"):
                per += f"; {h['n_excluded']} excluded"
            if h.get("sign_p") is not None:
                per += f"; sign test: {h['n_below']} below, p = {fmt(h['sign_p'])}"
        p = fmt(h.get("pvalue")) + (f" ({h['p_label']})" if h.get("pvalue") is not None else "")
        rows.append([h["id"], h["claim"], h.get("window", "—"), h["statistic"], fmt(h["value"]), fmt_ci(h["ci"]),
                     p, per, f"**{h['verdict']}**"])
    return _table(["hypothesis", "claim", "window", "statistic", "estimate", f"{level:.0%} interval", "p-value",
                   "runs supporting", "verdict"], rows)


def _timing_table(r: dict) -> str:
    rows = [[s, fmt(t["wall_s"]), t["device"], "cache" if t["cached"] else "computed now"]
            for s, t in r["timing"].items()]
    rows.append(["report", fmt(r.get("timing_report_s")), r["device"], "computed now"])
    rows.append(["total (stages when computed + report)", fmt(r.get("wall_total_s")), r["device"], ""])
    return _table(["stage", "wall s", "device", "this run"], rows)


def _methods_common(r: dict) -> list[str]:
    return [
        f"- **Device**: {r['device']} (torch CPU threads {r['torch_threads']}; `--device auto` selects CUDA when "
        f"present). **Versions**: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        f"- **Configuration**: presets {'+'.join(r['presets'])}"
        + (f", overrides `{' '.join(r['sets'])}`" if r["sets"] else "") + f"; config hash `{r['config_hash']}` "
        f"(the full resolved configuration is in `results.json` → `config`).",
    ]


def _sgd(cfg: dict) -> str:
    """'plain SGD', or 'SGD with momentum m' when train.momentum > 0."""
    m = cfg["train"].get("momentum", 0.0)
    return "plain SGD" if not m else f"SGD with momentum {fmt(m)}"


def _stat_cell(s: dict) -> str:
    """'median [CI] (mean ± sd, n)' of a stats_of dict."""
    if not s or s.get("n", 0) == 0:
        return "—"
    return (f"{fmt(s['median'])} {fmt_ci(s['median_ci'])} (mean {fmt(s['mean'])} {fmt_ci(s['mean_ci'])}, "
            f"sd {fmt(s['sd'])}, n = {s['n']})")


def _style():
    try:
        import seaborn as sns

        sns.set_theme(style="whitegrid", context="paper")
    except Exception:  # pragma: no cover
        pass


def _save(fig, path: Path, dpi: int) -> Path:
    return atomic_savefig(fig, path, dpi=dpi)


def _arr(x) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in x], float)


# =========================================================================== anomalous diffusion

def build_anomalous_diffusion(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    r = _header(ctx)
    r.update({
        "ensemble": {"n_runs": int(np.size(tr["seeds"])), "n_params": int(tr["n_params"]),
                     "train_acc_mean": float(np.mean(tr["final_train_acc"])),
                     "test_acc_mean": float(np.mean(tr["final_test_acc"])),
                     "n_grid_points": int(np.size(tr["steps"]))},
        "hypotheses": an["hypotheses"], "summary": an["summary"], "mean_fit": an["mean_fit"], "notes": an["notes"],
        "divergence": tr["divergence"],
        "prototype": {"alpha_whole": 0.70, "alpha_whole_pm": 0.05, "alpha_late": 0.39, "alpha_late_pm": 0.05,
                      "source": "SCIENCE.md §4 (prototype of this ensemble at the paper's settings)"},
        "slope_final": {"t": float(np.asarray(an["slope_t"], float)[-1]),
                        "mean_curve": float(np.asarray(an["slope_mean_curve"], float)[-1]),
                        "runs_mean": float(np.asarray(an["slope_runs_mean"], float)[-1]),
                        "ci": [float(np.asarray(an["slope_lo"], float)[-1]), float(np.asarray(an["slope_hi"], float)[-1])]},
        "slope_at": {"t": list(np.asarray(an["slope_t"], float)[::8]),
                     "mean_curve": list(np.asarray(an["slope_mean_curve"], float)[::8]),
                     "runs_mean": list(np.asarray(an["slope_runs_mean"], float)[::8]),
                     "lo": list(np.asarray(an["slope_lo"], float)[::8]),
                     "hi": list(np.asarray(an["slope_hi"], float)[::8])},
    })
    return to_jsonable(r)


def _figures_ad(ctx, r: dict, figdir: Path) -> list[Path]:
    _style()
    tr, an = ctx["train"], ctx["analysis"]
    dpi = ctx.config.report.dpi
    t = np.asarray(an["curve_steps"], float)
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    disp = np.asarray(tr["displacement"], float)
    show = np.linspace(0, disp.shape[0] - 1, min(disp.shape[0], ctx.config.report.max_curves)).astype(int)
    for k in show:
        ax.plot(t, disp[k], color="#999999", lw=0.3, alpha=0.4)
    ax.fill_between(t, an["curve_q05"], an["curve_q95"], color="#1f77b4", alpha=0.15, label="5–95 % of runs")
    ax.fill_between(t, an["curve_mean_lo"], an["curve_mean_hi"], color="#1f77b4", alpha=0.45, label="95 % CI of the mean")
    ax.plot(t, an["curve_mean"], color="#1f77b4", lw=1.8, label="mean R(t)")
    ax.plot(t, an["curve_brownian"], color="k", ls="--", lw=1.2, label=r"Brownian $\propto t^{1/2}$ (anchored at t=1)")
    mf = r["mean_fit"]
    ax.axvline(mf["t_c"], color="#d62728", lw=0.9, ls=":", label=f"crossover t_c = {mf['t_c']:.3g}")
    ax.axvspan(*[v for v in mf["t_c_ci"]], color="#d62728", alpha=0.1)
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("SGD step t"); ax.set_ylabel(r"displacement $R(t)=\|w_t-w_0\|_2$")
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
    ax.set_xscale("log"); ax.set_xlabel("SGD step t"); ax.set_ylabel(r"local slope $d\log R/d\log t$")
    ax.set_title("Local diffusion exponent over time", fontsize=9)
    ax.legend(fontsize=6)
    out.append(_save(fig, figdir / "fig1_displacement.png", dpi))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    runs = an["runs"]
    a_w, a_l = _arr(runs["alpha"]), _arr(runs.get("late_alpha", [None] * len(runs["alpha"])))
    bins = np.linspace(np.nanmin(np.r_[a_w, a_l]) - 0.02, np.nanmax(np.r_[a_w, a_l]) + 0.02, 40)
    axes[0].hist(a_w[np.isfinite(a_w)], bins=bins, alpha=0.6, label="whole range (paper's fit)")
    axes[0].hist(a_l[np.isfinite(a_l)], bins=bins, alpha=0.6, label="late window (t ≥ t_c)")
    axes[0].axvline(0.5, color="k", ls="--", lw=1)
    axes[0].set_xlabel(r"per-run slope $\alpha$ (eq 17)"); axes[0].set_ylabel("runs"); axes[0].legend(fontsize=7)
    axes[0].set_title("Whole-range vs late-window α per run", fontsize=9)
    tc = _arr(runs.get("t_c", [None] * len(runs["alpha"])))
    tc = tc[np.isfinite(tc)]
    if tc.size:
        axes[1].hist(tc, bins=np.geomspace(tc.min(), tc.max() * 1.01 + 1e-9, 30), color="#d62728", alpha=0.7)
        axes[1].set_xscale("log")
    axes[1].set_xlabel("per-run crossover t_c"); axes[1].set_ylabel("runs")
    axes[1].set_title("Two-segment crossover per run (App B.3)", fontsize=9)
    out.append(_save(fig, figdir / "alpha_and_crossover.png", dpi))
    return out


def render_anomalous_diffusion(r: dict) -> str:
    cfg = r["config"]
    s, mf, p = r["summary"], r["mean_fit"], r["prototype"]
    level = cfg["fit"]["level"]
    L: list[str] = []
    a = L.append
    a("# Anomalous diffusion (paper §3.1.1, Fig 1, eq 11)\n")
    a(preset_label(r)
      + f"; {cfg['train']['seeds']} seeds; device {r['device']}; config hash `{r['config_hash']}`; generated "
      f"{r['generated']}; total wall time {fmt(r['wall_total_s'])} s. Every number below is read from "
      f"`results.json` beside this file.\n")
    a(divergence_sentence(r.get("divergence")) + "\n")
    a("## Verdicts\n")
    a(_verdict_table(r["hypotheses"], level))
    a("")
    h1 = r["hypotheses"][0]
    hw = r["hypotheses"][1]
    a("**Summary.**\n")
    a(f"- **H1 (late window)**: median α_late = {fmt(s['alpha_late']['median'])} {fmt_ci(s['alpha_late']['median_ci'])}; "
      f"{h1['n_support_holm']} of {h1['n_tested']} runs individually significant after Holm; verdict: "
      f"**{h1['verdict']}**."
      + (" The support is at the population level only: the median is below 1/2 but no single run's late "
         "window is long enough for its own one-sided test to pass Holm." if h1["verdict"] == "supported"
         and not h1["n_support_holm"] else ""))
    sf = r["slope_final"]
    a(f"- **Local slope at the end of training** (t = {fmt(sf['t'])}): mean of per-run slopes {fmt(sf['runs_mean'])} "
      f"{fmt_ci(sf['ci'])}; slope of the mean curve {fmt(sf['mean_curve'])}. The local slope keeps falling after t_c, "
      f"so a single late power law averages a still-decreasing exponent.")
    a(f"- **Whole range (the paper's single fit)**: median α = {fmt(s['alpha_whole']['median'])} "
      f"{fmt_ci(s['alpha_whole']['median_ci'])}; verdict on α < 1/2: **{hw['verdict']}**. "
      + ("The H1 conclusion flips with the window (as in the SCIENCE.md §4 prototype)."
         if (h1['verdict'] == 'supported') != (hw['verdict'] == 'supported') else
         "The H1 conclusion does not flip with the window here (the SCIENCE.md §4 prototype found that it did)."))
    a(f"- **Mean curve**: whole-range α = {fmt(mf['alpha_whole'])} {fmt_ci(mf['alpha_whole_ci'])}, late α = "
      f"{fmt(mf['alpha_late'])} {fmt_ci(mf['alpha_late_ci'])} (t ≥ {fmt(mf['late_t_start'])}); crossover t_c = "
      f"{fmt(mf['t_c'])} {fmt_ci(mf['t_c_ci'])}; early slope {fmt(mf['alpha_early'])} → late "
      f"{fmt(mf['alpha_late_hinge'])}. The local slope of the mean curve first drops below 1/2 at t ≈ "
      f"{fmt(s['first_subdiffusive_step_mean_curve'])}.")
    a("")
    a("## Results beside the paper\n")
    a("The paper reports Fig 1 qualitatively (\"early super-diffusion followed by late stage sub-diffusion\") "
      "with no numbers; SCIENCE.md §4 records a prototype of this ensemble.\n")
    a(_table(["quantity", "this study (median over runs [95 % bootstrap CI])", "mean curve fit [95 % CI]",
              "prototype / paper"], [
        ["α, whole range (eq 17 over all t)", _stat_cell(s["alpha_whole"]),
         f"{fmt(mf['alpha_whole'])} {fmt_ci(mf['alpha_whole_ci'])}",
         f"{fmt(p['alpha_whole'])} ± {fmt(p['alpha_whole_pm'])} (prototype)"],
        ["α, late window (t ≥ t_c)", _stat_cell(s["alpha_late"]),
         f"{fmt(mf['alpha_late'])} {fmt_ci(mf['alpha_late_ci'])}",
         f"{fmt(p['alpha_late'])} ± {fmt(p['alpha_late_pm'])} (prototype, late half)"],
        ["α, early segment (hinge fit)", _stat_cell(s["alpha_early"]), fmt(mf["alpha_early"]),
         "super-diffusive (> 1/2), Fig 1"],
        ["crossover t_c", _stat_cell(s["t_c"]), f"{fmt(mf['t_c'])} {fmt_ci(mf['t_c_ci'])}", "not given"],
        ["r² of the whole-range fit", _stat_cell(s["r2_whole"]), fmt(mf["r2_whole"]), "not given"],
        ["r² of the late fit", _stat_cell(s["r2_late"]), fmt(mf["r2_late"]), "not given"],
    ]))
    a("")
    a("## Figures\n")
    for f, cap in [("fig1_displacement.png", "Left: Fig 1 analogue — mean R(t) with the 95 % CI of the mean and "
                    "the 5–95 % band of runs, against a Brownian t^½ line anchored at the mean at t = 1; the dotted "
                    "line and shading are t_c and its interval. Right: local slope d log R / d log t."),
                   ("alpha_and_crossover.png", "Per-run α (whole range vs late window) and per-run crossover t_c.")]:
        a(f"![{cap}](figures/{f})\n\n*{cap}*\n")
    a("## Methods\n")
    a(f"- **Data / model / SGD** (paper App G.4): `make_moons`, n = {cfg['data']['n']}, noise "
      f"{fmt(cfg['data']['noise'])}, data seed {cfg['data']['seed']}; MLP 2→{'→'.join(map(str, cfg['model']['hidden']))}→2 "
      f"ReLU ({r['ensemble']['n_params']} parameters), PyTorch default init, seeds {cfg['train']['seed_offset']}.."
      f"{cfg['train']['seed_offset'] + cfg['train']['seeds'] - 1}; {_sgd(cfg)} lr {fmt(cfg['train']['lr'])}, batch "
      f"{cfg['train']['batch_size']} (per-seed shuffles, drop_last), {cfg['train']['steps']} steps; all seeds trained "
      f"as one batched computation. Mean final train accuracy {fmt(r['ensemble']['train_acc_mean'])}, test "
      f"{fmt(r['ensemble']['test_acc_mean'])}.")
    a(f"- **Displacement**: R(t) = ‖w_t − w_0‖₂ over all parameters, recorded every {cfg['train']['record_every']} "
      f"steps and at {cfg['train']['record_log_points']} geometric steps ({r['ensemble']['n_grid_points']} points).")
    a(f"- **Per-run fit (eq 17)**: log R = α log t + c on {cfg['fit']['n_grid']} points evenly spaced in log t; "
      f"interval method `{cfg['fit']['method']}` (GLS with AR(1) errors on a log-t or logging-index clock, "
      f"chosen by likelihood, REML ρ; t statistic calibrated by a simulated table at an upper confidence bound "
      f"for ρ, docs/intervals.md; the plain OLS interval is far too narrow for a cumulative curve). Whole range = "
      f"the paper's fit. Late window: t ≥ t_c, where t_c is the knot of a two-segment (hinge) least-squares fit in "
      f"log–log space (App B.3), with the posterior interval of the hinge model integrated over ρ.")
    a(f"- **H1**: per run, one-sided t-test of H0 α ≥ 1/2 vs α < 1/2 on the calibrated se; Holm across runs "
      f"(`multipletests(method=\"holm\")`); across runs, Wilcoxon signed-rank of α − 1/2 (alternative \"less\") and "
      f"the median of α − 1/2 with a percentile bootstrap interval ({cfg['analysis']['n_boot']} resamples). "
      f"Verdict rule: supported when the Wilcoxon p < {fmt(1 - level)} and the upper bound of the median is < 0.")
    a(f"- **Mean curve**: mean over runs of R(t) (band: t-interval of the mean; 5–95 % quantiles of runs). Brownian "
      f"reference R_B(t) = R̄(1)·t^½. Local slope: OLS of ln R on ln t over |Δ ln t| ≤ "
      f"{fmt(cfg['analysis']['local_slope_halfwidth'])} around each of 64 log-spaced steps.")
    L.extend(_methods_common(r))
    a("\nWall time per stage (when it was computed):\n")
    a(_timing_table(r))
    a("")
    a("## Diagnostics\n")
    a(f"- Runs: {s['n_runs']} trained, {s['n_diverged']} diverged, {s['n_fitted']} fitted. Per-run crossover "
      f"slope change significant (interval excludes 0) in {s['n_crossover_significant']} of {s['n_fitted']} runs. "
      f"{s['n_no_late_fit']} runs have no late-window fit (excluded from the late H1 test): "
      + ("; ".join(s["late_fit_notes"][:5]) or "—") + ".")
    sa = r["slope_at"]
    a("- Local slope at selected steps (mean of per-run slopes [95 % CI]; slope of the mean curve): "
      + "; ".join(f"t = {fmt(t)}: {fmt(m)} {fmt_ci([lo, hi])}, {fmt(mc)}"
                  for t, m, lo, hi, mc in zip(sa["t"], sa["runs_mean"], sa["lo"], sa["hi"], sa["mean_curve"])) + ".")
    for n in r["notes"] + mf["notes"]:
        a(f"- note: {n}")
    a("")
    return "\n".join(L) + "\n"


def write_anomalous_diffusion(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build_anomalous_diffusion, _figures_ad, render_anomalous_diffusion)


# =========================================================================== spectral dimension

def _reg_rows(tab: dict) -> list[list]:
    n = len(tab["y"])
    return [[tab["y"][i], tab["x"][i], tab["kind"][i], tab["n"][i], fmt(tab["estimate"][i]),
             fmt_ci([tab["lo"][i], tab["hi"][i]]), fmt(tab["p"][i]), fmt(tab["p_holm"][i]), tab["note"][i] or ""]
            for i in range(n)]


_REG_HEAD = ["y", "x", "kind", "n", "estimate", "95% interval", "p", "p (Holm)", "note"]


def build_spectral_dimension(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    r = _header(ctx)
    runs = an["runs"]
    per_run = [{"run": runs["run"][i], "llc": runs["llc"][i], "llc_se": runs["llc_se"][i],
                "llc_mean": runs["llc_mean"][i], "alpha": runs["alpha"][i], "alpha_lo": runs["alpha_lo"][i],
                "alpha_hi": runs["alpha_hi"][i], "d_s": runs["d_s"][i], "d_s_lo": runs["d_s_lo"][i],
                "d_s_hi": runs["d_s_hi"][i], "late_alpha": runs["late_alpha"][i], "late_d_s": runs["late_d_s"][i],
                "r2": runs["r2"][i], "t_c": runs["t_c"][i], "test_acc": runs["test_acc"][i]}
               for i in range(len(runs["run"]))]
    r.update({
        "data": {"name": ctx.config.data.name, "n_train": int(tr["n_train"]), "n_test": int(tr["n_test"]),
                 "n_features": int(tr["n_features"]), "meta": tr["data_meta"]},
        "ensemble": {"n_runs": int(np.size(tr["seeds"])), "n_params": int(tr["n_params"]), "widths": tr["widths"],
                     "total_steps": int(tr["total_steps"]), "nbeta": float(tr["nbeta"]),
                     "llc_trend_flags": int(tr["llc_trend_flags"]), "llc_n_estimates": int(tr["llc_n_estimates"]),
                     "relaxation_steps": 2.0 / (ctx.config.llc.step_size * ctx.config.llc.localization)},
        "hypotheses": an["hypotheses"], "summary": an["summary"], "paper_table8": an["paper_table8"],
        "regressions": an["regressions"], "h7_regressions": an["h7_regressions"], "per_run": per_run,
        "llc_nonpositive": an["llc_nonpositive"], "sweep": {k: v for k, v in an["sweep"].items() if k != "runs"},
        "notes": an["notes"], "divergence": tr["divergence"],
    })
    return to_jsonable(r)


def _figures_sd(ctx, r: dict, figdir: Path) -> list[Path]:
    _style()
    tr, an = ctx["train"], ctx["analysis"]
    dpi = ctx.config.report.dpi
    out = []
    runs = an["runs"]
    lam, ds = _arr(runs["llc"]), _arr(runs["d_s"])
    dlo, dhi = _arr(runs["d_s_lo"]), _arr(runs["d_s_hi"])
    lbar = _arr(runs["llc_mean"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, x, lab, title in ((axes[0], lam, r"final $\lambda$ (mean of last 10)", "Fig 2a analogue: d_s vs λ"),
                              (axes[1], lbar, r"time-averaged $\bar\lambda$", "Fig 21 analogue: d_s vs λ̄")):
        ok = np.isfinite(x) & np.isfinite(ds)
        ax.errorbar(x[ok], ds[ok], yerr=np.abs(np.stack([ds[ok] - dlo[ok], dhi[ok] - ds[ok]])), fmt="o", ms=3,
                    lw=0.6, label="identical-architecture runs (95 % delta-method CI)")
        sw = an["sweep"]
        if sw.get("enabled"):
            sr = sw["runs"]
            sx = _arr(sr["llc"] if x is lam else sr["llc_mean"])
            ax.plot(sx, _arr(sr["d_s"]), "s", ms=4, color="#ff7f0e", label="Table-7 architectures")
        lim = [min(0, np.nanmin(np.r_[x[ok], ds[ok]])), np.nanmax(np.r_[x[ok], ds[ok], 1e-3])]
        ax.plot(lim, lim, "k--", lw=1, label="d_s = λ (bound)")
        ax.set_xlabel(lab); ax.set_ylabel(r"$d_s = 2\lambda\alpha$ (whole range)"); ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    out.append(_save(fig, figdir / "fig2a_fig21_ds_vs_llc.png", dpi))

    pred = an["h7_pred"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    r2 = _arr(runs["r2"])
    r2h = np.asarray(pred["r2_heldout"], float)
    bins = np.linspace(-1, 1, 81)
    axes[0].hist(np.clip(r2[np.isfinite(r2)], -1, 1), bins=bins, alpha=0.7, label="in-sample r² (whole-range fit, paper)")
    h = r2h[np.isfinite(r2h)]
    if h.size:
        axes[0].hist(np.clip(h, -1, 1), bins=bins, alpha=0.6, label="held-out R² of log R (late half; clipped at −1)")
    axes[0].set_xlabel("R²"); axes[0].set_ylabel("runs"); axes[0].set_title("Fig 18 analogue", fontsize=9)
    axes[0].legend(fontsize=6)
    steps = np.asarray(tr["steps"], float)
    disp = np.asarray(tr["displacement"], float)[~np.asarray(tr["diverged"], bool)]  # diverged runs left out
    split = ctx.config.h7.split * steps[-1]
    show = np.arange(min(disp.shape[0], ctx.config.report.max_curves))
    from ..stats.diffusion import fit_loglog, log_grid

    for j, k in enumerate(show):
        col = plt.cm.tab10(j % 10)
        axes[1].plot(steps, disp[k], color=col, lw=1)
        e = steps <= split
        idx = log_grid(steps[e], 64)
        f = fit_loglog(np.log(steps[e][idx]), np.log(disp[k][e][idx]), method="ols")
        axes[1].plot(steps, np.exp(f.intercept) * steps ** f.alpha, color=col, ls="--", lw=0.8)
    axes[1].axvline(split, color="k", lw=0.8, ls=":")
    axes[1].set_xscale("log"); axes[1].set_yscale("log")
    axes[1].set_xlabel("step t"); axes[1].set_ylabel("R(t)")
    axes[1].set_title("Fig 14 analogue: true (solid) vs predicted from t ≤ split (dashed)", fontsize=8)
    pt, pp = np.asarray(pred["R_true_final"], float), np.asarray(pred["R_pred_final"], float)
    axes[2].plot(pt, pp, "o", ms=3)
    lim = [np.nanmin(np.r_[pt, pp]), np.nanmax(np.r_[pt, pp])]
    axes[2].plot(lim, lim, "k--", lw=1)
    axes[2].set_xlabel("true final displacement R_T"); axes[2].set_ylabel("predicted R̂_T")
    axes[2].set_title("Fig 15 analogue: predicted vs true final displacement", fontsize=8)
    out.append(_save(fig, figdir / "fig14_15_18_prediction.png", dpi))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    L = np.asarray(tr["llc"], float)
    ls = np.asarray(tr["llc_steps"], float)
    for k in range(min(L.shape[0], 20)):
        axes[0].plot(ls, L[k], lw=0.7, alpha=0.7)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_xlabel("step"); axes[0].set_ylabel(r"$\hat\lambda$ along training")
    axes[0].set_title("LLC estimates along training (every llc_schedule.every steps)", fontsize=9)
    axes[1].plot(_arr(runs["llc"]), np.asarray(pred["R_true_final"], float), "o", ms=3)
    axes[1].set_xlabel(r"final $\lambda$"); axes[1].set_ylabel("final displacement R_T")
    axes[1].set_title("H7 / Fig 17: displacement vs λ", fontsize=9)
    out.append(_save(fig, figdir / "llc_traces_and_h7.png", dpi))
    return out


def render_spectral_dimension(r: dict) -> str:
    cfg = r["config"]
    s, d, e, t8 = r["summary"], r["data"], r["ensemble"], r["paper_table8"]
    level = cfg["fit"]["level"]
    L: list[str] = []
    a = L.append
    a("# Spectral dimension vs the LLC (paper §4.1, App G.1, App J Tables 7–8, Figs 2a, 14–15, 18, 21)\n")
    a(preset_label(r)
      + f"; data **{d['name']}** ({'local files: ' + str(d['meta'].get('path')) if d['name'] != 'mnist1d' else 'MNIST-1D generated offline, not MNIST'}); "
      f"{e['n_runs']} seeds; device {r['device']}; config hash `{r['config_hash']}`; generated {r['generated']}; "
      f"total wall time {fmt(r['wall_total_s'])} s. Every number below is read from `results.json`.\n")
    if r["presets"] != ["paper"]:
        a("*This is not the paper's configuration*: see Methods for every difference; `--preset paper` runs App "
          "G.1's settings (documented for a GPU; `--device auto` picks CUDA when present).\n")
    a(divergence_sentence(r.get("divergence")) + "\n")
    a("## Verdicts\n")
    a(_verdict_table(r["hypotheses"], level))
    a("")
    a(EQUIVALENCE_NOTE + "\n")
    a("**Summary.**\n")
    a(f"- λ (final, mean of last {cfg['llc_schedule']['last']}): median {fmt(s['llc_final']['median'])} "
      f"{fmt_ci(s['llc_final']['median_ci'])}; λ̄: median {fmt(s['llc_mean']['median'])} {fmt_ci(s['llc_mean']['median_ci'])}; "
      f"**{s['n_llc_nonpositive']} of {s['n_fitted']} runs have λ ≤ 0** (listed below); "
      f"{s['n_negative_estimates']} of {s['n_estimates']} individual estimates along training were negative.")
    a(f"- α whole range: median {fmt(s['alpha']['median'])} {fmt_ci(s['alpha']['median_ci'])}; late window: "
      f"{fmt(s['late_alpha']['median'])} {fmt_ci(s['late_alpha']['median_ci'])}. d_s (whole, the paper's): median "
      f"{fmt(s['d_s']['median'])} {fmt_ci(s['d_s']['median_ci'])}; late: {fmt(s['late_d_s']['median'])} "
      f"{fmt_ci(s['late_d_s']['median_ci'])}.")
    a(f"- Mean test accuracy {fmt(s['test_acc']['mean'])} {fmt_ci(s['test_acc']['mean_ci'])}.")
    a("")
    a("## Results beside the paper\n")
    a("### Identical architecture (Table 8 / Fig 2a)\n")
    a(f"The paper's Table 8 is MNIST (784 inputs, 100 epochs, lr 0.001); this run is {d['name']} with the settings in "
      f"Methods, so values are set side by side, not expected to match.\n")
    a(_table(["quantity", "this study: median [95 % CI] (mean [95 % CI], sd, n)", "paper Table 8: median (mean, sd, n)"], [
        ["d_s (whole range)", _stat_cell(s["d_s"]), f"{fmt(t8['d_s']['median'])} (mean {fmt(t8['d_s']['mean'])}, sd {fmt(t8['d_s']['sd'])}, n = {t8['d_s']['n']})"],
        ["λ final", _stat_cell(s["llc_final"]), f"{fmt(t8['llc']['median'])} (mean {fmt(t8['llc']['mean'])}, sd {fmt(t8['llc']['sd'])}, n = {t8['llc']['n']})"],
        ["α = d_s/(2λ)", _stat_cell(s["alpha"]), f"{fmt(t8['alpha_implied']['median'])} (implied by the table)"],
        ["share of runs with d_s ≤ λ", fmt(np.mean([(x['d_s'] is not None and x['llc'] is not None and x['d_s'] <= x['llc']) for x in r['per_run']])) if r["per_run"] else "—", fmt(t8["share_d_s_le_llc"])],
        ["r² of the fit", _stat_cell(s["r2"]), "not given (Fig 18 histogram)"],
    ]))
    a("")
    a("Cross-run regressions (OLS with HC3, Spearman with bootstrap CI, Deming errors-in-variables with δ from the "
      "per-run standard errors; Holm within the table):\n")
    a(_table(_REG_HEAD, _reg_rows(r["regressions"])))
    a("")
    sw = r["sweep"]
    if sw.get("enabled"):
        a(f"### Architecture sweep (Table 7), {sw['total_steps']} steps each\n")
        rows = [[x["row"], x["layers_paper"], "-".join(map(str, x["widths"])), x["n_params"], x["n_runs"],
                 fmt(x["d_s"]) + (f" {fmt_ci([x['d_s_lo'], x['d_s_hi']])}" if x["d_s_lo"] is not None else ""),
                 fmt(x["llc"]) + f" ± {fmt(x['llc_se'])}", fmt(x["llc_mean"]),
                 fmt(x["alpha"]) + (f" {fmt_ci([x['alpha_lo'], x['alpha_hi']])}" if x["alpha_lo"] is not None else ""),
                 fmt(x["late_alpha"]), fmt(x["r2"]), fmt(x["test_acc"]), fmt(x["paper_d_s"]), fmt(x["paper_llc"]),
                 x["paper_params"]] for x in sw["arch"]]
        a(_table(["T7 row", "paper layers", "widths here", "params", "runs", "d_s [95% CI]", "λ ± se", "λ̄", "α [95% CI]",
                  "α late", "r²", "test acc", "paper d_s", "paper λ", "paper params"], rows))
        a(f"\n{sw['n_llc_nonpositive']} sweep runs with λ ≤ 0. Does the ordering of d_s across architectures agree "
          f"with the paper's?\n")
        a(_table(_REG_HEAD, _reg_rows(sw["ours_vs_paper"])))
        a("")
        a(_table(_REG_HEAD, _reg_rows(sw["regressions"])))
        a("")
    a("### H7: displacement and its prediction (Figs 14–15, 17–18)\n")
    a(f"Early-window eq-17 fit on t ≤ {fmt(cfg['h7']['split'])}·T, prediction of R(t) beyond: median relative error "
      f"of R_T {fmt(s['rel_err_final']['median'])} {fmt_ci(s['rel_err_final']['median_ci'])}; held-out R² of log R "
      f"median {fmt(s['r2_heldout']['median'])} {fmt_ci(s['r2_heldout']['median_ci'])}.\n")
    a(_table(_REG_HEAD, _reg_rows(r["h7_regressions"])))
    a("")
    a("### Runs with λ ≤ 0 (reported separately; excluded from the per-run H2/H3 tests)\n")
    npz = r["llc_nonpositive"]
    if npz["run"]:
        a(_table(["run", "λ", "se", "α", "d_s", "α late", "d_s late"],
                 [[npz["run"][i], fmt(npz["llc"][i]), fmt(npz["llc_se"][i]), fmt(npz["alpha"][i]), fmt(npz["d_s"][i]),
                   fmt(npz["late_alpha"][i]), fmt(npz["late_d_s"][i])] for i in range(len(npz["run"]))]))
    else:
        a("None.")
    a("")
    a("## Figures\n")
    for f, cap in [("fig2a_fig21_ds_vs_llc.png", "d_s against final λ (Fig 2a) and against λ̄ (Fig 21), with the bound d_s = λ."),
                   ("fig14_15_18_prediction.png", "Fig 18: r² histograms; Fig 14: predicted vs true displacement curves; Fig 15: predicted vs true final displacement."),
                   ("llc_traces_and_h7.png", "λ̂ along training, and final displacement against λ (H7).")]:
        a(f"![{cap}](figures/{f})\n\n*{cap}*\n")
    a("## Methods\n")
    dm = d["meta"]
    a(f"- **Data**: {d['name']} — {dm.get('source', '')}; {d['n_train']} train / {d['n_test']} test, "
      f"{d['n_features']} features. The paper used MNIST (10000-image subset, 50/50). `--set data.name=mnist "
      f"--set data.path=DIR` runs on local MNIST files with the paper's subset and split.")
    a(f"- **Model / SGD**: MLP {'-'.join(map(str, e['widths']))} ReLU ({e['n_params']} parameters; the paper's "
      f"784-128-64-32-10 with the input width set by the data), PyTorch default init, seeds "
      f"{cfg['train']['seed_offset']}..{cfg['train']['seed_offset'] + cfg['train']['seeds'] - 1}; SGD lr "
      f"{fmt(cfg['train']['lr'])} (paper 0.001), momentum {fmt(cfg['train']['momentum'])}, batch "
      f"{cfg['train']['batch_size']}, {cfg['train']['epochs']} epochs = {e['total_steps']} steps (paper 100 epochs), "
      f"drop_last.")
    if sw.get("enabled"):
        a(f"- **Sweep**: rows {[x['row'] for x in sw['arch']]} of Table 7 (0-based; layer lists read from the paper, "
          f"784 replaced by {d['n_features']}, output 10 appended; the stray '1' in row 8's '784, 128, 64 1' is read as a "
          f"footnote marker), {cfg['sweep']['seeds']} seed(s) each, {cfg['sweep']['epochs']} epochs (paper 250), other "
          f"settings as above.")
    a(f"- **LLC** (eq 25, batched localized SGLD, Table 3 kernel): every {cfg['llc_schedule']['every']} steps, ε = "
      f"{fmt(cfg['llc']['step_size'])}, γ = {fmt(cfg['llc']['localization'])}, {cfg['llc']['num_chains']} chain(s) × "
      f"{cfg['llc']['num_draws']} draws, {cfg['llc']['num_burnin_steps']} burn-in, SGLD batch {cfg['llc']['batch_size']}, "
      f"**nβ = {fmt(e['nbeta'])}** ({cfg['llc']['nbeta']}). Final λ = mean of the last {cfg['llc_schedule']['last']} estimates "
      f"(App G.1), se = their std/√count (successive estimates are autocorrelated, so this se is optimistic); λ̄ = "
      f"mean of all estimates (Cor 3.3). Localization relaxation time 2/(εγ) = {fmt(e['relaxation_steps'])} steps vs "
      f"{cfg['llc']['num_draws']} draws: the chains may not equilibrate; {e['llc_trend_flags']} of "
      f"{e['llc_n_estimates']} estimates were trend-flagged (|z| > 3). Negative λ̂ are kept.")
    a(f"- **Fits**: eq 17 on {cfg['fit']['n_grid']} log-spaced points, `{cfg['fit']['method']}` intervals "
      f"({cfg['fit']['n_boot']} bootstrap resamples), whole range (the paper's d_s) and late window after the hinge "
      f"crossover t_c (App B.3). d_s = 2λα with delta-method se² = (2α)² se(λ)² + (2λ)² se(α)².")
    a(f"- **Tests**: H1 per run one-sided α < 1/2; H2 per run (λ > 0) α < 1/2; H3 per run α < λ̄/(2λ) with a "
      f"delta-method se; Holm across runs; Wilcoxon signed-rank across runs (alternative \"less\"); medians with "
      f"{cfg['analysis']['n_boot']} bootstrap resamples. Verdict: supported when Wilcoxon p < {fmt(1 - level)} and "
      f"the median's upper bound < 0. H7: Spearman ρ(R_T, λ) with bootstrap CI; prediction 'supported' when the upper "
      f"bound of the median |R̂_T/R_T − 1| < {fmt(cfg['h7']['margin'])}.")
    L.extend(_methods_common(r))
    a("\nWall time per stage (when it was computed):\n")
    a(_timing_table(r))
    a("")
    a("## Diagnostics\n")
    a(f"- {s['n_runs']} runs, {s['n_fitted']} fitted; crossover t_c median {fmt(s['t_c']['median'])} "
      f"{fmt_ci(s['t_c']['median_ci'])}; per-run λ se median {fmt(s['llc_final_se']['median'])}.")
    a("- Per run (identical architecture):\n")
    a(_table(["run", "λ ± se", "λ̄", "α [95% CI]", "d_s [95% CI]", "α late", "r²", "test acc"],
             [[x["run"], f"{fmt(x['llc'])} ± {fmt(x['llc_se'])}", fmt(x["llc_mean"]),
               f"{fmt(x['alpha'])} {fmt_ci([x['alpha_lo'], x['alpha_hi']])}",
               f"{fmt(x['d_s'])} {fmt_ci([x['d_s_lo'], x['d_s_hi']])}", fmt(x["late_alpha"]), fmt(x["r2"]),
               fmt(x["test_acc"])] for x in r["per_run"]]))
    for n in r["notes"]:
        a(f"- note: {n}")
    a("")
    return "\n".join(L) + "\n"


def write_spectral_dimension(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build_spectral_dimension, _figures_sd, render_spectral_dimension)


# =========================================================================== ablations

def build_ablations(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    r = _header(ctx)
    r.update({
        "data": {"name": ctx.config.data.name, "n_train": int(tr["n_train"]), "n_test": int(tr["n_test"]),
                 "n_features": int(tr["n_features"]), "meta": tr["data_meta"]},
        "model": {"widths": tr["widths"], "n_params": int(tr["n_params"]), "nbeta": float(tr["nbeta"])},
        "hypotheses": an["hypotheses"], "app_h": an["app_h"], "correlations": an["correlations"], "h6": an["h6"],
        "h6_adam": an["h6_adam"], "n_runs": an["n_runs"], "n_fitted": an["n_fitted"], "cells": an["cells"],
        "cell_wall_s": list(np.asarray(tr["cell_wall_s"], float)), "notes": an["notes"],
        "divergence": tr["divergence"],
        "paper_app_h_source": "paper App H table (transcribed; not among sgdbayes.paper's tables)",
    })
    return to_jsonable(r)


def _figures_ab(ctx, r: dict, figdir: Path) -> list[Path]:
    _style()
    an = ctx["analysis"]
    dpi = ctx.config.report.dpi
    import pandas as pd

    df = pd.DataFrame({k: _arr(v) if k not in ("label", "family", "optimizer", "run", "fit_error", "notes", "method",
                                                 "late_window") else v for k, v in an["runs"].items()
                       if k in ("label", "lr", "batch_size", "d_s", "llc", "test_acc", "R_final", "momentum")})
    labels = list(dict.fromkeys(df["label"]))
    out = []
    fig, axes = plt.subplots(2, len(labels), figsize=(3.6 * len(labels), 6), squeeze=False)
    for j, lab in enumerate(labels):
        g = df[df["label"] == lab]
        for i, y in enumerate(("d_s", "llc")):
            piv = g.groupby(["batch_size", "lr"])[y].mean().unstack()
            ax = axes[i, j]
            im = ax.imshow(piv.to_numpy(float), aspect="auto", cmap="viridis", origin="lower")
            ax.set_xticks(range(piv.shape[1]), [f"{v:g}" for v in piv.columns], fontsize=7)
            ax.set_yticks(range(piv.shape[0]), [f"{int(v)}" for v in piv.index], fontsize=7)
            for (a_, b_), v in np.ndenumerate(piv.to_numpy(float)):
                ax.text(b_, a_, f"{v:.3g}", ha="center", va="center", color="w", fontsize=7)
            ax.set_xlabel("learning rate"); ax.set_ylabel("batch size")
            ax.set_title(f"{lab}: mean {'d_s' if y == 'd_s' else 'λ'}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Figs 7 / 9 analogue: d_s and λ over learning rate × batch size", fontsize=10)
    out.append(_save(fig, figdir / "fig7_9_grid.png", dpi))

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = [("lr", "d_s", True, "Fig 11: d_s vs lr"), ("lr", "llc", True, "Fig 11: λ vs lr"),
              ("batch_size", "d_s", True, "Fig 10: d_s vs batch"), ("batch_size", "llc", True, "Fig 10: λ vs batch"),
              ("d_s", "test_acc", False, "Fig 12: test acc vs d_s"), ("llc", "test_acc", False, "Fig 13: test acc vs λ")]
    for ax, (x, y, logx, title) in zip(axes.flat, panels):
        for j, lab in enumerate(labels):
            g = df[df["label"] == lab]
            jit = np.exp(np.random.default_rng(j).normal(0, 0.04, len(g))) if logx else 1.0
            ax.plot(g[x] * jit, g[y], "o", ms=3, alpha=0.7, label=lab)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(x); ax.set_ylabel(y); ax.set_title(title, fontsize=8)
    axes[0, 0].legend(fontsize=6)
    out.append(_save(fig, figdir / "fig10_13_correlations.png", dpi))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for j, lab in enumerate(labels):
        g = df[df["label"] == lab]
        axes[0].plot(g["llc"], g["R_final"], "o", ms=3, label=lab)
    axes[0].set_xlabel("final λ"); axes[0].set_ylabel("final displacement R_T")
    axes[0].set_title("Figs 16–17: displacement vs λ", fontsize=8); axes[0].legend(fontsize=6)
    s = df[df["label"].str.startswith("sgd")]
    axes[1].plot(s["momentum"], s["d_s"], "o", ms=3, label="d_s")
    axes[1].plot(s["momentum"], s["llc"], "s", ms=3, label="λ")
    axes[1].set_xlabel("momentum"); axes[1].set_title("Fig 8: momentum (SGD family)", fontsize=8)
    axes[1].legend(fontsize=6)
    out.append(_save(fig, figdir / "fig8_16_17.png", dpi))
    return out


def render_ablations(r: dict) -> str:
    cfg = r["config"]
    level = cfg["fit"]["level"]
    d = r["data"]
    L: list[str] = []
    a = L.append
    a("# Ablations: optimizer × learning rate × batch size (paper App H, Figs 7–13, 16–17)\n")
    a(preset_label(r)
      + f"; data **{d['name']}** ({'local files' if d['name'] != 'mnist1d' else 'MNIST-1D generated offline, not MNIST'}); "
      f"{len(r['cells'])} cells × {cfg['grid']['seeds']} seeds = {r['n_runs']} runs ({r['n_fitted']} analysed); device "
      f"{r['device']}; config hash `{r['config_hash']}`; generated {r['generated']}; total wall time "
      f"{fmt(r['wall_total_s'])} s. Every number below is read from `results.json`.\n")
    if r["presets"] != ["paper"]:
        a("*This is not the paper's configuration*; `--preset paper` runs the App G.1 settings over the stated grid "
          "(documented for a GPU).\n")
    a(divergence_sentence(r.get("divergence")) + "\n")
    a("## Verdicts\n")
    a(_verdict_table(r["hypotheses"], level))
    a("")
    a(EQUIVALENCE_NOTE + "\n")
    h6 = r["h6"]
    a("**H6 in detail** (standardized partial slopes, OLS with HC3; " + h6.get("scope", "") + "; covariates "
      + ", ".join(h6.get("covariates", [])) + "):\n")
    if "delta" in h6:
        a(_table(["response", "β_std on log10 lr", "95% interval", "p (HC3)"], [
            ["d_s", fmt(h6["beta_d_s"]), fmt_ci(h6["beta_d_s_ci"]), fmt(h6["beta_d_s_p"])],
            ["λ", fmt(h6["beta_llc"]), fmt_ci(h6["beta_llc_ci"]), fmt(h6["beta_llc_p"])],
            ["Δ = |β(d_s)| − |β(λ)|", fmt(h6["delta"]), fmt_ci(h6["delta_ci"]),
             f"{fmt(h6['p'])} (bootstrap, {h6['n_boot_used']} resamples)"]]))
    else:
        a(f"not estimable: {h6.get('note', '')}")
    if r["h6_adam"] and "delta" in r["h6_adam"]:
        ha = r["h6_adam"]
        a(f"\nSame contrast within Adam runs: β(d_s) = {fmt(ha['beta_d_s'])} {fmt_ci(ha['beta_d_s_ci'])}, β(λ) = "
          f"{fmt(ha['beta_llc'])} {fmt_ci(ha['beta_llc_ci'])}, Δ = {fmt(ha['delta'])} {fmt_ci(ha['delta_ci'])}.")
    a("")
    a("## Results beside the paper\n")
    a(f"### App-H table (per optimizer; means with 95 % t-intervals). Paper values: {r['paper_app_h_source']}; the paper "
      f"used MNIST and its own (unstated) grid.\n")
    rows = []
    for x in r["app_h"]:
        p = x["paper"] or {}
        rows.append([x["optimizer"], x["n"], f"{fmt(x['d_s']['mean'])} {fmt_ci(x['d_s']['mean_ci'])}", fmt(x["d_s"]["sd"]),
                     f"{fmt(x['llc']['mean'])} {fmt_ci(x['llc']['mean_ci'])}", fmt(x["llc"]["sd"]),
                     f"{fmt(x['test_acc']['mean'])} {fmt_ci(x['test_acc']['mean_ci'])}", x["n_llc_nonpositive"],
                     fmt(p.get("d_s_mean")), fmt(p.get("d_s_std")), fmt(p.get("llc_mean")), fmt(p.get("llc_std")),
                     fmt(p.get("test_acc_mean"))])
    a(_table(["optimizer", "runs", "d_s mean [CI]", "d_s std", "λ mean [CI]", "λ std", "test acc % [CI]", "# λ ≤ 0",
              "paper d_s mean", "paper d_s std", "paper λ mean", "paper λ std", "paper test acc %"], rows))
    a("")
    for fam, tab in r["correlations"].items():
        a(f"### Correlations within {fam} (Figs 10–13, 8, 16–17; Holm across this table)\n")
        a(_table(_REG_HEAD, _reg_rows(tab)))
        a("")
    a("## Figures\n")
    for f, cap in [("fig7_9_grid.png", "Mean d_s and λ per cell (Figs 7, 9)."),
                   ("fig10_13_correlations.png", "d_s and λ against learning rate and batch size; test accuracy against d_s and λ (Figs 10–13)."),
                   ("fig8_16_17.png", "Final displacement against λ (Figs 16–17) and the momentum ablation (Fig 8).")]:
        a(f"![{cap}](figures/{f})\n\n*{cap}*\n")
    a("## Methods\n")
    g = cfg["grid"]
    a(f"- **Data**: {d['name']} — {d['meta'].get('source', '')}; {d['n_train']} train / {d['n_test']} test, "
      f"{d['n_features']} features (the paper: MNIST).")
    a(f"- **Model**: MLP {'-'.join(map(str, r['model']['widths']))} ReLU ({r['model']['n_params']} parameters), PyTorch "
      f"default init, seeds {g['seed_offset']}..{g['seed_offset'] + g['seeds'] - 1} in every cell.")
    a(f"- **Grid** (ours; App H gives none): SGD with momentum {g['momenta']} × lr {g['lrs_sgd']}"
      + (f"; Adam (β = 0.9, 0.999, ε = 1e-8) × lr {g['lrs_adam']}" if g["adam"] else "") + f"; × batch size "
      f"{g['batch_sizes']}; " + (f"{g['steps']} steps per cell" if g["steps"] else f"{g['epochs']} epochs per cell")
      + "; constant learning rate, no weight decay.")
    a(f"- **LLC** along training every {cfg['llc_schedule']['every']} steps: ε = {fmt(cfg['llc']['step_size'])}, γ = "
      f"{fmt(cfg['llc']['localization'])}, {cfg['llc']['num_chains']} chain(s) × {cfg['llc']['num_draws']} draws, SGLD batch "
      f"{cfg['llc']['batch_size']}, nβ = {fmt(r['model']['nbeta'])} ({cfg['llc']['nbeta']}); final λ = mean of the last "
      f"{cfg['llc_schedule']['last']} estimates (se = std/√count, optimistic); the same LLC estimator for Adam runs (the paper "
      f"notes Adam changes the metric, App H.0.1).")
    a(f"- **d_s** = 2λα from the whole-range eq-17 fit (`{cfg['fit']['method']}`, {cfg['fit']['n_boot']} bootstrap "
      f"resamples), delta-method intervals. Correlations: OLS with HC3, Spearman with {cfg['analysis']['n_boot']} "
      f"bootstrap resamples over runs, Holm within each optimizer family's table. H6: see the pipeline docstring "
      f"(standardized partial slopes and a paired bootstrap of their absolute difference).")
    a(f"- **H1–H3, H7 per optimizer family**: as in the spectral_dimension study (per-run one-sided tests with Holm, "
      f"Wilcoxon across runs; H7: Spearman ρ(R_T, λ) and the held-out prediction from t ≤ {fmt(cfg['h7']['split'])}·T).")
    L.extend(_methods_common(r))
    a("\nWall time per stage (when it was computed):\n")
    a(_timing_table(r))
    a("")
    a("## Diagnostics\n")
    a(_table(["cell", "optimizer", "lr", "batch", "wall s"],
             [[i, c["label"], fmt(c["lr"]), c["batch_size"], fmt(w)] for i, (c, w) in enumerate(zip(r["cells"], r["cell_wall_s"]))]))
    for n in r["notes"]:
        a(f"- note: {n}")
    a("")
    return "\n".join(L) + "\n"


def write_ablations(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build_ablations, _figures_ab, render_ablations)
