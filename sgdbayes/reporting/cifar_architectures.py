"""Report of the cifar_conv and cifar_residual studies (paper App I.3, Tables 5-6, Figs 22-23;
docs/methods.md).

``build`` gathers the stored stage outputs into results.json, the figures plot stored numbers
only, and ``render`` writes report.md from results.json as read back.
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
    preset_label,
    regressions_table,
    save_figure,
    study_header,
    verdict_notes,
    verdict_table,
    write_skipped_report,
    write_study_report,
)

__all__ = ["write_report", "build", "render"]

_TABLE = {"cnn": 5, "resnet": 6}
_FIG = {"cnn": 22, "resnet": 23}


def build(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    keep = ["run", "row", "n_params", "llc", "llc_se", "llc_mean", "alpha", "alpha_lo", "alpha_hi", "d_s", "d_s_lo",
            "d_s_hi", "alpha_early", "t_c", "t_c_lo", "t_c_hi", "late_alpha", "r2", "test_acc"]
    return {**study_header(ctx),
            "data": {"name": ctx.config.data.name, "n_train": tr["n_train"], "n_test": tr["n_test"],
                     "input_shape": tr["input_shape"], "meta": tr["data_meta"]},
            "ensemble": {"total_steps": tr["total_steps"], "nbeta": tr["nbeta"], "models": tr["models"],
                         "llc_trend_flags": tr["llc_trend_flags"], "llc_n_estimates": tr["llc_n_estimates"],
                         "relaxation_steps": an["relaxation_steps"], "n_seeds": int(len(tr["seeds"]))},
            "hypotheses": an["hypotheses"], "arch": an["arch"], "bottom_line": an["bottom_line"], "size_regressions": an["size_regressions"],
            "per_run": an["runs"][[k for k in keep if k in an["runs"]]], "notes": an["notes"],
            "n_llc_nonpositive": an["n_llc_nonpositive"], "divergence": tr["divergence"]}


# --------------------------------------------------------------------------- figures

def _fig_displacement(ctx, path: Path) -> Path:
    """Fig 22/23 analogue: R(t) per architecture (median over seeds, band = seed range), log-log."""
    import matplotlib.pyplot as plt

    tr = ctx["train"]
    cv = {k: np.asarray(v, float) for k, v in ctx["analysis"]["curves"].items()}
    t = np.asarray(tr["steps"], float)
    ok = t > 0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for a in range(len(tr["rows"])):
        ax.plot(t[ok], cv["disp_median"][a][ok], lw=1.4, label=f"{tr['channels'][a]} ({tr['n_params'][a]} params)")
        ax.fill_between(t[ok], cv["disp_min"][a][ok], cv["disp_max"][a][ok], alpha=0.2)
    ax.plot(t[ok], t[ok] ** 0.5 * cv["disp_median"][0][-1] / t[-1] ** 0.5, "k:", lw=1, label="slope 1/2 (Brownian)")
    ax.set(xscale="log", yscale="log", xlabel="step t", ylabel="R(t) = ||w_t - w_0||",
           title="weight displacement per architecture")
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_ds_llc(ctx, r: dict, path: Path) -> Path:
    """d_s against λ per run (delta-method intervals), coloured by architecture, paper's points beside."""
    import matplotlib.pyplot as plt

    runs = ctx["analysis"]["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for a, g in runs.groupby("arch"):
        ds, lam = g["d_s"].to_numpy(float), g["llc"].to_numpy(float)
        err = np.abs(np.stack([ds - g["d_s_lo"].to_numpy(float), g["d_s_hi"].to_numpy(float) - ds]))
        ax.errorbar(lam, ds, yerr=err, fmt="o", ms=3, lw=0.6, label=f"{r['arch'][int(a)]['channels']}")
    lim = [min(0.0, float(np.nanmin(runs[["llc", "d_s"]].to_numpy(float)))),
           float(np.nanmax(runs[["llc", "d_s"]].to_numpy(float)))]
    ax.plot(lim, lim, "k--", lw=1, label="d_s = λ (bound)")
    ax.set(xlabel="final λ", ylabel="d_s = 2λα", title="d_s vs λ per run (this run)")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot([x["paper_llc"] for x in r["arch"]], [x["paper_d_s"] for x in r["arch"]], "s", color="#ff7f0e")
    m = max(x["paper_llc"] for x in r["arch"])
    ax.plot([0, m], [0, m], "k--", lw=1)
    ax.set(xlabel="λ (paper)", ylabel="d_s (paper)", title=f"the paper's Table {_TABLE[ctx.config.arch.family]}")
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_size(ctx, path: Path) -> Path:
    """α_early, t_c and λ along training against the parameter count."""
    import matplotlib.pyplot as plt

    tr, runs = ctx["train"], ctx["analysis"]["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col, lab in ((axes[0], "alpha_early", "α_early (two-segment fit)"), (axes[1], "t_c", "crossover t_c")):
        ax.plot(runs["n_params"], runs[col], "o", ms=4)
        if col == "t_c":
            ax.set_yscale("log")
        ax.set(xscale="log", xlabel="parameters", ylabel=lab, title=f"{lab} vs size")
    steps = np.asarray(tr["llc_steps"], float)
    for a in range(len(tr["rows"])):
        ax = axes[2]
        ax.plot(steps, np.asarray(ctx["analysis"]["curves"]["llc_median"], float)[a], label=f"{tr['channels'][a]}")
    axes[2].set(xlabel="step", ylabel="λ̂ (median over seeds)", title="λ̂ along training")
    axes[2].legend(fontsize=7)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


FIGURES = [("displacement.png", "Weight displacement R(t) per architecture (median over seeds, band = range); "
            "the analogue of Fig 22 (conv) / Fig 23 (residual)."),
           ("ds_vs_llc.png", "d_s against final λ per run with 95% delta-method intervals, and the paper's table."),
           ("size.png", "Early slope α_early and crossover t_c against the parameter count; λ̂ along training.")]


def figures(ctx, r: dict, figdir: Path) -> list[Path]:
    apply_style()
    return [_fig_displacement(ctx, figdir / FIGURES[0][0]), _fig_ds_llc(ctx, r, figdir / FIGURES[1][0]),
            _fig_size(ctx, figdir / FIGURES[2][0])]


# --------------------------------------------------------------------------- markdown

def _med(s) -> str:
    return fmt_estimate(s.median, s.median_ci_low, s.median_ci_high) if s is not None and s.n else "—"


def _beside_paper(r: dict) -> list[str]:
    t = _TABLE[r["config"]["arch"]["family"]]
    rows = [[x["row"], x["channels_paper"], "-".join(map(str, x["channels"])), x["n_params"], x["n_runs"],
             _med(x["d_s"]), _med(x["llc"]), _med(x["llc_mean"]), _med(x["alpha"]), _med(x["alpha_early"]),
             _med(x["t_c"]), _med(x["test_acc"]), fmt_num(x["paper_d_s"]),
             f"{fmt_num(x['paper_llc'])} ± {fmt_num(x['paper_llc_sd'])}", x["paper_params"]] for x in r["arch"]]
    return [f"## Results beside the paper (Table {t})\n",
            "Per architecture: medians over seeds with 95% bootstrap intervals (— with fewer than 3 seeds).\n",
            md_table([f"T{t} row", "paper channels", "channels here", "params", "runs", "d_s", "λ", "λ̄", "α",
                      "α_early", "t_c", "test acc", "paper d_s", "paper λ ± sd", "paper params"], rows), "",
            "### The size claim: early slope and crossover against size\n",
            regressions_table(r["size_regressions"]), ""]


def _methods(r: dict) -> str:
    cfg, d, e = r["config"], r["data"], r["ensemble"]
    tr, llc, arch = cfg["train"], cfg["llc"], cfg["arch"]
    t = _TABLE[arch["family"]]
    data = (f"{d['name']} — {d['meta'].get('source', '')}; {d['n_train']} train / {d['n_test']} test, input "
            f"{d['input_shape']}.")
    if d["name"] != "cifar10":
        data += (" **Not CIFAR-10**: the paper used a 10000-image CIFAR-10 subset (3 x 32 x 32); "
                 "`--preset paper --set data.path=DIR` reads the local cifar-10-batches-py folder.")
    notes = [
        f"**Data**: {data}",
        f"**Models**: family `{arch['family']}` (docs/models.md): rows {[x['row'] for x in r['arch']]} of Table {t}, "
        f"channels divided by {arch['channel_divisor']} (1 = the paper's); Xavier-uniform init, zero bias, ReLU "
        f"(App I.3). Parameter counts here: {[x['n_params'] for x in r['arch']]}; the paper's: "
        f"{[x['paper_params'] for x in r['arch']]}."
        + (f" The residual layout (not stated in the paper; {arch['blocks']} block(s) per later stage) is read off "
           "Table 6's counts, which it reproduces exactly at full width with 2 blocks (docs/models.md)."
           if arch["family"] == "resnet" else ""),
        f"**SGD**: lr {fmt_num(tr['lr'])} (paper 0.001), momentum {fmt_num(tr['momentum'])}, batch "
        f"{tr['batch_size']} (paper 64), {tr['epochs']} epochs = {e['total_steps']} steps, {e['n_seeds']} seed(s) per "
        f"architecture (paper: one run each), one batched ensemble per architecture.",
        f"**LLC** (eq 25, docs/methods.md#measured-quantities): every {cfg['llc_schedule']['every']} steps, ε = "
        f"{fmt_num(llc['step_size'])}, γ = {fmt_num(llc['localization'])}, {llc['num_chains']} chain(s) × "
        f"{llc['num_draws']} draws, SGLD batch {llc['batch_size']}, nβ = {fmt_num(e['nbeta'])} ({llc['nbeta']}). "
        f"Final λ = mean of the last {cfg['llc_schedule']['last']} estimates; λ̄ = mean of all. Relaxation time "
        f"2/(εγ) = {fmt_num(e['relaxation_steps'])} steps; {e['llc_trend_flags']} of {e['llc_n_estimates']} "
        f"estimates trend-flagged.",
        f"**Fits**: eq 17 on {cfg['fit']['n_grid']} log-spaced points, `{cfg['fit']['method']}` intervals; whole "
        f"range (the paper's d_s, the super-diffusive start not factored out, as in App I.3), late window after the "
        f"two-segment crossover t_c, α_early = the first segment's slope (App B.3). d_s = 2λα (delta method).",
        "**Tests** (docs/methods.md#the-hypotheses): H1–H3 over every run of every architecture; **size-early**: "
        "Spearman ρ(α_early, log10 parameters) over the runs with a crossover, percentile bootstrap interval, its "
        "p-value halved for the one-sided claim ρ > 0; OLS (HC3) slopes beside it. Every verdict by the one rule "
        "(docs/methods.md#verdicts).",
    ]
    timings = {**r["timing"], "report": {"wall_s": r["timing_report_s"], "device": r["device"], "cached": False}}
    return methods_section(cfg, seeds=f"{tr['seed_offset']}..{tr['seed_offset'] + tr['seeds'] - 1}",
                           device=f"{r['device']} (torch CPU threads {r['torch_threads']})",
                           executor=executor_sentence(r.get("executor")), versions=r["versions"], timings=timings,
                           notes=notes)


def _diagnostics(r: dict) -> list[str]:
    rows = [[x.run, x.n_params, f"{fmt_num(x.llc)} ± {fmt_num(x.llc_se)}", fmt_num(x.llc_mean),
             fmt_estimate(x.alpha, x.alpha_lo, x.alpha_hi), fmt_estimate(x.d_s, x.d_s_lo, x.d_s_hi),
             fmt_num(x.alpha_early), fmt_estimate(x.t_c, x.t_c_lo, x.t_c_hi), fmt_num(x.late_alpha), fmt_num(x.r2),
             fmt_num(x.test_acc)] for x in r["per_run"].itertuples(index=False)]
    return ["## Diagnostics\n", f"- {r['n_llc_nonpositive']} runs with λ ≤ 0 (excluded from the H2/H3 tests).",
            *[f"- note: {n}" for n in r["notes"]], "", "Per run:\n",
            md_table(["run", "params", "λ ± se", "λ̄", "α [95% CI]", "d_s [95% CI]", "α_early", "t_c [95% CI]",
                      "α late", "r²", "test acc"], rows), ""]


def _bottom_line(r: dict) -> str:
    """Plain words from the stored numbers: is the ensemble past its super-diffusive start at all?"""
    b = r["bottom_line"]
    size = next((h for h in r["hypotheses"] if h.id == "size-early"), None)
    words = (f"**Bottom line.** Whole-range α: median {_med(b['alpha'])} over {b['alpha'].n} runs "
             f"({b['n_alpha_below_half']} below 1/2); late-window α below 1/2 in {b['n_late_below_half']} of "
             f"{b['n_late']} runs. ")
    if b["alpha"].n and b["alpha"].median >= 0.5:
        words += ("These runs have not left the super-diffusive start within the training budget, so d_s = 2λα (λ > 0) "
                  "exceeds λ and H2/H3 fail here; the paper's runs were longer (see Methods). ")
    if size is not None:
        words += f"The size claim (size-early) is **{size.verdict}** (ρ = {fmt_num(size.estimate)})."
    return words + "\n"


def render(r: dict) -> str:
    d, fam = r["data"], r["config"]["arch"]["family"]
    L = [header(f"{r['title']} (paper App I.3, Table {_TABLE[fam]}, Fig {_FIG[fam]})",
                preset=preset_label(r) + f"; data **{d['name']}**", seeds=f"{r['ensemble']['n_seeds']} seeds per "
                f"architecture", device=r["device"], config_hash=r["config_hash"], generated=r["generated"],
                wall_total_s=r["wall_total_s"])]
    if r["presets"] != ["paper"]:
        L.append("*This is not the paper's configuration*: see Methods for every difference; `--preset paper "
                 "--set data.path=DIR` runs App I.3's settings on local CIFAR-10 (documented for a GPU).\n")
    L += [divergence_sentence(r.get("divergence")) + "\n", "## Verdicts\n", verdict_table(r["hypotheses"]), "",
          verdict_notes(r["hypotheses"]) + "\n", _bottom_line(r), *_beside_paper(r), "## Figures\n"]
    L += [f"![{cap}](figures/{f})\n\n*{cap}*\n" for f, cap in FIGURES]
    L += [_methods(r), *_diagnostics(r)]
    return "\n".join(L) + "\n"


def write_report(ctx) -> Path:
    if ctx["analysis"].get("skipped"):
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build, figures, render)
