"""Report of the ablations study (paper App H, Figs 7-13, 16-17, the App-H table; docs/methods.md).

``build`` gathers the stored stage outputs (Results kept as Results) into results.json, the
figures plot stored numbers only (the per-cell means come from the analysis), and ``render``
writes report.md from results.json as read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import MISSING, fmt_estimate, fmt_interval, fmt_num, fmt_p, fmt_pvalue
from .spectral_dimension import EQUIVALENCE_NOTE
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
    verdict_notes,
    verdict_table,
    write_skipped_report,
    write_study_report,
)

__all__ = ["write_report", "build", "render"]


def build(ctx) -> dict:
    tr, an = ctx["train"], ctx["analysis"]
    return {**study_header(ctx, ["mnist1d"]),
            "data": {"name": ctx.config.data.name, "n_train": int(tr["n_train"]), "n_test": int(tr["n_test"]),
                     "n_features": int(tr["n_features"]), "meta": tr["data_meta"]},
            "model": {"widths": tr["widths"], "n_params": int(tr["n_params"]), "nbeta": float(tr["nbeta"])},
            "hypotheses": an["hypotheses"], "app_h": an["app_h"], "correlations": an["correlations"], "h6": an["h6"],
            "h6_adam": an["h6_adam"], "n_runs": an["n_runs"], "n_fitted": an["n_fitted"], "cells": an["cells"],
            "cell_wall_s": np.asarray(tr["cell_wall_s"], float), "notes": an["notes"], "divergence": tr["divergence"],
            "paper_app_h_source": "paper App H table (transcribed; not among sgdbayes.paper's tables)"}


# --------------------------------------------------------------------------- figures

def _fig_grid(ctx, labels, path: Path) -> Path:
    import matplotlib.pyplot as plt

    means = ctx["analysis"]["cell_means"]
    fig, axes = plt.subplots(2, len(labels), figsize=(3.6 * len(labels), 6), squeeze=False)
    for j, lab in enumerate(labels):
        g = means[means["label"] == lab]
        for i, y in enumerate(("d_s", "llc")):
            piv = g.pivot(index="batch_size", columns="lr", values=y).sort_index().sort_index(axis=1)
            ax = axes[i, j]
            im = ax.imshow(piv.to_numpy(float), aspect="auto", cmap="viridis", origin="lower")
            ax.set_xticks(range(piv.shape[1]), [f"{v:g}" for v in piv.columns], fontsize=7)
            ax.set_yticks(range(piv.shape[0]), [f"{int(v)}" for v in piv.index], fontsize=7)
            for (a_, b_), v in np.ndenumerate(piv.to_numpy(float)):
                ax.text(b_, a_, fmt_num(v), ha="center", va="center", color="w", fontsize=7)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("batch size")
            ax.set_title(f"{lab}: mean {'d_s' if y == 'd_s' else 'λ'}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Figs 7 / 9 analogue: d_s and λ over learning rate × batch size", fontsize=10)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_correlations(ctx, df, labels, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = [("lr", "d_s", True, "Fig 11: d_s vs lr"), ("lr", "llc", True, "Fig 11: λ vs lr"),
              ("batch_size", "d_s", True, "Fig 10: d_s vs batch"), ("batch_size", "llc", True, "Fig 10: λ vs batch"),
              ("d_s", "test_acc", False, "Fig 12: test acc vs d_s"), ("llc", "test_acc", False, "Fig 13: test acc vs λ")]
    for ax, (x, y, logx, title) in zip(axes.flat, panels):
        for j, lab in enumerate(labels):
            g = df[df["label"] == lab]
            jit = np.exp(np.random.default_rng(j).normal(0, 0.04, len(g))) if logx else 1.0  # visual jitter only
            ax.plot(g[x].to_numpy(float) * jit, g[y].to_numpy(float), "o", ms=3, alpha=0.7, label=lab)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title, fontsize=8)
    axes[0, 0].legend(fontsize=6)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def _fig_momentum(ctx, df, labels, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for lab in labels:
        g = df[df["label"] == lab]
        axes[0].plot(g["llc"].to_numpy(float), g["R_final"].to_numpy(float), "o", ms=3, label=lab)
    axes[0].set_xlabel("final λ")
    axes[0].set_ylabel("final displacement R_T")
    axes[0].set_title("Figs 16–17: displacement vs λ", fontsize=8)
    axes[0].legend(fontsize=6)
    s = df[df["label"].str.startswith("sgd")]
    axes[1].plot(s["momentum"].to_numpy(float), s["d_s"].to_numpy(float), "o", ms=3, label="d_s")
    axes[1].plot(s["momentum"].to_numpy(float), s["llc"].to_numpy(float), "s", ms=3, label="λ")
    axes[1].set_xlabel("momentum")
    axes[1].set_title("Fig 8: momentum (SGD family)", fontsize=8)
    axes[1].legend(fontsize=6)
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def figures(ctx, r: dict, figdir: Path) -> list[Path]:
    apply_style()
    df = ctx["analysis"]["runs"]
    labels = list(dict.fromkeys(df["label"]))
    return [_fig_grid(ctx, labels, figdir / "fig7_9_grid.png"),
            _fig_correlations(ctx, df, labels, figdir / "fig10_13_correlations.png"),
            _fig_momentum(ctx, df, labels, figdir / "fig8_16_17.png")]


# --------------------------------------------------------------------------- markdown

def _h6(r: dict) -> list[str]:
    h6 = r["h6"]
    out = [f"**H6 in detail** (standardized partial slopes, OLS with HC3; {h6.scope}; covariates "
           f"{', '.join(h6.covariates)}):\n"]
    if not h6.estimable:
        return out + [f"not estimable: {h6.note}", ""]
    est = h6.estimates()
    rows = [[label, fmt_num(est.loc[k, "estimate"]), fmt_interval(est.loc[k, "ci_low"], est.loc[k, "ci_high"]), p]
            for k, label, p in (("beta_d_s", "d_s", fmt_p(h6.beta_d_s_pvalue)), ("beta_llc", "λ", fmt_p(h6.beta_llc_pvalue)),
                                ("delta", "Δ = |β(d_s)| − |β(λ)|",
                                 fmt_pvalue(h6.delta_pvalue, f"bootstrap, {h6.n_boot_used} resamples")))]
    out += [md_table(["response", "β_std on log10 lr", "95% interval", "p-value (HC3, H0: β = 0; Δ: H0 Δ ≤ 0)"], rows)]
    ha = r["h6_adam"]
    if ha is not None and ha.estimable:
        ea = ha.estimates()
        out.append("\nSame contrast within Adam runs: " + ", ".join(
            f"{name} = {fmt_estimate(ea.loc[k, 'estimate'], ea.loc[k, 'ci_low'], ea.loc[k, 'ci_high'])}"
            for k, name in (("beta_d_s", "β(d_s)"), ("beta_llc", "β(λ)"), ("delta", "Δ"))) + ".")
    return out + [""]


def _mean_cell(s) -> str:
    return fmt_estimate(s.mean, *s.conf_int().loc["mean"]) if s.n else MISSING


def _app_h(r: dict) -> list[str]:
    rows = []
    for x in r["app_h"]:
        p = x["paper"] or {}
        rows.append([x["optimizer"], x["n"], _mean_cell(x["d_s"]), fmt_num(x["d_s"].sd), _mean_cell(x["llc"]),
                     fmt_num(x["llc"].sd), _mean_cell(x["test_acc"]), x["n_llc_nonpositive"], fmt_num(p.get("d_s_mean")),
                     fmt_num(p.get("d_s_std")), fmt_num(p.get("llc_mean")), fmt_num(p.get("llc_std")),
                     fmt_num(p.get("test_acc_mean"))])
    out = [f"### App-H table (per optimizer; means with 95 % t-intervals). Paper values: {r['paper_app_h_source']}; "
           f"the paper used MNIST and its own (unstated) grid.\n",
           md_table(["optimizer", "runs", "d_s mean [CI]", "d_s std", "λ mean [CI]", "λ std", "test acc % [CI]",
                     "# λ ≤ 0", "paper d_s mean", "paper d_s std", "paper λ mean", "paper λ std", "paper test acc %"],
                    rows), ""]
    for fam, reg in r["correlations"].items():
        out += [f"### Correlations within {fam} (Figs 10–13, 8, 16–17; Holm across this table)\n",
                regressions_table(reg), ""]
    return out


def _methods(r: dict) -> str:
    cfg, d, g, llc = r["config"], r["data"], r["config"]["grid"], r["config"]["llc"]
    notes = [
        f"**Data**: {d['name']} — {d['meta'].get('source', '')}; {d['n_train']} train / {d['n_test']} test, "
        f"{d['n_features']} features (the paper: MNIST).",
        f"**Model**: MLP {'-'.join(map(str, r['model']['widths']))} ReLU ({r['model']['n_params']} parameters), "
        f"PyTorch default init, the same seeds in every cell.",
        f"**Grid** (ours; App H gives none): SGD with momentum {g['momenta']} × lr {g['lrs_sgd']}"
        + (f"; Adam (β = 0.9, 0.999, ε = 1e-8) × lr {g['lrs_adam']}" if g["adam"] else "") + f"; × batch size "
        f"{g['batch_sizes']}; " + (f"{g['steps']} steps per cell" if g["steps"] else f"{g['epochs']} epochs per cell")
        + "; constant learning rate, no weight decay.",
        f"**LLC** along training every {cfg['llc_schedule']['every']} steps: ε = {fmt_num(llc['step_size'])}, γ = "
        f"{fmt_num(llc['localization'])}, {llc['num_chains']} chain(s) × {llc['num_draws']} draws, SGLD batch "
        f"{llc['batch_size']}, nβ = {fmt_num(r['model']['nbeta'])} ({llc['nbeta']}); final λ = mean of the last "
        f"{cfg['llc_schedule']['last']} estimates (se = std/√count, optimistic); the same LLC estimator for Adam runs "
        f"(the paper notes Adam changes the metric, App H.0.1).",
        f"**d_s** = 2λα from the whole-range eq-17 fit (`{cfg['fit']['method']}`, {cfg['fit']['n_boot']} bootstrap "
        f"resamples), delta-method intervals. Correlations: OLS with HC3, Spearman with {cfg['analysis']['n_boot']} "
        f"bootstrap resamples over runs, Holm within each optimizer family's table. H6: standardized partial slopes "
        f"and a paired bootstrap of their absolute difference (docs/methods.md#h6-d_s-tracks-the-learning-rate-more-than-λ).",
        f"**H1–H3, H7 per optimizer family**: as in the spectral_dimension study (per-run one-sided tests with Holm, "
        f"Wilcoxon across runs; H7: Spearman ρ(R_T, λ) and the held-out prediction from t ≤ "
        f"{fmt_num(cfg['h7']['split'])}·T); every verdict by the one rule (docs/methods.md#verdicts).",
    ]
    timings = {**r["timing"], "report": {"wall_s": r["timing_report_s"], "device": r["device"], "cached": False}}
    return methods_section(cfg, seeds=f"{g['seed_offset']}..{g['seed_offset'] + g['seeds'] - 1} in every cell",
                           device=f"{r['device']} (torch CPU threads {r['torch_threads']})",
                           executor=executor_sentence(r.get("executor")), versions=r["versions"], timings=timings,
                           notes=notes)


FIGURES = [("fig7_9_grid.png", "Mean d_s and λ per cell (Figs 7, 9)."),
           ("fig10_13_correlations.png", "d_s and λ against learning rate and batch size; test accuracy against d_s "
            "and λ (Figs 10–13)."),
           ("fig8_16_17.png", "Final displacement against λ (Figs 16–17) and the momentum ablation (Fig 8).")]


def render(r: dict) -> str:
    cfg, d = r["config"], r["data"]
    data = "local files" if d["name"] != "mnist1d" else "MNIST-1D generated offline, not MNIST"
    L = [header("Ablations: optimizer × learning rate × batch size (paper App H, Figs 7–13, 16–17)",
                preset=preset_label(r) + f"; data **{d['name']}** ({data})",
                seeds=f"{len(r['cells'])} cells × {cfg['grid']['seeds']} seeds = {r['n_runs']} runs "
                      f"({r['n_fitted']} analysed)", device=r["device"], config_hash=r["config_hash"],
                generated=r["generated"], wall_total_s=r["wall_total_s"])]
    if r["presets"] != ["paper"]:
        L.append("*This is not the paper's configuration*; `--preset paper` runs the App G.1 settings over the stated "
                 "grid (documented for a GPU).\n")
    L += [divergence_sentence(r.get("divergence")) + "\n", "## Verdicts\n", verdict_table(r["hypotheses"]), "",
          verdict_notes(r["hypotheses"]) + "\n",
          "Per-run view (each run's own one-sided test, Holm across runs):\n", per_run_table(r["hypotheses"]), "",
          EQUIVALENCE_NOTE + "\n", *_h6(r), "## Results beside the paper\n", *_app_h(r), "## Figures\n"]
    L += [f"![{cap}](figures/{f})\n\n*{cap}*\n" for f, cap in FIGURES]
    rows = [[i, c["label"], fmt_num(c["lr"]), c["batch_size"], fmt_num(w)]
            for i, (c, w) in enumerate(zip(r["cells"], r["cell_wall_s"]))]
    L += [_methods(r), "## Diagnostics\n", md_table(["cell", "optimizer", "lr", "batch", "wall s"], rows),
          *[f"- note: {n}" for n in r["notes"]], ""]
    return "\n".join(L) + "\n"


def write_report(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build, figures, render)
