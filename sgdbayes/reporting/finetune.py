"""Report of the finetune study (paper §4.1 Table 1, App G.2-G.3; docs/finetune.md).

``build`` gathers the stored stage outputs into results.json (the paper's Table 1 and 4 rows read in
the analysis stages), the figures plot stored numbers only, and ``render`` writes report.md. The
image variant's parts are here, the language model's in :mod:`sgdbayes.reporting.finetune_lm`; a
variant that did not run (``finetune.tasks``) is absent from results.json (``image`` / ``lm`` None).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .finetune_lm import build_lm, lm_figure, lm_methods, lm_section
from .format import fmt_estimate, fmt_num
from .toolkit import (apply_style, header, md_table, methods_section, preset_label, save_figure, study_header,
                      summary_cell, verdict_notes, verdict_table, write_study_report)

__all__ = ["write_report", "build", "render"]


def _ran(ctx, stage: str) -> bool:
    return "skipped" not in ctx[stage]


def build(ctx) -> dict:
    image = _build_image(ctx) if _ran(ctx, "analysis") else None
    lm = build_lm(ctx) if _ran(ctx, "lm_analysis") else None
    tests = (ctx["analysis"]["hypotheses"] if image else []) + (ctx["lm_analysis"]["hypotheses"] if lm else [])
    return {**study_header(ctx), "hypotheses": tests, "image": image, "lm": lm}


def _build_image(ctx) -> dict:
    pre, ft, an = ctx["pretrain"], ctx["finetune"], ctx["analysis"]
    return {"summary": an["summary"], "transition": an["transition"],
            "transition_coverage": an["transition_coverage"], "paper_table1": an["paper_table1"],
            "runs": an["runs"].drop(columns=["notes"], errors="ignore").to_dict("records"),
            "backbone": {k: pre[k] for k in ("source", "backbone_params", "n_classes") if k in pre}
            | {k: pre[k] for k in ("pretrain_test_acc", "pretrain_train_acc") if k in pre},
            "stop_epoch": [int(e) for e in ft["stop_epoch"]], "head_params": ft["head_params"],
            "n_train": ft["n_train"], "final_test_acc": [float(a) for a in ft["final_test_acc"]],
            "adam_final_test_acc": [float(a) for a in ft["adam_final_test_acc"]]}


def _fig(ctx, r: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ft = ctx["finetune"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, tr in enumerate(r["transition"][:6]):
        stop = tr["switch_step"]
        a_t, a_R = np.asarray(ft["adam_steps"]), np.asarray(ft["adam_R"][k])
        m = a_t <= stop
        t = np.concatenate([a_t[m], stop + np.asarray(ft["R_total_steps"])])
        R = np.concatenate([a_R[m], np.asarray(ft["R_total"][k])])
        line, = axes[0].loglog(t, R, lw=1)
        axes[0].axvline(stop, color=line.get_color(), ls=":", lw=0.8)
        if np.isfinite(tr["t_c"]):
            axes[0].axvspan(tr["t_c_ci_low"], tr["t_c_ci_high"], color=line.get_color(), alpha=0.12)
        axes[1].loglog(np.asarray(ft["sgd_steps"]), np.asarray(ft["sgd_R"][k]), lw=1)
    axes[0].set(xlabel="step (Adam, then SGD)", ylabel="‖w_t − w_0‖ (head)",
                title="whole run; dotted = switch, band = crossover interval")
    axes[1].set(xlabel="SGD step", ylabel="R(t) from the switch", title="SGD phase (fit of eq 17)")
    return save_figure(fig, path, dpi=ctx.config.report.dpi)


def figures(ctx, r: dict, figdir: Path) -> list[Path]:
    apply_style()
    out = [_fig(ctx, r["image"], Path(figdir) / "fig19_20_displacement.png")] if r["image"] else []
    if r["lm"]:
        out.append(lm_figure(ctx, Path(figdir) / "fig20_lm_displacement.png", ctx.config.report.dpi))
    return out


def _beside_paper(r: dict) -> str:
    s = r["summary"]
    rows = [["this study (median over heads [95 % CI])", summary_cell(s["llc"]), summary_cell(s["d_s"]),
             summary_cell(s["alpha"]), summary_cell(s["r2"])]]
    rows += [[f"paper Table 1: {p['model']}", fmt_num(p["llc"]), fmt_num(p["d_s"]), fmt_num(p["alpha"]),
              ("≈ 1" if p["r2_approx"] else fmt_num(p["r2"]))] for p in r["paper_table1"]]
    return md_table(["", "λ", "d_s = 2λα", "α", "r²"], rows)


def _transition_table(r: dict) -> str:
    return md_table(["seed", "Adam stopped (epoch)", "switch step", "crossover t_c [95 % CI]", "interval covers switch"],
                    [[t["seed"], e, t["switch_step"], fmt_estimate(t["t_c"], t["t_c_ci_low"], t["t_c_ci_high"]),
                      "yes" if t["covers"] else ("no" if not t["error"] else f"— ({t['error']})")]
                     for t, e in zip(r["transition"], r["stop_epoch"])])


def _image_methods(r: dict) -> list[str]:
    cfg, im = r["config"], r["image"]
    b, a, s, ls = cfg["backbone"], cfg["adam"], cfg["sgd"], cfg["llc_schedule"]
    bb = im["backbone"]
    return [
        "**Backbone**: " + (f"ConvNet channels {b['channels']} (Xavier init, no bias), " if b["arch"] == "convnet"
                             and not bb["source"].startswith("Hugging") else "")
        + f"{bb['source']}"
        + (f" with Adam lr {fmt_num(b['lr'])}, batch {b['batch_size']}, {b['pretrain_steps']} steps on digits classes "
           f"0–{b['split_class'] - 1} (test accuracy {fmt_num(bb.get('pretrain_test_acc'))})" if not b["weights"] else "")
        + f"; frozen ({bb['backbone_params']} parameters); its global-pooled features of digits classes "
        f"{b['split_class']}–9 ({im['n_train']} training images) are the fine-tuning inputs"
        + ("" if b["arch"] == "convnet" and not b["weights"] else
           f" (gray images repeated to 3 channels, resized to {b['image_size'] or 'the native size'}, ImageNet mean/std)")
        + ". Differences from the paper: 8×8 digits instead of Tiny ImageNet"
        + (", a small CNN instead of ImageNet ResNet18/34 and VGG." if not b["weights"] else "."),
        f"**Head**: a new linear layer ({im['head_params']} parameters), {s['seeds']} seeds (inits and minibatch orders) "
        "as one batched computation (the paper: one run per model).",
        f"**Adam phase** (App G.2): lr {fmt_num(a['lr'])}, L2 weight decay {fmt_num(a['weight_decay'])}, batch "
        f"{a['batch_size']}, at most {a['max_epochs']} epochs; stop after the first epoch e > {a['patience']} whose full "
        f"training loss is less than {fmt_num(a['tol'])} below that of epoch e − {a['patience']}.",
        f"**SGD phase** (App G.2): from each head's stopping weights, SGD lr {fmt_num(s['lr'])}, no weight decay, batch "
        f"{s['batch_size']}, {s['steps']} steps (paper: 2000); λ̂ every {ls['every']} steps (Table 3 estimator), "
        f"λ = mean of the last {ls['last']}.",
        f"**Fit**: eq 17 on the SGD phase only (R from the switch), method `{cfg['fit']['method']}`; "
        "d_s = 2 λ α with its delta-method interval (docs/intervals.md).",
        "**Adam → SGD transition**: on each head's whole curve (Adam to its stop, then SGD; R from the head's "
        "initialization), the two-segment hinge crossover of log R on log t with its interval (App B.3); the "
        "table says whether the interval covers the actual switch step.",
    ]


def _methods(r: dict) -> str:
    cfg = r["config"]
    notes = (_image_methods(r) if r["image"] else []) + (lm_methods(r) if r["lm"] else []) + [
        f"**Variants run** (`finetune.tasks`): {', '.join(cfg['finetune']['tasks'])}.",
        "**Sharding**: none declared (one small ensemble per variant in one process)."]
    seeds = [f"{n} 0..{cfg[sec]['seeds'] - 1}" for n, sec, key in (("heads", "sgd", "image"), ("LM continuations",
                                                                                                "lm_sgd", "lm")) if r[key]]
    timings = {**r["timing"], "report": {"wall_s": r["timing_report_s"], "device": r["device"], "cached": False}}
    return methods_section(cfg, seeds="; ".join(seeds), device=r["device"], executor="local (this process)",
                           versions=r["versions"], timings=timings, notes=notes)


def _image_section(r: dict) -> list[str]:
    im = r["image"]
    s, cov = im["summary"], im["transition_coverage"]
    L = [f"**Adam → SGD transition**: the hinge-crossover interval covers the actual switch step in "
         f"{fmt_num(100 * cov)} % of heads (table below). r² of the SGD-phase fit: {summary_cell(s['r2'])}.", "",
         "## Image (App G.2): results beside the paper (Table 1)\n", _beside_paper(im), "",
         "## Adam → SGD transition\n", _transition_table(im), "",
         "![displacement](figures/fig19_20_displacement.png)\n"]
    if s["fit_errors"]:
        L.append("Runs not fitted: " + "; ".join(s["fit_errors"]) + "\n")
    return L


def render(r: dict) -> str:
    cfg = r["config"]
    seeds = ", ".join(f"{cfg[sec]['seeds']} {what}" for what, sec, key in
                      (("heads", "sgd", "image"), ("LM continuations", "lm_sgd", "lm")) if r[key])
    L = [header("Fine-tuning (paper §4.1 Table 1, App G.2–G.3, Table 4)", preset=preset_label(r), seeds=seeds,
                device=r["device"], config_hash=r["config_hash"], generated=r["generated"],
                wall_total_s=r["wall_total_s"]),
         "## Verdicts\n", verdict_table(r["hypotheses"]), "", verdict_notes(r["hypotheses"]), ""]
    L += _image_section(r) if r["image"] else []
    L += lm_section(r) if r["lm"] else []
    if r["lm"] and r["lm"]["summary"]["fit_errors"]:
        L.append("LM runs not fitted: " + "; ".join(r["lm"]["summary"]["fit_errors"]) + "\n")
    L.append(_methods(r))
    return "\n".join(L) + "\n"


def write_report(ctx) -> Path:
    return write_study_report(ctx, build, figures, render)
