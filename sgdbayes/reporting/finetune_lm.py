"""The language-model variant's part of the finetune report (App G.3, Table 1's language rows, Table 4;
docs/finetune.md): what ``build`` stores, its figure, its tables and its Methods notes. Numbers are the
stored stage outputs; nothing is computed here."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import fmt_num
from .toolkit import md_table, save_figure, summary_cell

__all__ = ["build_lm", "lm_figure", "lm_section", "lm_methods"]


def build_lm(ctx) -> dict:
    pre, ct, an = ctx["lm_pretrain"], ctx["lm_continue"], ctx["lm_analysis"]
    keep = ("source", "n_params", "n_train", "vocab", "positions", "stop_epoch", "loss_at_stop", "loss_floor",
            "steps_per_epoch")
    return {"summary": an["summary"], "paper_table1_lm": an["paper_table1_lm"], "paper_table4": an["paper_table4"],
            "runs": an["runs"].drop(columns=["notes"], errors="ignore").to_dict("records"),
            "model": {k: pre[k] for k in keep if k in pre}, "nbeta": ct["nbeta"],
            "final_train_loss": [float(v) for v in ct["final_train_loss"]], "final_loss": an["final_loss"]}


def lm_figure(ctx, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    ct = ctx["lm_continue"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    t = np.asarray(ct["steps"])
    for k in range(min(8, len(ct["seeds"]))):
        axes[0].loglog(t, np.asarray(ct["R"][k]), lw=1)
        axes[1].plot(np.asarray(ct["llc_steps"]), np.asarray(ct["llc"][k]), marker="o", ms=3, lw=1)
    axes[0].set(xlabel="step of the continued phase", ylabel="‖w_t − w_0‖ (all parameters)",
                title="LM: displacement from the converged start (eq 17)")
    axes[1].set(xlabel="step", ylabel="λ̂", title="LM: LLC every 100 steps")
    return save_figure(fig, path, dpi=dpi)


def _beside_paper(lm: dict, optimizer: str) -> str:
    s = lm["summary"]
    rows = [[f"this study ({optimizer.upper()}; median over seeds [95 % CI])", summary_cell(s["llc"]),
             summary_cell(s["d_s"]), summary_cell(s["alpha"]), summary_cell(s["r2"])]]
    rows += [[f"paper Table 1 (SGD): {p['model']}", fmt_num(p["llc"]), fmt_num(p["d_s"]), fmt_num(p["alpha"]),
              fmt_num(p["r2"])] for p in lm["paper_table1_lm"]]
    rows += [[f"paper Table 4 (Adam): {p['model']}", fmt_num(p["llc"]), fmt_num(p["d_s"]), fmt_num(p["alpha"]),
              fmt_num(p["r2"])] for p in lm["paper_table4"]]
    return md_table(["", "λ", "d_s = 2λα", "α", "r²"], rows)


def lm_section(r: dict) -> list[str]:
    lm, cfg = r["lm"], r["config"]
    m = lm["model"]
    start = (f"Adam stopped at epoch {m['stop_epoch']} with training loss {fmt_num(m['loss_at_stop'])} (the data's "
             f"entropy floor is {fmt_num(m['loss_floor'])})" if "stop_epoch" in m else f"read from {m['source']}")
    return ["## Language model (App G.3): results beside the paper (Table 1's language rows, Table 4)\n",
            _beside_paper(lm, cfg["lm"]["optimizer"]), "",
            f"Starting point: {start}. After {cfg['lm_sgd']['steps']} steps the training loss is "
            f"{fmt_num(lm['final_loss']['train'].median)} (median over seeds), the test loss "
            f"{fmt_num(lm['final_loss']['test'].median)}. r² of the fit: {summary_cell(lm['summary']['r2'])}.",
            "", "![LM displacement and LLC](figures/fig20_lm_displacement.png)\n"]


def lm_methods(r: dict) -> list[str]:
    cfg, lm = r["config"], r["lm"]
    c, a, s, ls = cfg["lm"], cfg["lm_pretrain"], cfg["lm_sgd"], cfg["llc_schedule"]
    m = lm["model"]
    if c["weights"]:
        model = (f"**LM**: {m['source']} ({m['n_params']} parameters, all trained), continued on the token file "
                 f"{c['tokens']} ({m['n_train']} training sequences of {m['positions']} next-token targets; "
                 f"{fmt_num(100 * c['test_fraction'])} % held out). Dropout is off (the batched path draws per-seed "
                 "masks for nn.Dropout modules only).")
    else:
        model = (f"**LM**: a TinyTransformer (d_model {c['d_model']}, {c['n_heads']} heads, {c['n_layers']} layer(s), "
                 f"d_ff {c['d_ff']}; {m['n_params']} parameters, all trained) on generated sequences "
                 f"s_(t+1) = (s_t + s_(t−1)) mod {c['vocab']} of {c['length']} tokens ({c['n']} training, "
                 f"{c['n_test']} test). Pretrained here with Adam (lr {fmt_num(a['lr'])}, batch {a['batch_size']}, "
                 f"at most {a['max_epochs']} epochs) and stopped by the image variant's rule (the full training loss "
                 f"improves by less than {fmt_num(a['tol'])} over {a['patience']} epochs); the continued phase "
                 "starts from the weights at that epoch. Differences from the paper: a tiny model on generated "
                 "data instead of TinyStories-1M/33M and TinyLlama-15M on TinyStories.")
    return [model,
            f"**Continued phase** (App G.3): {s['seeds']} continuations from the one converged point (the seeds "
            f"choose the minibatch orders; the paper: one run per model), {c['optimizer'].upper()} lr "
            f"{fmt_num(s['lr'])}, batch {s['batch_size']}, {s['steps']} steps (paper: 1000), one batched engine "
            f"run; λ̂ every {ls['every']} steps with Table 3's estimator on minibatches of "
            f"{cfg['lm_llc']['batch_size']} sequences (nβ = {fmt_num(lm['nbeta'])}), λ = mean of the last "
            f"{ls['last']}; eq 17 on the whole continued phase (R from its start); d_s = 2 λ α. Tests H1-lm and "
            "H2-lm as H1-finetune and H2. Table 1's language rows are the paper's SGD runs of this protocol, "
            "Table 4 its Adam runs (`lm.optimizer = \"adam\"`)."]
