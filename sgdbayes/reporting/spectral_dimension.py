"""Report of the spectral_dimension study (paper §4.1, App G.1, App J Tables 7-8, Figs 2a, 14-15,
18, 21; docs/methods.md).

``build`` gathers the stored stage outputs (Results kept as Results) into results.json, the
figures plot stored numbers only (the predicted displacement curves come from the stored
early-window fits), and ``render`` writes report.md from results.json as read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import fmt_estimate, fmt_num
from .toolkit import (
    apply_style,
    divergence_sentence,
    executor_sentence,
    header,
    md_table,
    methods_section,
    per_run_table,
    preset_label,
    regressions_table,
    save_figure,
    study_header,
    summary_cell,
    verdict_notes,
    verdict_table,
    write_skipped_report,
    write_study_report,
)

__all__ = ["write_report", "build", "render", "EQUIVALENCE_NOTE"]

EQUIVALENCE_NOTE = (
    "**d_s ≤ λ is α ≤ 1/2.** d_s is measured by eq 17 as d_s = 2λα, so for every run with λ > 0 "
    "the inequality d_s ≤ λ (Lemma 3.4, H2) is exactly α ≤ 1/2: as measured, Lemma 3.4 is a test of "
    "sub-diffusion and λ's value enters only through its sign "
    "(docs/methods.md#diffusion-fits-eq-17). For H3 the test is "
    "α ≤ λ̄ / (2 λ_final), which does depend on λ. Runs with λ ≤ 0 are reported separately (for them "
    "d_s ≤ λ would mean α ≥ 1/2) and excluded from the per-run H2/H3 tests.")


def build(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    keep = ["run", "llc", "llc_se", "llc_mean", "alpha", "alpha_lo", "alpha_hi", "d_s", "d_s_lo", "d_s_hi",
            "late_alpha", "late_d_s", "r2", "t_c", "test_acc"]
    sweep = {k: v for k, v in an["sweep"].items() if k != "runs"}
    return {**study_header(ctx, ["mnist1d"]),
            "data": {"name": ctx.config.data.name, "n_train": int(tr["n_train"]), "n_test": int(tr["n_test"]),
                     "n_features": int(tr["n_features"]), "meta": tr["data_meta"]},
            "ensemble": an["ensemble"], "hypotheses": an["hypotheses"], "summary": an["summary"],
            "paper_table8": an["paper_table8"], "regressions": an["regressions"],
            "h7_regressions": an["h7_regressions"], "per_run": an["runs"][keep],
            "llc_nonpositive": an["llc_nonpositive"], "sweep": sweep, "notes": an["notes"],
            "divergence": tr["divergence"]}


# --------------------------------------------------------------------------- figures

def _fig_ds_vs_llc(ctx, path: Path) -> Path:
    import matplotlib.pyplot as plt

    an = ctx["analysis"]
    runs = an["runs"]
    lam, ds, lbar = (runs[c].to_numpy(float) for c in ("llc", "d_s", "llc_mean"))
    dlo, dhi = runs["d_s_lo"].to_numpy(float), runs["d_s_hi"].to_numpy(float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, x, col, lab, title in ((axes[0], lam, "llc", r"final $\lambda$ (mean of last 10)", "Fig 2a analogue: d_s vs λ"),
                                   (axes[1], lbar, "llc_mean", r"time-averaged $\bar\lambda$",
                                    "Fig 21 analogue: d_s vs λ̄")):
        ok = np.isfinite(x) & np.isfinite(ds)
        ax.errorbar(x[ok], ds[ok], yerr=np.abs(np.stack([ds[ok] - dlo[ok], dhi[ok] - ds[ok]])), fmt="o", ms=3,
                    lw=0.6, label="identical-architecture runs (95 % delta-method CI)")
        if an["sweep"].get("enabled"):
            sr = an["sweep"]["runs"]
            ax.plot(sr[col].to_numpy(float), sr["d_s"].to_numpy(float), "s", ms=4, color="#ff7f0e",
                    label="Table-7 architectures")
        lim = [min(0, np.nanmin(np.r_[x[ok], ds[ok]])), np.nanmax(np.r_[x[ok], ds[ok], 1e-3])]
        ax.plot(lim, lim, "k--", lw=1, label="d_s = λ (bound)")
        ax.set_xlabel(lab)
        ax.set_ylabel(r"$d_s = 2\lambda\alpha$ (whole range)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_prediction(ctx, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tr, an = ctx["train"], ctx["analysis"]
    pred = an["h7_pred"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    r2, r2h = an["runs"]["r2"].to_numpy(float), np.asarray(pred.r2_heldout, float)
    bins = np.linspace(-1, 1, 81)
    axes[0].hist(np.clip(r2[np.isfinite(r2)], -1, 1), bins=bins, alpha=0.7, label="in-sample r² (whole-range fit, paper)")
    if np.isfinite(r2h).any():
        axes[0].hist(np.clip(r2h[np.isfinite(r2h)], -1, 1), bins=bins, alpha=0.6,
                     label="held-out R² of log R (late half; clipped at −1)")
    axes[0].set_xlabel("R²")
    axes[0].set_ylabel("runs")
    axes[0].set_title("Fig 18 analogue", fontsize=9)
    axes[0].legend(fontsize=6)
    steps = np.asarray(tr["steps"], float)
    disp = np.asarray(tr["displacement"], float)[np.asarray(an["h7_curve_index"], int)]
    split = pred.split * steps[-1]
    for j in range(min(disp.shape[0], ctx.config.report.max_curves)):
        col = plt.cm.tab10(j % 10)
        axes[1].plot(steps, disp[j], color=col, lw=1)
        if np.isfinite(pred.alpha_early[j]):  # the stored early-window fit, R̂(t) = e^c t^α
            axes[1].plot(steps, np.exp(pred.intercept_early[j]) * steps ** pred.alpha_early[j], color=col, ls="--",
                         lw=0.8)
    axes[1].axvline(split, color="k", lw=0.8, ls=":")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step t")
    axes[1].set_ylabel("R(t)")
    axes[1].set_title("Fig 14 analogue: true (solid) vs predicted from t ≤ split (dashed)", fontsize=8)
    pt, pp = np.asarray(pred.R_true_final, float), np.asarray(pred.R_pred_final, float)
    axes[2].plot(pt, pp, "o", ms=3)
    lim = [np.nanmin(np.r_[pt, pp]), np.nanmax(np.r_[pt, pp])]
    axes[2].plot(lim, lim, "k--", lw=1)
    axes[2].set_xlabel("true final displacement R_T")
    axes[2].set_ylabel("predicted R̂_T")
    axes[2].set_title("Fig 15 analogue: predicted vs true final displacement", fontsize=8)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_llc(ctx, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tr, an = ctx["train"], ctx["analysis"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    L, ls = np.asarray(tr["llc"], float), np.asarray(tr["llc_steps"], float)
    for k in range(min(L.shape[0], 20)):
        axes[0].plot(ls, L[k], lw=0.7, alpha=0.7)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(r"$\hat\lambda$ along training")
    axes[0].set_title("LLC estimates along training (every llc_schedule.every steps)", fontsize=9)
    axes[1].plot(an["runs"]["llc"].to_numpy(float), np.asarray(an["h7_pred"].R_true_final, float), "o", ms=3)
    axes[1].set_xlabel(r"final $\lambda$")
    axes[1].set_ylabel("final displacement R_T")
    axes[1].set_title("H7 / Fig 17: displacement vs λ", fontsize=9)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def figures(ctx, r: dict, figdir: Path) -> list[Path]:
    apply_style()
    return [_fig_ds_vs_llc(ctx, figdir / "fig2a_fig21_ds_vs_llc.png"),
            _fig_prediction(ctx, figdir / "fig14_15_18_prediction.png"),
            _fig_llc(ctx, figdir / "llc_traces_and_h7.png")]


# --------------------------------------------------------------------------- markdown

def _med(s) -> str:
    return fmt_estimate(s.median, s.median_ci_low, s.median_ci_high)


def _paper_cell(s) -> str:
    return f"{fmt_num(s.median)} (mean {fmt_num(s.mean)}, sd {fmt_num(s.sd)}, n = {s.n})"


def _identical(r: dict) -> list[str]:
    s, d, t8 = r["summary"], r["data"], r["paper_table8"]
    return [
        "### Identical architecture (Table 8 / Fig 2a)\n",
        f"The paper's Table 8 is MNIST (784 inputs, 100 epochs, lr 0.001); this run is {d['name']} with the settings "
        f"in Methods, so values are set side by side, not expected to match.\n",
        md_table(["quantity", "this study: median [95 % CI] (mean [95 % CI], sd, n)",
                  "paper Table 8: median (mean, sd, n)"], [
            ["d_s (whole range)", summary_cell(s["d_s"]), _paper_cell(t8["d_s"])],
            ["λ final", summary_cell(s["llc_final"]), _paper_cell(t8["llc"])],
            ["α = d_s/(2λ)", summary_cell(s["alpha"]), f"{fmt_num(t8['alpha_implied'].median)} (implied by the table)"],
            ["share of runs with d_s ≤ λ", fmt_num(s["share_d_s_le_llc"]), fmt_num(t8["share_d_s_le_llc"])],
            ["r² of the fit", summary_cell(s["r2"]), "not given (Fig 18 histogram)"]]),
        "",
        "Cross-run regressions (OLS with HC3, Spearman with bootstrap CI, Deming errors-in-variables with δ from the "
        "per-run standard errors; Holm within the table):\n",
        regressions_table(r["regressions"]), ""]


def _sweep(r: dict) -> list[str]:
    sw = r["sweep"]
    if not sw.get("enabled"):
        return []
    rows = [[x["row"], x["layers_paper"], "-".join(map(str, x["widths"])), x["n_params"], x["n_runs"],
             fmt_estimate(x["d_s"], x["d_s_lo"], x["d_s_hi"]), f"{fmt_num(x['llc'])} ± {fmt_num(x['llc_se'])}",
             fmt_num(x["llc_mean"]), fmt_estimate(x["alpha"], x["alpha_lo"], x["alpha_hi"]), fmt_num(x["late_alpha"]),
             fmt_num(x["r2"]), fmt_num(x["test_acc"]), fmt_num(x["paper_d_s"]), fmt_num(x["paper_llc"]),
             x["paper_params"]] for x in sw["arch"]]
    return [f"### Architecture sweep (Table 7), {sw['total_steps']} steps each\n",
            md_table(["T7 row", "paper layers", "widths here", "params", "runs", "d_s [95% CI]", "λ ± se", "λ̄",
                      "α [95% CI]", "α late", "r²", "test acc", "paper d_s", "paper λ", "paper params"], rows),
            f"\n{sw['n_llc_nonpositive']} sweep runs with λ ≤ 0. Does the ordering of d_s across architectures agree "
            f"with the paper's?\n", regressions_table(sw["ours_vs_paper"]), "", regressions_table(sw["regressions"]), ""]


def _h7_and_nonpositive(r: dict) -> list[str]:
    s, cfg = r["summary"], r["config"]
    npz = r["llc_nonpositive"]
    rows = [[x.run, fmt_num(x.llc), fmt_num(x.llc_se), fmt_num(x.alpha), fmt_num(x.d_s), fmt_num(x.late_alpha),
             fmt_num(x.late_d_s)] for x in npz.itertuples(index=False)]
    return ["### H7: displacement and its prediction (Figs 14–15, 17–18)\n",
            f"Early-window eq-17 fit on t ≤ {fmt_num(cfg['h7']['split'])}·T, prediction of R(t) beyond: median "
            f"relative error of R_T {_med(s['rel_err_final'])}; held-out R² of log R median {_med(s['r2_heldout'])}.\n",
            regressions_table(r["h7_regressions"]), "",
            "### Runs with λ ≤ 0 (reported separately; excluded from the per-run H2/H3 tests)\n",
            md_table(["run", "λ", "se", "α", "d_s", "α late", "d_s late"], rows) if rows else "None.", ""]


def _methods(r: dict) -> str:
    cfg, d, e, sw = r["config"], r["data"], r["ensemble"], r["sweep"]
    tr, llc = cfg["train"], cfg["llc"]
    notes = [
        f"**Data**: {d['name']} — {d['meta'].get('source', '')}; {d['n_train']} train / {d['n_test']} test, "
        f"{d['n_features']} features. The paper used MNIST (10000-image subset, 50/50). `--set data.name=mnist "
        f"--set data.path=DIR` runs on local MNIST files with the paper's subset and split (docs/run_a_study.md).",
        f"**Model / SGD**: MLP {'-'.join(map(str, e['widths']))} ReLU ({e['n_params']} parameters; the paper's "
        f"784-128-64-32-10 with the input width set by the data), PyTorch default init; SGD lr {fmt_num(tr['lr'])} "
        f"(paper 0.001), momentum {fmt_num(tr['momentum'])}, batch {tr['batch_size']}, {tr['epochs']} epochs = "
        f"{e['total_steps']} steps (paper 100 epochs), drop_last.",
        f"**LLC** (eq 25, docs/methods.md#measured-quantities): every {cfg['llc_schedule']['every']} "
        f"steps, ε = {fmt_num(llc['step_size'])}, γ = {fmt_num(llc['localization'])}, {llc['num_chains']} chain(s) × "
        f"{llc['num_draws']} draws, {llc['num_burnin_steps']} burn-in, SGLD batch {llc['batch_size']}, **nβ = "
        f"{fmt_num(e['nbeta'])}** ({llc['nbeta']}). Final λ = mean of the last {cfg['llc_schedule']['last']} "
        f"estimates (App G.1), se = their std/√count (optimistic: successive estimates are autocorrelated); λ̄ = mean "
        f"of all estimates (Cor 3.3). Localization relaxation time 2/(εγ) = {fmt_num(e['relaxation_steps'])} steps "
        f"vs {llc['num_draws']} draws: the chains may not equilibrate; {e['llc_trend_flags']} of "
        f"{e['llc_n_estimates']} estimates were trend-flagged (|z| > 3). Negative λ̂ are kept.",
        f"**Fits**: eq 17 on {cfg['fit']['n_grid']} log-spaced points, `{cfg['fit']['method']}` intervals "
        f"({cfg['fit']['n_boot']} bootstrap resamples), whole range (the paper's d_s) and late window after the hinge "
        f"crossover t_c (App B.3). d_s = 2λα with delta-method se² = (2α)² se(λ)² + (2λ)² se(α)².",
        f"**Tests** (docs/methods.md#the-hypotheses): H1–H3 per run with Holm across runs; across runs the median "
        f"difference with {cfg['analysis']['n_boot']} bootstrap resamples and the Wilcoxon signed-rank p-value; H7: "
        f"Spearman ρ(R_T, λ) with a bootstrap interval and its one-sided p-value (exact for ≤ 10 runs); "
        f"H7-prediction: the median |R̂_T/R_T − 1| against the margin {fmt_num(cfg['h7']['margin'])}. Every verdict "
        f"by the one rule (docs/methods.md#verdicts).",
    ]
    if sw.get("enabled"):
        notes.insert(2, f"**Sweep**: rows {[x['row'] for x in sw['arch']]} of Table 7 (0-based; layer lists read from "
                        f"the paper, 784 replaced by {d['n_features']}, output 10 appended; the stray '1' in row 8's "
                        f"'784, 128, 64 1' is read as a footnote marker), {cfg['sweep']['seeds']} seed(s) each, "
                        f"{cfg['sweep']['epochs']} epochs (paper 250), other settings as above.")
    timings = {**r["timing"], "report": {"wall_s": r["timing_report_s"], "device": r["device"], "cached": False}}
    return methods_section(cfg, seeds=f"{tr['seed_offset']}..{tr['seed_offset'] + tr['seeds'] - 1}",
                           device=f"{r['device']} (torch CPU threads {r['torch_threads']})",
                           executor=executor_sentence(r.get("executor")), versions=r["versions"], timings=timings,
                           notes=notes)


def _diagnostics(r: dict) -> list[str]:
    s = r["summary"]
    rows = [[x.run, f"{fmt_num(x.llc)} ± {fmt_num(x.llc_se)}", fmt_num(x.llc_mean),
             fmt_estimate(x.alpha, x.alpha_lo, x.alpha_hi), fmt_estimate(x.d_s, x.d_s_lo, x.d_s_hi),
             fmt_num(x.late_alpha), fmt_num(x.r2), fmt_num(x.test_acc)] for x in r["per_run"].itertuples(index=False)]
    return ["## Diagnostics\n",
            f"- {s['n_runs']} runs, {s['n_fitted']} fitted; crossover t_c median {_med(s['t_c'])}; per-run λ se "
            f"median {fmt_num(s['llc_final_se'].median)}.",
            "- Per run (identical architecture):\n",
            md_table(["run", "λ ± se", "λ̄", "α [95% CI]", "d_s [95% CI]", "α late", "r²", "test acc"], rows),
            *[f"- note: {n}" for n in r["notes"]], ""]


FIGURES = [("fig2a_fig21_ds_vs_llc.png", "d_s against final λ (Fig 2a) and against λ̄ (Fig 21), with the bound d_s = λ."),
           ("fig14_15_18_prediction.png", "Fig 18: r² histograms; Fig 14: true displacement curves and the curves "
            "predicted by the stored early-window fits; Fig 15: predicted vs true final displacement."),
           ("llc_traces_and_h7.png", "λ̂ along training, and final displacement against λ (H7).")]


def render(r: dict) -> str:
    s, d, e = r["summary"], r["data"], r["ensemble"]
    data = ("local files: " + str(d["meta"].get("path")) if d["name"] != "mnist1d"
            else "MNIST-1D generated offline, not MNIST")
    L = [header("Spectral dimension vs the LLC (paper §4.1, App G.1, App J Tables 7–8, Figs 2a, 14–15, 18, 21)",
                preset=preset_label(r) + f"; data **{d['name']}** ({data})", seeds=f"{e['n_runs']} seeds",
                device=r["device"], config_hash=r["config_hash"], generated=r["generated"],
                wall_total_s=r["wall_total_s"])]
    if r["presets"] != ["paper"]:
        L.append("*This is not the paper's configuration*: see Methods for every difference; `--preset paper` runs "
                 "App G.1's settings (documented for a GPU; `--device auto` picks CUDA when present).\n")
    L += [divergence_sentence(r.get("divergence")) + "\n", "## Verdicts\n", verdict_table(r["hypotheses"]), "",
          verdict_notes(r["hypotheses"]) + "\n",
          "Per-run view (each run's own one-sided test, Holm across runs):\n", per_run_table(r["hypotheses"]), "",
          EQUIVALENCE_NOTE + "\n", "**Summary.**\n",
          f"- λ (final, mean of last {r['config']['llc_schedule']['last']}): median {_med(s['llc_final'])}; λ̄: median "
          f"{_med(s['llc_mean'])}; **{s['n_llc_nonpositive']} of {s['n_fitted']} runs have λ ≤ 0** (listed below); "
          f"{s['n_negative_estimates']} of {s['n_estimates']} individual estimates along training were negative.",
          f"- α whole range: median {_med(s['alpha'])}; late window: {_med(s['late_alpha'])}. d_s (whole, the "
          f"paper's): median {_med(s['d_s'])}; late: {_med(s['late_d_s'])}.",
          f"- Mean test accuracy {fmt_estimate(s['test_acc'].mean, *s['test_acc'].conf_int().loc['mean'])}.", "",
          "## Results beside the paper\n", *_identical(r), *_sweep(r), *_h7_and_nonpositive(r), "## Figures\n"]
    L += [f"![{cap}](figures/{f})\n\n*{cap}*\n" for f, cap in FIGURES]
    L += [_methods(r), *_diagnostics(r)]
    return "\n".join(L) + "\n"


def write_report(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build, figures, render)
