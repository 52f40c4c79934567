"""Report of the grokking study (paper App F.2, Figs 5-6; docs/grokking.md).

``build`` gathers the stored stage outputs into results.json, the figures plot stored numbers
only, and ``render`` writes report.md from results.json as read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import MISSING, fmt_num
from .toolkit import (
    apply_style,
    divergence_sentence,
    header,
    md_table,
    methods_section,
    preset_label,
    save_figure,
    study_header,
    verdict_notes,
    verdict_table,
    write_skipped_report,
    write_study_report,
)

__all__ = ["write_report", "build", "render"]

SERIES = (("test_acc", "test accuracy"), ("llc", "λ̂ (LLC)"), ("weights", "weight speed ‖Δw‖ per step"))


def build(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    return {**study_header(ctx, ["ruptures"]), "hypotheses": an["hypotheses"], "summary": an["summary"],
            "per_run": an["per_run"], "divergence": tr["divergence"],
            "ensemble": {"n_params": int(tr["n_params"]), "n_train": tr["n_train"], "n_test": tr["n_test"],
                         "nbeta": tr["nbeta"], "engine_s": tr["engine_s"]}}


# --------------------------------------------------------------------------- figures

def _fig_runs(ctx, r: dict, path: Path) -> Path:
    """Figs 5-6 analogue: per run, the three series and the train accuracy, change points marked."""
    import matplotlib.pyplot as plt

    an, tr = ctx["analysis"], ctx["train"]
    grid = np.asarray(an["curves"]["grid"], float)
    ok = ~np.asarray(tr["diverged"], bool)
    train_acc = np.asarray(tr["train_acc"], float)[ok]
    start = int(ctx.config.jumps.start_step)
    ev = np.searchsorted(np.asarray(tr["eval_steps"]), grid.astype(np.int64))
    n_show = min(4, len(r["per_run"]))
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes, SERIES):
        Y = np.asarray(an["series"][key], float)
        for i in range(n_show):
            c = colors[i % len(colors)]
            ax.plot(grid, Y[i], color=c, lw=1.2, label=f"seed {r['per_run'][i]['seed']}")
            if key == "test_acc":
                ax.plot(grid, train_acc[i][ev], color=c, lw=0.8, ls=":")
            for s in r["per_run"][i][f"{key}_jump_steps"]:
                ax.axvline(s, color=c, lw=0.8, ls="--", alpha=0.7)
        ax.set_ylabel(label)
    for ax in axes:
        ax.axvspan(0, start, color="0.85", zorder=0)
    axes[0].set_title("test accuracy (solid; train dotted), λ̂ and weight speed; dashed = detected change points")
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("step")
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_tail(ctx, r: dict, path: Path) -> Path:
    """Survival function of the path increments ‖Δw‖ after ``jumps.start_step`` (log-log), with the
    Hill fit and a slope-2 reference."""
    import matplotlib.pyplot as plt

    tr = ctx["train"]
    ok = ~np.asarray(tr["diverged"], bool)
    after = np.asarray(tr["path_steps"]) > int(ctx.config.jumps.start_step)
    x = np.sort(np.asarray(tr["step_length"], float)[ok][:, after].ravel())[::-1]
    x = x[x > 0]
    surv = np.arange(1, x.size + 1) / x.size
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.loglog(x, surv, ".", ms=2, label="pooled runs")
    h9 = next(h for h in r["hypotheses"] if h.id == "H9")
    k = int(h9.details["k"])
    if k > 1 and np.isfinite(h9.estimate):
        xs = np.array([x[k - 1], x[0]])
        ax.loglog(xs, surv[k - 1] * (xs / xs[0]) ** (-h9.estimate), "r-", label=f"Hill α = {fmt_num(h9.estimate)}")
        ax.loglog(xs, surv[k - 1] * (xs / xs[0]) ** (-2.0), "k--", label="α = 2 (variance boundary)")
    ax.set_xlabel("‖Δw‖ per record interval")
    ax.set_ylabel("P(‖Δw‖ ≥ x)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


FIGURES = [("fig5_6_runs.png", "Figs 5-6 analogue: test accuracy (train accuracy dotted), λ̂ and the weights' "
            "speed ‖Δw‖ per step of four runs, with the change points found in each series after jumps.start_step "
            "(dashed; the grey band is the initial transient left out of the analysis)."),
           ("tail.png", "Survival function of the path increments ‖Δw‖ after jumps.start_step, with the Hill tail fit "
            "(H9) and the α = 2 boundary of finite variance.")]


def figures(ctx, r: dict, figdir: Path) -> list[Path]:
    apply_style()
    figdir = Path(figdir)
    return [_fig_runs(ctx, r, figdir / FIGURES[0][0]), _fig_tail(ctx, r, figdir / FIGURES[1][0])]


# --------------------------------------------------------------------------- text

def _per_run(r: dict) -> str:
    rows = [[p["seed"], fmt_num(p["memorize_step"]), fmt_num(p["grok_step"]), fmt_num(p["delay"]),
             fmt_num(p["final_test_acc"]),
             *[", ".join(map(str, p[f"{k}_jump_steps"])) or MISSING for k, _ in SERIES]] for p in r["per_run"]]
    return md_table(["seed", "memorized (train ≥ level)", "grokked (test ≥ level)", "delay", "final test acc",
                     *[f"jump steps: {lbl}" for _, lbl in SERIES]], rows)


def _beside_paper(r: dict) -> str:
    by = {h.id: h for h in r["hypotheses"]}
    s = r["summary"]
    return md_table(["paper (App F.2)", "this study"], [
        ["grokking regime reached with small batches (no settings given)",
         f"{s['n_grokked']} of {s['n_kept']} runs grok; median step {fmt_num(s['grok_step_median'])} "
         f"(memorized at {fmt_num(s['memorize_step_median'])})"],
        ["\"sudden jumps in the accuracy correspond to sudden jumps in the weights and the LLC\" (Fig 6)",
         "; ".join(f"{i}: {by[i].verdict} (share {fmt_num(by[i].details.get('observed_share', np.nan))} vs chance "
                   f"{fmt_num(by[i].details.get('null_share', np.nan))})" for i in ("H8-llc", "H8-weights"))],
        ["\"sudden large jumps in weight space (and the LLC)\" (Fig 5)",
         f"H8-llc-weights: {by['H8-llc-weights'].verdict}"],
        ["large jumps ~ Lévy noise (space-fractional derivative)", f"H9: Hill tail index {fmt_num(by['H9'].estimate)}, "
         f"{by['H9'].verdict}"],
    ])


def _methods(r: dict) -> str:
    cfg = r["config"]
    d, tr, jc, ls = cfg["data"], cfg["train"], cfg["jumps"], cfg["llc_schedule"]
    e = r["ensemble"]
    notes = [
        f"**Data**: all {d['p']}² pairs (a, b), label (a {'+' if d['op'] == 'add' else d['op']} b) mod {d['p']}, "
        f"one-hot a and b concatenated; {e['n_train']} random pairs train, {e['n_test']} test (split seed {d['seed']}); "
        "generated in-process.",
        f"**Model / optimizer** (ours; the paper states none): MLP {2 * d['p']}→{'→'.join(map(str, cfg['model']['hidden']))}"
        f"→{d['p']} ReLU ({e['n_params']} parameters), PyTorch default init; {tr['optimizer']} lr {fmt_num(tr['lr'])}, L2 "
        f"weight decay {fmt_num(tr['weight_decay'])} added to the gradient, batch {tr['batch_size']}, {tr['steps']} steps; "
        "all seeds one batched computation.",
        f"**Series**: every {ls['every']} steps the full-set train and test accuracy (eval mode) and λ̂ "
        f"(Table 3 estimator, nβ = {fmt_num(e['nbeta'])}); the path increments ‖w_t − w_{{t−{tr['record_every']}}}‖₂ every "
        f"{tr['record_every']} steps. The weights' series for change points is their sum over each grid interval divided "
        f"by its length (speed along the path). Only grid steps > {jc['start_step']} are analysed (the initial transient, "
        "where every series moves fast, would otherwise dominate both the change points and the tail).",
        f"**Change points** (docs/grokking.md): PELT on the mean (ruptures, cost l2), each series divided by its "
        f"robust noise scale (MAD of first differences / (0.6745·√2)), penalty {fmt_num(jc['penalty'])}·log n, minimum "
        f"segment {jc['min_size']} grid points.",
        f"**H8 (alignment)**: per run, the share of the first series' jumps with a jump of the second within "
        f"{jc['window']} grid points ({jc['window'] * ls['every']} steps), minus its exact mean over all circular shifts "
        f"of the second series' jump times; p-value: {jc['n_perm']} random independent shifts per run (one-sided); "
        f"interval: percentile bootstrap over runs ({jc['n_boot']} resamples). Claim: excess > 0.",
        f"**H9 (tail)**: Hill estimator on the largest {fmt_num(100 * jc['tail_fraction'])} % of the pooled ‖Δw‖ "
        f"increments after step {jc['start_step']}; interval from a bootstrap over runs. Claim: tail index < 2 (infinite variance, the Lévy-stable "
        "range). A finite-sample Hill estimate is biased by curvature of the tail; the figure shows the fit.",
        f"**Grokking step**: first grid step with test accuracy ≥ {fmt_num(jc['grok_level'])}; memorization: first "
        f"step with train accuracy ≥ {fmt_num(jc['memorize_level'])}.",
        "**Sharding**: none declared (one small ensemble in one process).",
    ]
    seeds = f"{tr['seed_offset']}..{tr['seed_offset'] + tr['seeds'] - 1}"
    timings = {**r["timing"], "report": {"wall_s": r["timing_report_s"], "device": r["device"], "cached": False}}
    return methods_section(cfg, seeds=seeds, device=f"{r['device']} (torch CPU threads {r['torch_threads']})",
                           executor="local (this process)", versions=r["versions"], timings=timings, notes=notes)


def _bottom_line(r: dict) -> list[str]:
    s = r["summary"]
    by = {h.id: h for h in r["hypotheses"]}
    grok = (f"{s['n_grokked']} of {s['n_kept']} runs grokked (test accuracy ≥ level), at steps "
            f"{fmt_num(s['grok_step_range'][0])}–{fmt_num(s['grok_step_range'][1])} (median "
            f"{fmt_num(s['grok_step_median'])}), after memorizing at a median step {fmt_num(s['memorize_step_median'])}."
            if s["n_grokked"] else f"**No run grokked** in {r['config']['train']['steps']} steps: the jump tests below "
                                   "are not about grokking.")
    return [f"- {grok}",
            "- Change points found (all runs): " + ", ".join(f"{lbl} {s['n_jumps'][k]}" for k, lbl in SERIES) + ".",
            *[f"- **{i}** {by[i].claim}: **{by[i].verdict}** — {by[i].reason}." for i in
              ("H8-llc", "H8-weights", "H8-llc-weights", "H9")]]


def render(r: dict) -> str:
    cfg = r["config"]
    L = [header("Grokking: jumps in weights, LLC and test accuracy (paper App F.2, Figs 5-6)", preset=preset_label(r),
                seeds=f"{cfg['train']['seeds']} seeds", device=r["device"], config_hash=r["config_hash"],
                generated=r["generated"], wall_total_s=r["wall_total_s"]),
         divergence_sentence(r.get("divergence")) + "\n", "## Verdicts\n", verdict_table(r["hypotheses"]), "",
         verdict_notes(r["hypotheses"]) + "\n", "**Summary.**\n", *_bottom_line(r), "",
         "## Results beside the paper\n",
         "The paper shows Figs 5-6 qualitatively, with no settings and no numbers.\n", _beside_paper(r), "",
         "## Per run\n", _per_run(r), "", "## Figures\n"]
    L += [f"![{cap}](figures/{f})\n\n*{cap}*\n" for f, cap in FIGURES]
    L += [_methods(r), ""]
    return "\n".join(L) + "\n"


def write_report(ctx) -> Path:
    if ctx["analysis"].get("skipped"):
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build, figures, render)
