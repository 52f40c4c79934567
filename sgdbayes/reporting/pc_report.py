"""Report of the posterior_concentration study.

``write_report(ctx)``:

1. ``build_results(ctx)`` collects every number the report shows from the cached
   stage outputs into one JSON-able dict;
2. ``results.json`` is written atomically beside the report;
3. ``render_markdown(results)`` renders ``report.md`` from that dict only (so every
   number in the text is a number in ``results.json``), and the figures are drawn
   into ``figures/``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runner.cache import to_jsonable
from . import figures as F
from .markdown import md_table
from .study_report import divergence_sentence, package_versions, preset_label, write_skipped_report, write_study_report

__all__ = ["write_report", "build_results", "render_markdown", "fmt", "PAPER_TABLE2_FALLBACK"]

# Paper Table 2 (§4.2), used only when sgdbayes.paper cannot provide it.
PAPER_TABLE2_FALLBACK = {"kl": 0.009, "w1": 0.002, "js": 0.003}
METRIC_LABEL = {"kl": "KL plug-in", "kl_smoothed": "KL smoothed", "js": "JS", "w1": "W1"}


# --------------------------------------------------------------------------- formatting

def fmt(x: Any, digits: int = 4) -> str:
    """Numbers as the report shows them: 4 significant digits, '—' for missing, ∞ for inf."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_ci(ci) -> str:
    if ci is None or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return "—"
    if any(isinstance(c, float) and math.isnan(c) for c in ci):
        return "—"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    return md_table([[str(c) for c in r] for r in rows], headers=headers)


def _versions() -> dict:
    return package_versions(["sgdbayes", "torch", "numpy", "scipy", "scikit-learn", "hdbscan", "pot", "devinterp",
                "statsmodels", "pandas", "matplotlib", "seaborn"])


def _paper_table2() -> tuple[dict, str]:
    """Paper Table 2 as {metric: value} (kl, w1, js) and where it came from."""
    key = {"kl_bayes_tempered_sgd": "kl", "wasserstein_bayes_tempered_sgd": "w1", "js_bayes_tempered_sgd": "js"}
    try:
        from ..paper import load_table

        t = load_table(2)
        vals = {key[m]: float(v) for m, v in zip(t["metric"], t["value"]) if m in key}
        if set(vals) == set(key.values()):
            return vals, "sgdbayes.paper.load_table(2)"
    except Exception:  # the published numbers are also in the paper text
        pass
    return dict(PAPER_TABLE2_FALLBACK), "the paper's text (sgdbayes.paper.load_table(2) unavailable)"


def _stats(v: np.ndarray) -> dict:
    v = np.asarray(v, float)
    f = v[np.isfinite(v)]
    if f.size == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "q05": None, "q95": None, "min": None, "max": None}
    return {"n": int(f.size), "mean": float(f.mean()), "sd": float(f.std(ddof=1)) if f.size > 1 else None,
            "median": float(np.median(f)), "q05": float(np.quantile(f, 0.05)), "q95": float(np.quantile(f, 0.95)),
            "min": float(f.min()), "max": float(f.max())}


# --------------------------------------------------------------------------- results

def build_results(ctx) -> dict:
    tr, ll, cu, sg, an = (ctx[s] for s in ("train", "llc", "cluster", "sgld", "analysis"))
    cfg = ctx.config_dict
    used = cu["used_index"]
    K_all = int(tr["seeds"].size)
    llc_all = np.asarray(ll["llc"], float)
    llc_u = llc_all[used]
    paper_t2, paper_src = _paper_table2()
    table2 = []
    for row in an["table2"]:
        for m in ("kl", "kl_smoothed", "js", "w1"):
            if m not in row["metrics"]:
                continue
            mm = row["metrics"][m]
            paper = paper_t2.get(m) if (row["reference"] == "SGLD" and row["target"] == "tempered SGD") else None
            table2.append({"reference": row["reference"], "target": row["target"], "metric": m,
                           "label": METRIC_LABEL[m], "estimate": mm["estimate"], "ci": mm["ci"],
                           "upper": mm["upper"], "equivalent": mm["equivalent"], "n_boot_inf": mm["n_boot_inf"],
                           "paper": paper, "resampling": row["resampling"]})
    t2_notes = sorted({n for row in an["table2"] for n in row.get("notes", [])})
    timing = {s: {"wall_s": float(info.get("wall_s", float("nan"))), "device": info.get("device"),
                  "cached": bool(info.get("cached", False)), "torch_threads": info.get("torch_threads")}
              for s, info in ctx.stage_info.items() if not s.startswith("_")}
    C, S = np.asarray(sg["loss_traces"]).shape
    res = {
        "study": ctx.study.name, "title": ctx.study.title, "presets": ctx.presets, "sets": ctx.sets,
        "config_hash": ctx.config_hash, "config": cfg, "device": ctx.device,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": _versions(), "timing": timing,
        "ensemble": {
            "n_runs": K_all, "n_diverged": int(np.sum(tr["diverged"])), "n_pass": int(np.sum(tr["passed"])),
            "n_used": int(used.size), "filter_status": tr["filter_status"],
            "window": cfg["convergence"]["window"], "rel_tol": cfg["convergence"]["rel_tol"],
            "rel_drop": _stats(tr["rel_drop"]), "train_acc": _stats(tr["final_train_acc"]),
            "test_acc": _stats(tr["final_test_acc"]), "train_loss": _stats(tr["final_train_loss"]),
            "train_acc_used": _stats(tr["final_train_acc"][used]), "n_params": int(tr["n_params"]),
        },
        "llc": {
            "nbeta": float(ll["nbeta"]), "nbeta_rule": ll["nbeta_rule"], "all": _stats(llc_all),
            "used": _stats(llc_u), "n_negative": int(np.sum(llc_all < 0)), "n_negative_used": int(np.sum(llc_u < 0)),
            "n_trend_flag": int(np.sum(ll["trend_flag"])), "trend_z_threshold": float(ll["trend_z_threshold"]),
            "trend_z": _stats(ll["trend_z"]), "trend_rel": _stats(ll["trend_rel"]),
            "n_all_diverged": int(np.sum(ll["all_diverged"])), "chain_std": _stats(ll["llc_std"]),
            "relaxation_steps": 2.0 / (cfg["llc"]["step_size"] * cfg["llc"]["localization"]),
            "settings": ll["settings"],
        },
        "structure": {**cu["structure"], "partition_kind": cu["partition_kind"],
                      "partition_label": cu["partition_label"], "n_categories": len(cu["categories"])},
        "clusters": an["clusters"],
        "distributions": an["distributions"],
        "xi": {**an["xi"], "grid_min": float(an["xi_grid"][0]), "grid_max": float(an["xi_grid"][-1]),
               "kl_range": [float(np.nanmin(an["xi_kl"])), float(np.nanmax(an["xi_kl"]))],
               "grid_points": int(an["xi_grid"].size)},
        "tempering": an["tempering"],
        "free_energy": an["free_energy"],
        "sgld": {
            "n_chains": int(C), "samples_per_chain": int(S), "selection": sg["selection"],
            "start_seeds": sg["start_seeds"], "start_clusters": [
                cu["category_names"][cu["categories"].index(int(c))] for c in sg["start_labels"]],
            "start_loss": sg["start_loss"], "start_llc": sg["start_llc"],
            "rhat_chain": sg["rhat_chain"], "ess_chain": sg["ess_chain"], "rhat_all": sg["rhat_all"],
            "ess_all": sg["ess_all"], "n_diverged": int(np.sum(sg["diverged"])),
            "left_seed_cluster": sg["left_seed_cluster"], **an["sgld_mixing"], "nbeta": sg["nbeta"],
            "mean_loss_chain": np.nanmean(sg["loss_traces"], axis=1),
            "loss_first_decile": float(np.nanmean(np.asarray(sg["loss_traces"])[:, : max(1, S // 10)])),
            "loss_last_decile": float(np.nanmean(np.asarray(sg["loss_traces"])[:, -max(1, S // 10):])),
        },
        "table2": table2, "table2_notes": t2_notes, "paper_table2": paper_t2, "paper_table2_source": paper_src,
        "gtest": an["gtest"], "gtest_ess": an["gtest_ess"], "h4": an["h4"],
        "hypotheses": an["hypotheses"], "notes": an["notes"], "divergence": tr["divergence"],
        "alpha": {"late": _stats(an["alpha"]), "whole": _stats(an["alpha_whole"]),
                  "window": cfg["analysis"]["alpha_window"]},
    }
    return to_jsonable(res)


# --------------------------------------------------------------------------- markdown

def _summary_lines(r: dict) -> list[str]:
    lines = []
    h4 = next(x for x in r["hypotheses"] if x["id"] == "H4")
    h5s = next(x for x in r["hypotheses"] if x["id"] == "H5" and "SGLD" in x["claim"])
    h5f = next(x for x in r["hypotheses"] if x["id"] == "H5" and "free energy" in x["claim"])
    st = r["structure"]
    ens = r["ensemble"]
    t2 = {(t["reference"], t["target"], t["metric"]): t for t in r["table2"]}
    kl = t2.get(("SGLD", "tempered SGD", "kl"))
    if not h5s["verdict"].startswith("supported"):
        lines.append("- **Bottom line: the paper's claim that tempered SGD matches the SGLD posterior (Table 2: KL "
                     f"{fmt(r['paper_table2']['kl'])}, JS {fmt(r['paper_table2']['js'])}) is not reproduced on our "
                     "data**" + (f": KL(SGLD ‖ tempered SGD) = {fmt(kl['estimate'])} {fmt_ci(kl['ci'])}, JS = "
                                 f"{fmt(h5s['value'])} {fmt_ci(h5s['ci'])}." if kl else "."))
    lines.append(f"- **Ensemble**: {ens['n_runs']} SGD runs; {ens['n_pass']} pass the stated convergence filter "
                 f"(relative loss drop over the last {fmt(100 * ens['window'])} % of steps < {fmt(ens['rel_tol'])}); "
                 f"filter {ens['filter_status']}. Mean train accuracy {fmt(ens['train_acc']['mean'])}.")
    if st["separated_basins"]:
        lines.append(f"- **Cluster structure**: HDBSCAN found {st['hdbscan_n_clusters']} density clusters "
                     f"(noise fraction {fmt(st['hdbscan_noise_fraction'])}, validity index {fmt(st['validity_index'])}).")
    else:
        lines.append(f"- **Cluster structure**: HDBSCAN found {st['hdbscan_n_clusters']} clusters (noise fraction "
                     f"{fmt(st['hdbscan_noise_fraction'])}); GMM BIC prefers k = {st['gmm_best_k']}; best k-means "
                     f"silhouette {fmt(st['silhouette_best'])}. The clusters below are a **{st['partition_label']}** "
                     f"(Gaussian mixture, k = {st['n_categories']}), not basins; every cluster-level result "
                     f"carries that label.")
    lines.append(f"- **H4** ({h4['claim']}): {h4['statistic']} = {fmt(h4['value'])}, "
                 f"interval {fmt_ci(h4['ci'])} → {h4['verdict']}.")
    lines.append(f"- **H5 vs SGLD**: {h5s['statistic']} = {fmt(h5s['value'])} {fmt_ci(h5s['ci'])} → {h5s['verdict']}.")
    lines.append(f"- **H5 vs free energy**: {h5f['statistic']} = {fmt(h5f['value'])} {fmt_ci(h5f['ci'])} → "
                 f"{h5f['verdict']}.")
    for ref in ("SGLD", "free energy"):
        raw = {t["metric"]: t for t in r["table2"] if t["reference"] == ref and t["target"] == "raw SGD"}
        if "js" in raw:
            ok = [METRIC_LABEL[m] for m in ("kl_smoothed", "js", "w1") if m in raw and raw[m]["equivalent"]]
            lines.append(f"- **{ref} vs raw (untempered) SGD**: JS = {fmt(raw['js']['estimate'])} "
                         f"{fmt_ci(raw['js']['ci'])}; metrics whose upper bound is below the margin: "
                         f"{', '.join(ok) if ok else 'none'}.")
    tp = r["tempering"]
    if tp["collapsed"]:
        lines.append(f"- **Tempering collapses**: with m = {fmt(tp['m'])} and ξ* = {fmt(tp['xi_star'])}, "
                     f"P_temp puts all but a negligible mass on one cluster (effective number of clusters "
                     f"{fmt(tp['n_effective'])}); the formula was not changed.")
    sg = r["sgld"]
    if sg["restates_seeding"]:
        lines.append(f"- **SGLD did not mix between clusters**: none of the {sg['n_chains']} chains x "
                     f"{sg['samples_per_chain']} samples left its seed's cluster, so the SGLD cluster masses only "
                     f"restate how the chains were seeded.")
    else:
        lines.append(f"- **SGLD**: {sg['samples_left_seed_cluster']} samples in {sg['chains_that_moved']} of "
                     f"{sg['n_chains']} chains left their seed's cluster (split-R̂ of the loss {fmt(sg['rhat_all'])}).")
    if sg["rhat_all"] is not None and float(sg["rhat_all"]) > 1.01:
        lines.append(f"- **SGLD chains are not stationary**: pooled split-R̂ of the loss {fmt(sg['rhat_all'])} "
                     f"(> 1.01), pooled ESS {fmt(sg['ess_all'])}; the mean training loss moves from "
                     f"{fmt(sg['loss_first_decile'])} (first 10 % of samples) to {fmt(sg['loss_last_decile'])} (last "
                     f"10 %). The SGLD masses are therefore not draws from an equilibrated posterior.")
    return lines


def render_markdown(r: dict) -> str:
    cfg = r["config"]
    L: list[str] = []
    a = L.append
    a("# Posterior concentration (paper §4.2, App G.4, Figs 3–4, Table 2)\n")
    a(preset_label(r)
      + f"; {cfg['train']['seeds']} seeds; device {r['device']}; config hash `{r['config_hash']}`; "
      f"generated {r['generated']}. Every number below is read from `results.json` beside this file.\n")
    a(divergence_sentence(r.get("divergence")) + "\n")
    a("## Verdicts\n")
    rows = [[x["id"], x["claim"], x["statistic"], fmt(x["value"]), fmt_ci(x["ci"]),
             fmt(x["pvalue"]) + (f" ({x['p_label']})" if x.get("pvalue") is not None else ""), x["verdict"]]
            for x in r["hypotheses"]]
    a(_table(["hypothesis", "claim", "statistic", "estimate", f"{cfg['analysis']['level']:.0%} interval",
              "p-value", "verdict"], rows))
    a("")
    a("**Summary.**\n")
    L.extend(_summary_lines(r))
    a("")

    # ---------------------------------------------------------------- Table 2
    a("## Results beside the paper\n")
    a("### Table 2: divergences between each Bayesian reference and SGD\n")
    a(f"KL(reference ‖ SGD side), JS divergence and W1 in nats / embedding units; intervals are "
      f"{cfg['analysis']['level']:.0%} percentile bootstrap intervals over {cfg['analysis']['n_boot']} resamples "
      f"(resampling units in the last column); ‘upper’ is the one-sided {cfg['analysis']['level']:.0%} bound; "
      f"‘≈’ means upper < margin {fmt(cfg['analysis']['margin'])}. Paper values from {r['paper_table2_source']} "
      f"(the paper gives no intervals and does not say which KL estimator it used).\n")
    if not r["structure"]["separated_basins"]:
        a(f"*All rows: {r['structure']['partition_label']}.*\n")
    rows = [[t["reference"], t["target"], t["label"], fmt(t["estimate"]), fmt_ci(t["ci"]), fmt(t["upper"]),
             "yes" if t["equivalent"] else "no", fmt(t["paper"]), t["resampling"]] for t in r["table2"]]
    a(_table(["reference", "compared with", "metric", "estimate", "interval", "upper", "≈ (upper < margin)",
              "paper", "resampling"], rows))
    a("")
    if r["gtest"]:
        g = r["gtest"]
        a(f"G-test of homogeneity, SGD counts vs SGLD sample counts: G = {fmt(g['statistic'])}, df = {g['dof']}, "
          f"p = {fmt(g['pvalue'])} (treats SGLD samples as independent: anti-conservative).")
    if r["gtest_ess"]:
        g = r["gtest_ess"]
        a(f" With SGLD counts scaled to their effective sample size (factor {fmt(g['scale'])}): "
          f"G = {fmt(g['statistic'])}, p = {fmt(g['pvalue'])}.")
    a("")
    for n in r["table2_notes"]:
        a(f"- note: {n}")
    a("")

    # ---------------------------------------------------------------- clusters
    a("### Clusters (the numbers behind Fig 4b)\n")
    rows = [[c["name"], c["n"], fmt(c["P_sgd"]), fmt(c["L_c"]), fmt(c["acc_c"]), fmt(c["llc_c"]), fmt(c["llc_sd"]),
             c["n_llc_negative"], fmt(c["alpha_c"]), fmt(c["d_walk_c"]), fmt(c["m_D_xi_star"]), fmt(c["P_temp"]),
             fmt(c["P_sgld"]), fmt(c["P_F"])] for c in r["clusters"]]
    a(_table(["cluster", "n", "P_sgd", "L_c", "train acc", "mean λ̂_c", "sd λ̂", "# λ̂<0", "α_c", "d_walk,c",
              "m·D_ξ*(c)", "P_temp", "P_SGLD", "P_F"], rows))
    a("")
    h4 = r["h4"]
    a(f"Largest SGD cluster {h4['largest_cluster']}: median λ̂ {fmt(h4['llc_largest_median'])} vs "
      f"{fmt(h4['llc_rest_median'])} in the other clusters. Kruskal–Wallis across {h4['kruskal']['k']} clusters: "
      f"H = {fmt(h4['kruskal']['statistic'])}, p = {fmt(h4['kruskal']['pvalue'])}.\n")

    # ---------------------------------------------------------------- xi sweep
    x = r["xi"]
    a("### ξ sweep (Fig 3)\n")
    a(f"KL(P_sgd ‖ p_theory(ξ)) on {x['grid_points']} log-spaced ξ in [{fmt(x['grid_min'])}, {fmt(x['grid_max'])}], "
      f"γ = {fmt(x['lr'])} (the SGD learning rate). The paper chose ξ = 0.5.\n")
    a(_table(["quantity", "value"], [
        ["ξ* (in-sample argmin)", fmt(x["xi_star"])],
        ["KL at ξ* (in-sample; biased low)", fmt(x["kl_min"])],
        [f"ξ* bootstrap interval ({x['n_boot']} resamples of seeds)", fmt_ci(x["ci"])],
        ["split sample: ξ chosen on half A / KL on half B", f"{fmt(x['xi_A'])} / {fmt(x['kl_B_at_xi_A'])}"],
        ["split sample: ξ chosen on half B / KL on half A", f"{fmt(x['xi_B'])} / {fmt(x['kl_A_at_xi_B'])}"],
        ["mean out-of-sample KL", fmt(x["kl_split"])],
        ["ξ* at the grid boundary", "yes" if x["at_boundary"] else "no"],
        ["KL range over the grid (min, max)", fmt_ci(x["kl_range"])],
    ]))
    a("")
    for n in x["notes"]:
        a(f"- note: {n}")
    tp = r["tempering"]
    a(f"\nTempered SGD (Cor 3.2): P_temp(c) ∝ P_sgd(c)^(m·D_ξ*(c)) with m = {fmt(tp['m'])}; effective number of "
      f"clusters {fmt(tp['n_effective'])}; collapsed onto one cluster: {'yes' if tp['collapsed'] else 'no'}.")
    for n in tp["notes"] + r["free_energy"]["notes"]:
        a(f"- note: {n}")
    a("")

    # ---------------------------------------------------------------- figures
    a("## Figures\n")
    figs = [
        ("fig4a_llc_hist.png", "Fig 4a analogue: λ̂ of the SGD solutions, stacked by cluster."),
        ("fig4b_cluster_masses.png", "Fig 4b analogue: cluster masses under SGD, SGLD, the free energy and tempered SGD."),
        ("fig3_xi_sweep.png", "Fig 3 analogue: the ξ sweep, with the held-out curve and the bootstrap interval of ξ*."),
        ("loss_curves.png", "Training-loss curves and the convergence filter."),
        ("sgld_traces.png", "SGLD chains: loss traces and assigned cluster per sample."),
        ("clusters_input_plane.png", "Clusters on the moons input plane: mean P(y=1) and decision boundaries."),
        ("embedding.png", "SGD solutions (coloured by cluster) and SGLD samples (grey) in the first two PCs."),
    ]
    for f, cap in figs:
        a(f"![{cap}](figures/{f})\n\n*{cap}*\n")

    # ---------------------------------------------------------------- methods
    ens, lc, st, sg = r["ensemble"], r["llc"], r["structure"], r["sgld"]
    a("## Methods\n")
    a(f"- **Data**: `make_moons`, n = {cfg['data']['n']} training points, noise {fmt(cfg['data']['noise'])}, "
      f"data seed {cfg['data']['seed']} (test set: the next 512 points of the same draw).")
    a(f"- **Model / SGD**: MLP 2→{'→'.join(map(str, cfg['model']['hidden']))}→2, ReLU, {ens['n_params']} parameters, "
      f"PyTorch default init with seeds {cfg['train']['seed_offset']}..{cfg['train']['seed_offset'] + cfg['train']['seeds'] - 1}; "
      f"{'plain SGD' if not cfg['train']['momentum'] else 'SGD with momentum ' + fmt(cfg['train']['momentum'])} "
      f"lr {fmt(cfg['train']['lr'])}, batch {cfg['train']['batch_size']} (without replacement, per-seed "
      f"order), {cfg['train']['steps']} steps; all seeds trained as one batched computation.")
    a(f"- **Convergence filter** (the paper has none stated): OLS slope of the recorded training loss (mean "
      f"minibatch loss between record points, every {cfg['train']['record_every']} steps) over the last "
      f"{fmt(100 * ens['window'])} % of steps, relative drop = −slope·window/mean loss; pass if < {fmt(ens['rel_tol'])}. "
      f"{ens['n_pass']} of {ens['n_runs']} runs pass (median relative drop {fmt(ens['rel_drop']['median'])}); filter "
      f"{ens['filter_status']}; {ens['n_used']} runs used downstream.")
    a(f"- **LLC** (eq 25, batched localized SGLD matching devinterp 1.x): ε = {fmt(cfg['llc']['step_size'])}, "
      f"γ = {fmt(cfg['llc']['localization'])}, {cfg['llc']['num_chains']} chain(s), {cfg['llc']['num_draws']} draws, "
      f"{cfg['llc']['num_burnin_steps']} burn-in, {cfg['llc']['num_steps_bw_draws']} step(s) between draws, SGLD batch "
      f"{cfg['llc']['batch_size']}, **nβ = {fmt(lc['nbeta'])}** ({lc['nbeta_rule']}). Localization relaxation time "
      f"2/(εγ) = {fmt(lc['relaxation_steps'])} steps vs {cfg['llc']['num_draws']} draws. Trend diagnostic: z of the "
      f"second-half minus first-half mean draw loss (autocorrelation-aware); flagged when |z| > "
      f"{fmt(lc['trend_z_threshold'])}: {lc['n_trend_flag']} of {ens['n_runs']} runs. "
      f"**Negative λ̂: {lc['n_negative']} of {ens['n_runs']}** ({lc['n_negative_used']} among the runs used); they are "
      f"kept in every average, excluded only from seeding SGLD; the free energy uses cluster means as given.")
    a(f"- **λ̂ summary** (runs used): mean {fmt(lc['used']['mean'])}, sd {fmt(lc['used']['sd'])}, median "
      f"{fmt(lc['used']['median'])}, 5–95 % [{fmt(lc['used']['q05'])}, {fmt(lc['used']['q95'])}]"
      + (f"; mean chain std {fmt(lc['chain_std']['mean'])}" if lc['chain_std']['n'] else
         "; one chain per run, so no Monte-Carlo error per λ̂") + ".")
    a(f"- **Clustering**: probe = the {cfg['data']['n']} training inputs + a {cfg['cluster']['grid']}×"
      f"{cfg['cluster']['grid']} grid over their bounding box widened by {fmt(100 * cfg['cluster']['grid_margin'])} % "
      f"per side; feature = P(y=1) per probe point; standardized; PCA to {cfg['cluster']['pca_dim']} dims "
      f"({fmt(100 * st['explained_variance'])} % variance), fit on the SGD solutions; HDBSCAN min_cluster_size "
      f"{st['min_cluster_size']}; fallback: Gaussian mixture (full covariance) with BIC-chosen k ≥ 2 up to "
      f"{cfg['cluster']['gmm_max_k']}. Noise is a category of its own. Structure: HDBSCAN clusters "
      f"{st['hdbscan_n_clusters']}, validity index {fmt(st['validity_index'])}, GMM BIC best k {st['gmm_best_k']}, "
      f"silhouette best {fmt(st['silhouette_best'])} at k = {st['silhouette_best_k']}. Partition used: "
      f"{st['partition_kind']} ({st['n_categories']} categories) — {st['partition_label']}.")
    a(f"- **α per run**: slope of log R vs log t (AR(1)-error GLS, {r['alpha']['window']} window"
      + (" after the two-segment crossover" if r['alpha']['window'] == 'late' else "") + f"); median α "
      f"{fmt(r['alpha']['late']['median'])} (whole range {fmt(r['alpha']['whole']['median'])}). "
      f"d_walk = 1/α; per cluster log D_ξ = (2 − mean d_walk) log ξ.")
    a(f"- **ξ sweep / tempering**: γ = {fmt(cfg['tempering']['gamma'])}, m = {fmt(r['tempering']['m'])}; split-sample "
      f"seed {cfg['tempering']['split_seed']}; Table-2 bootstrap of P_temp keeps ξ* fixed (conditional on ξ*).")
    a(f"- **SGLD** (Welling & Teh, temperature {'1' if cfg['sgld']['temperature'] == 1 else fmt(cfg['sgld']['temperature'])}, nβ = n = {fmt(sg['nbeta'])}): ε = {fmt(cfg['sgld']['step_size'])}, "
      f"{cfg['sgld']['num_samples']} samples, {cfg['sgld']['num_burnin_steps']} burn-in steps, {cfg['sgld']['num_steps_bw_samples']} steps "
      f"between samples, batch {cfg['sgld']['batch_size']}; seeding `{cfg['sgld_starts']['rule']}`: {sg['selection']}. "
      f"Samples assigned to clusters by the fitted partition's predict (HDBSCAN approximate_predict or GMM).")
    a(f"- **Divergences**: natural log (nats). Smoothed KL: pseudocount {fmt(cfg['analysis']['pseudocount'])} on "
      f"counts (P_temp from smoothed SGD counts; P_F used as is). JS = divergence (not scipy's distance). W1 = "
      f"`ot.emd2` with ground cost = Euclidean distance between SGD cluster centroids in the PCA embedding. "
      f"Equivalence margin {fmt(cfg['analysis']['margin'])}; level {fmt(cfg['analysis']['level'])}; "
      f"{cfg['analysis']['n_boot']} bootstrap resamples (SGLD: whole chains; SGD: runs; free-energy rows: paired "
      f"resamples of runs); analysis seed {cfg['analysis']['seed']}.")
    a("- **H4 test**: Spearman ρ between cluster mass and mean cluster λ̂ over clusters, percentile bootstrap "
      "over runs; one-sided bootstrap p for H0 ρ ≥ 0; Kruskal–Wallis of λ̂ across clusters.")
    a(f"- **Device**: {r['device']}. **Versions**: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".")
    rows = [[s, fmt(t["wall_s"]), t["device"], fmt(t["torch_threads"]), "cache" if t["cached"] else "computed now"]
            for s, t in r["timing"].items()]
    a("\nWall time per stage (when it was computed; torch intra-op threads as set by `--threads`, default 1: "
      "seeds and SGLD chains already run in one worker thread per core):\n")
    a(_table(["stage", "wall s", "device", "torch threads", "this run"], rows))
    a("")

    # ---------------------------------------------------------------- diagnostics
    a("## Diagnostics\n")
    rows = [[i, sg["start_seeds"][i], sg["start_clusters"][i], fmt(sg["start_loss"][i]), fmt(sg["start_llc"][i]),
             fmt(sg["mean_loss_chain"][i]), fmt(sg["rhat_chain"][i]), fmt(sg["ess_chain"][i]),
             sg["left_seed_cluster"][i]] for i in range(sg["n_chains"])]
    a(f"SGLD chains (split-R̂ of one chain compares its two halves; pooled split-R̂ {fmt(sg['rhat_all'])}, pooled "
      f"ESS {fmt(sg['ess_all'])}; {sg['n_diverged']} diverged):\n")
    a(_table(["chain", "seed", "seed cluster", "seed loss", "seed λ̂", "mean loss", "split-R̂", "ESS",
              "samples outside seed cluster"], rows))
    a("")
    if sg["restates_seeding"]:
        a("**No SGLD sample left its seed's cluster: the SGLD cluster masses only restate the seeding, so the "
          "SGLD rows of Table 2 compare SGD with the choice of seeds, not with a posterior.**\n")
    ss = st
    a("Cluster structure: GMM BIC by k: " + ", ".join(f"k={k}: {fmt(v)}" for k, v in ss["gmm_bic"].items())
      + "; silhouette by k: " + ", ".join(f"k={k}: {fmt(v)}" for k, v in ss["silhouette"].items()) + ".\n")
    for n in ss["notes"] + r["notes"]:
        a(f"- note: {n}")
    a("")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- figures

def _figures(ctx, r: dict, figdir: Path) -> list[Path]:
    tr, ll, cu, sg, an = (ctx[s] for s in ("train", "llc", "cluster", "sgld", "analysis"))
    dpi = ctx.config.report.dpi
    used = cu["used_index"]
    labels = cu["labels"]
    cats = list(cu["categories"])
    names = list(cu["category_names"])
    d = r["distributions"]
    out = []
    out.append(F.fig_llc_hist(figdir / "fig4a_llc_hist.png", ll["llc"][used], labels, names, cats,
                              r["llc"]["nbeta"], dpi))
    dists = {"SGD": d["P_sgd"], "SGLD": d["P_sgld"], "free energy": d["P_F"], "tempered SGD": d["P_temp"]}
    out.append(F.fig_cluster_masses(figdir / "fig4b_cluster_masses.png", names, dists,
                                    subtitle=r["structure"]["partition_label"], dpi=dpi))
    out.append(F.fig_xi_sweep(figdir / "fig3_xi_sweep.png", an["xi_grid"], an["xi_kl"], r["xi"]["xi_star"] or np.nan,
                              an["xi_kl_heldout"], an["xi_boot"],
                              [c if c is not None else np.nan for c in r["xi"]["ci"]], dpi))
    out.append(F.fig_loss_curves(figdir / "loss_curves.png", tr["steps"], tr["train_loss_curve"], tr["passed"],
                                 r["ensemble"]["window"], r["ensemble"]["rel_tol"], dpi))
    out.append(F.fig_sgld_traces(figdir / "sgld_traces.png", sg["loss_traces"], sg["labels"], names, cats,
                                 sg["start_labels"], ctx.config.report.max_traces, dpi))
    # input plane: the grid part of the probe
    g = ctx.config.cluster.grid
    n = ctx.config.data.n
    probe = cu["probe"]
    grid_pts = probe[n:n + g * g]
    gx = grid_pts[:, 0].reshape(g, g)
    gy = grid_pts[:, 1].reshape(g, g)
    probs = cu["probs"][:, n:n + g * g]
    mean_prob, members = [], []
    rng = np.random.default_rng(0)
    for c in cats:
        sel = np.flatnonzero(labels == c)
        if sel.size == 0:
            mean_prob.append(None)
            members.append([])
            continue
        mean_prob.append(probs[sel].mean(0).reshape(g, g))
        show = rng.choice(sel, size=min(8, sel.size), replace=False)
        members.append([probs[k].reshape(g, g) for k in show])
    data = ctx.config.data.load()
    out.append(F.fig_clusters_plane(figdir / "clusters_input_plane.png", gx, gy, mean_prob, members, names,
                                    d["P_sgd"], data.x_train.numpy(), data.y_train.numpy(), dpi))
    emb2 = np.asarray(sg["embedding"])[..., :2].reshape(-1, 2)
    emb2 = emb2[np.isfinite(emb2).all(1)]
    out.append(F.fig_embedding(figdir / "embedding.png", cu["embedding"], labels, names, cats, emb2, dpi))
    return out


def write_report(ctx) -> Path:
    if ctx["analysis"].get("skipped"):  # every run diverged: a report that says so
        return write_skipped_report(ctx, ctx["train"]["divergence"], ctx["analysis"]["skipped"])
    return write_study_report(ctx, build_results, _figures, render_markdown)
