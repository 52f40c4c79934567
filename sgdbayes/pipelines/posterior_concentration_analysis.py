"""Stage 5 (``analysis``) of the posterior_concentration study: α per run, the ξ sweep, tempered SGD,
the free-energy reference, Table 2, H4 and H5, the per-cluster table and the report's summaries
(paper §4.2, App G.4, Figs 3-4, Table 2; docs/methods.md#posterior-concentration).

Every statistic is a function of :mod:`sgdbayes.stats`; this module wires the earlier stages'
outputs into them and returns Results (cached as Results by the runner).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..runner.orchestrate import StageContext

__all__ = ["stage_analysis"]


def _alpha_per_run(steps: np.ndarray, disp: np.ndarray, window: str, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Late-window (after the fitted crossover) or whole-range slope α of log R vs log t per run."""
    from ..stats.diffusion import fit_diffusion

    K = disp.shape[0]
    alpha = np.full(K, np.nan)
    whole = np.full(K, np.nan)
    notes: list[str] = []
    n_fail = 0
    for k in range(K):
        d = np.asarray(disp[k], float)
        ok = np.isfinite(d)
        try:
            f = fit_diffusion(steps[ok], d[ok], method="ar1", n_boot=19, seed=seed + k,
                              late_window="crossover" if window == "late" else None)
        except (ValueError, np.linalg.LinAlgError):
            n_fail += 1
            continue
        whole[k] = f.whole.alpha
        alpha[k] = f.late.alpha if (window == "late" and f.late is not None) else f.whole.alpha
    if n_fail:
        notes.append(f"{n_fail} runs had no diffusion fit (α = NaN)")
    return alpha, whole, notes


def _sgld_side(sg: dict, cats: list) -> dict[str, Any]:
    """The SGLD samples assigned to the SGD partition: labels and chain of every non-diverged sample,
    counts and masses per category, and whether any sample left its seed's cluster."""
    from ..stats.bootstrap import label_positions

    s_lab = sg["labels"]
    valid = s_lab != -2  # -2 = a diverged chain's (missing) sample
    chain_ids = np.repeat(np.arange(s_lab.shape[0]), s_lab.shape[1]).reshape(s_lab.shape)
    labels = s_lab[valid]
    counts = np.bincount(label_positions(labels, cats), minlength=len(cats)) if labels.size else np.zeros(len(cats))
    left = int(sg["left_seed_cluster"].sum())
    return {"labels": labels, "groups": chain_ids[valid], "counts": counts, "p": counts / max(1, counts.sum()),
            "mixing": {"samples_left_seed_cluster": left, "chains_that_moved": int((sg["left_seed_cluster"] > 0).sum()),
                       "restates_seeding": left == 0}}


def _w1_centroids(cu: dict, sg: dict, cats: list, names: list, notes: list) -> np.ndarray:
    """W1's ground points: the SGD cluster centroids; a category without SGD members (e.g. noise) gets the
    centroid of its SGLD samples; with neither it carries no mass and its centroid is irrelevant (0)."""
    centroids = np.asarray(cu["centroids"], float).copy()
    s_emb = np.asarray(sg["embedding"], float)
    for i, c in enumerate(cats):
        if not np.isfinite(centroids[i]).all():
            sel = sg["labels"] == c
            if sel.any():
                centroids[i] = s_emb[sel].mean(0)
                notes.append(f"category {names[i]} has no SGD member: W1 uses the centroid of its SGLD samples")
            else:
                centroids[i] = 0.0
    return centroids


def _table2(inp: dict, sgld: dict, tempered, ac, rng, notes: list) -> tuple[list, Any]:
    """Table 2: each reference (SGLD; the free energy) against tempered SGD (when ξ* exists) and raw SGD,
    with bootstrap divergences (SGLD: whole chains resampled; free energy: paired resamples of runs), in
    the order the analysis generator is consumed. Returns the rows and the SGLD-vs-SGD G-test."""
    from ..stats.concentration import count_fn, free_energy_fn, paired_bootstrap_divergences, smoothed_count_fn
    from ..stats.divergence import bootstrap_divergences
    from ..stats.tempering import make_tempered_fn

    labels, cats, N, alpha, m = inp["labels"], inp["cats"], inp["N"], inp["alpha"], inp["m"]
    common = dict(n_boot=ac.n_boot, level=ac.level, margin=ac.margin, seed=rng)
    temp = [("tempered SGD", make_tempered_fn(labels, cats, alpha, tempered.xi, m),
             make_tempered_fn(labels, cats, alpha, tempered.xi, m, pseudocount=ac.pseudocount))] if tempered else []
    rows, gtest = [], None
    if sgld["labels"].size:
        for name, fn, fn_s in temp + [("raw SGD", None, None)]:
            br = bootstrap_divergences(sgld["labels"], labels, cats, centroids=inp["centroids"], groups_p=sgld["groups"],
                                       dist_q=fn, smoothed_q=fn_s, pseudocount=ac.pseudocount, names=("SGLD", name),
                                       gtest=fn is None, **common)
            rows.append({"reference": "SGLD", "target": name, "divergences": br, "notes": br.point.notes + br.notes,
                         "resampling": f"SGLD: whole chains ({int(np.unique(sgld['groups']).size)}); SGD: runs ({N})"})
            gtest = br.gtest if fn is None else gtest
    else:
        notes.append("all SGLD chains diverged: no SGLD reference")
    fe = free_energy_fn(labels, cats, inp["loss"], alpha, inp["llc"], m)
    raw = [("raw SGD", count_fn(labels, cats, normalize=True), smoothed_count_fn(labels, cats, ac.pseudocount))]
    for name, fn, fn_s in temp + raw:
        br = paired_bootstrap_divergences(fe, fn, N, inp["centroids"], smoothed_target=fn_s, categories=cats,
                                          names=("free energy", name), **common)
        rows.append({"reference": "free energy", "target": name, "divergences": br, "notes": [],
                     "resampling": f"SGD runs ({N}), paired (both sides recomputed from each resample)"})
    return rows, gtest


def _reference_h5(inp: dict, references: list, tempered, ac) -> tuple[list, list]:
    """H5 against each ``[reference]`` reference: the bootstrap of its divergences from tempered SGD
    (whole chains resampled; its own generator from ``analysis.seed``, so the other tests' numbers do
    not move), inconclusive when the reference has not converged. Returns the Table-2 rows and the tests."""
    from .._format import fmt_num
    from ..stats.concentration import test_h5
    from ..stats.divergence import bootstrap_divergences
    from ..stats.tempering import make_tempered_fn

    rows, tests = [], []
    labels, cats, m = inp["labels"], inp["cats"], inp["m"]
    rng = np.random.default_rng([ac.seed, 16])
    for ref in references:
        side = _sgld_side({"labels": np.asarray(ref["labels"], np.int64),
                           "left_seed_cluster": np.asarray(ref["left_seed_cluster"], np.int64)}, cats)
        br = None
        if tempered is not None and side["labels"].size:
            br = bootstrap_divergences(side["labels"], labels, cats, centroids=inp["centroids"], groups_p=side["groups"],
                                       dist_q=make_tempered_fn(labels, cats, inp["alpha"], tempered.xi, m),
                                       smoothed_q=make_tempered_fn(labels, cats, inp["alpha"], tempered.xi, m,
                                                                   pseudocount=ac.pseudocount),
                                       pseudocount=ac.pseudocount, names=(ref["name"], "tempered SGD"),
                                       n_boot=ac.n_boot, level=ac.level, margin=ac.margin, seed=rng)
            rows.append({"reference": ref["name"], "target": "tempered SGD", "divergences": br,
                         "notes": br.point.notes + br.notes,
                         "resampling": f"{ref['name']}: whole chains ({int(np.unique(side['groups']).size)}); "
                                       f"SGD: runs ({inp['N']})"})
        note = f"R̂ {fmt_num(ref['rhat'])}, ESS {fmt_num(ref['ess'])}"
        tests.append(test_h5(br, ref["name"], reference_converged=ref["converged"], convergence_note=note,
                             level=ac.level))
    return rows, tests


def _reference_converged(sg: dict, ac) -> tuple[bool, str]:
    """Has the SGLD reference converged? Pooled split-R̂ of the loss ≤ ``ac.reference_max_rhat`` and
    pooled bulk ESS ≥ ``ac.reference_min_ess`` (a missing value fails)."""
    from .._format import fmt_num

    rhat, ess = float(sg["rhat_all"]), float(sg["ess_all"])
    ok = bool(rhat <= ac.reference_max_rhat and ess >= ac.reference_min_ess)
    return ok, (f"R̂ {fmt_num(rhat)} (needs ≤ {fmt_num(ac.reference_max_rhat)}), ESS {fmt_num(ess)} "
                f"(needs ≥ {fmt_num(ac.reference_min_ess)})")


def _descriptives(tr: dict, ll: dict, sg: dict, inp: dict, ctx: StageContext) -> dict[str, Any]:
    """Summaries the report shows beside the tests (computed here, never in the report)."""
    from ..stats.summaries import summarize

    seed, level, used = ctx.config.analysis.seed, ctx.config.analysis.level, inp["used"]

    def summ(v):
        return summarize(np.asarray(v, float), level, seed)

    traces = np.asarray(sg["loss_traces"], float)
    S = traces.shape[1]
    passed = np.asarray(tr["passed"], bool)
    loss_curves = np.asarray(tr["train_loss_curve"], float)
    llc_cfg = ctx.config.llc
    return {
        "rel_drop": summ(tr["rel_drop"]), "train_acc": summ(tr["final_train_acc"]), "test_acc": summ(tr["final_test_acc"]),
        "train_loss": summ(tr["final_train_loss"]), "train_acc_used": summ(tr["final_train_acc"][used]),
        "llc_all": summ(ll["llc"]), "llc_used": summ(inp["llc"]), "trend_z": summ(ll["trend_z"]),
        "trend_rel": summ(ll["trend_rel"]), "chain_std": summ(ll["llc_std"]),
        "n_llc_negative": int(np.sum(np.asarray(ll["llc"], float) < 0)), "n_llc_negative_used": int(np.sum(inp["llc"] < 0)),
        # the localization relaxes a displacement in 2/(εγ) steps (docs/methods.md#measured-quantities)
        "relaxation_steps": 2.0 / (llc_cfg.step_size * llc_cfg.localization),
        "alpha_late": summ(inp["alpha"]), "alpha_whole": summ(inp["alpha_whole"]),
        "sgld_mean_loss_chain": np.nanmean(traces, axis=1),
        "sgld_loss_first_decile": float(np.nanmean(traces[:, : max(1, S // 10)])),
        "sgld_loss_last_decile": float(np.nanmean(traces[:, -max(1, S // 10):])),
        "loss_median_passed": np.median(loss_curves[passed], axis=0) if passed.any() else None,
        "loss_median_failed": np.median(loss_curves[~passed], axis=0) if (~passed).any() else None,
        "n_runs": int(np.size(tr["seeds"])), "n_diverged": int(np.sum(tr["diverged"])), "n_pass": int(passed.sum()),
        "n_used": int(np.size(used)), "n_trend_flag": int(np.sum(ll["trend_flag"])),
        "n_llc_all_diverged": int(np.sum(ll["all_diverged"])), "n_sgld_diverged": int(np.sum(sg["diverged"])),
    }


def _inputs(ctx: StageContext) -> dict[str, Any]:
    """The kept runs' labels, loss, λ̂ and α (late window or whole range), with the fits' notes."""
    import time

    tr, ll, cu, ac = ctx["train"], ctx["llc"], ctx["cluster"], ctx.config.analysis
    used = cu["used_index"]
    t0 = time.perf_counter()
    alpha, alpha_whole, notes = _alpha_per_run(tr["steps"], tr["displacement"][used], ac.alpha_window, ac.seed)
    ctx.log(f"    α fits: {time.perf_counter() - t0:.1f} s; median α {np.nanmedian(alpha):.3f}")
    return {"used": used, "labels": cu["labels"], "cats": list(cu["categories"]), "names": list(cu["category_names"]),
            "N": int(used.size), "alpha": alpha, "alpha_whole": alpha_whole, "notes": notes,
            "loss": tr["final_train_loss"][used], "llc": ll["llc"][used],
            "m": float(ctx.config.tempering.m or ctx.config.data.n)}


def _xi_heldout(inp: dict, lr: float, grid: np.ndarray, split_seed: int) -> np.ndarray:
    """KL(P_sgd ‖ p_theory(ξ)) on half B of the runs (the split of the ξ sweep), for the Fig-3 figure."""
    from ..stats.bootstrap import label_positions
    from ..stats.tempering import cluster_properties, kl_sgd_theory

    labels, cats, N = inp["labels"], inp["cats"], inp["N"]
    B = np.sort(np.random.default_rng(split_seed).permutation(N)[N // 2:])
    pB = np.bincount(label_positions(labels[B], cats), minlength=len(cats)) / B.size
    propsB = cluster_properties(labels[B], cats, inp["loss"][B], inp["alpha"][B], inp["llc"][B])
    return kl_sgd_theory(pB, propsB.loss, propsB.d_walk, lr, grid)


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    """ξ sweep, tempered SGD, the free-energy reference, Table 2, H4 and H5 (one generator from
    ``analysis.seed``, consumed in that order), the per-cluster table and the report's summaries."""
    from ..stats.concentration import g_test_ess, test_h4, test_h5
    from ..stats.tempering import TemperingUndefined, free_energy_distribution, sweep_xi, tempered_distribution
    from ..stats.theory import cluster_table

    tr, ll, cu, sg = ctx["train"], ctx["llc"], ctx["cluster"], ctx["sgld"]
    ac, tc = ctx.config.analysis, ctx.config.tempering
    inp = _inputs(ctx)
    labels, cats, notes = inp["labels"], inp["cats"], inp["notes"]
    rng = np.random.default_rng(ac.seed)
    grid = np.logspace(np.log10(tc.xi_min), np.log10(tc.xi_max), tc.xi_points)
    sw = sweep_xi(labels, cats, inp["loss"], inp["alpha"], tc.gamma, grid=grid, n_boot=tc.n_boot_xi, level=ac.level,
                  split_seed=tc.split_seed, seed=rng, llc=inp["llc"])
    props = sw.properties
    counts_sgd = props.n
    tempered = None
    if not np.isfinite(sw.xi_star):
        notes.append("ξ* undefined: no tempered distribution")
    else:
        try:
            tempered = tempered_distribution(counts_sgd, props.log_D(sw.xi_star), inp["m"], categories=cats,
                                             xi=sw.xi_star)
        except TemperingUndefined as exc:
            notes.append(f"no tempered distribution at ξ* = {sw.xi_star:.4g}: {exc}")
    fe = free_energy_distribution(props.loss, props.llc, inp["m"], categories=cats)
    sgld = _sgld_side(sg, cats)
    inp["centroids"] = _w1_centroids(cu, sg, cats, inp["names"], notes)
    table2, gtest = _table2(inp, sgld, tempered, ac, rng, notes)
    gtest_ess = (g_test_ess(counts_sgd, sgld["counts"], sg["ess_chain"], sg["diverged"], cats)
                 if sgld["labels"].size and np.isfinite(sg["ess_chain"]).any() else None)
    h4 = test_h4(labels, cats, inp["llc"], n_boot=ac.n_boot, level=ac.level, seed=rng)
    converged, why = _reference_converged(sg, ac)

    def vs_tempered(ref):
        return next((r["divergences"] for r in table2 if r["reference"] == ref and r["target"] == "tempered SGD"), None)

    h5 = [test_h5(vs_tempered("SGLD"), "SGLD", restates_seeding=sgld["mixing"]["restates_seeding"],
                  reference_converged=converged, convergence_note=why, gtest=gtest, level=ac.level),
          test_h5(vs_tempered("free energy"), "free energy", level=ac.level)]
    ref_rows, ref_h5 = _reference_h5(inp, ctx["reference"].get("references", []), tempered, ac)
    table2 += ref_rows
    h5 += ref_h5
    p_temp = tempered.p_temp if tempered else np.full(len(cats), np.nan)
    extra = {"log_D_xi_star": props.log_D(sw.xi_star) if tempered else np.full(len(cats), np.nan),
             "m_D_xi_star": tempered.exponent if tempered else np.full(len(cats), np.nan),
             "P_temp": p_temp, "P_sgld": sgld["p"], "P_F": fe.p_f, "F_c": fe.free_energy, "n_sgld": sgld["counts"]}
    clusters = cluster_table(labels, cats, props, acc=tr["final_train_acc"][inp["used"]], llc=inp["llc"],
                             columns=extra)
    return {
        "alpha": inp["alpha"], "alpha_whole": inp["alpha_whole"], "xi_grid": grid, "xi_sweep": sw,
        "xi_kl_heldout": _xi_heldout(inp, tc.gamma, grid, tc.split_seed), "tempered": tempered, "free_energy": fe,
        "distributions": {"categories": cats, "names": inp["names"], "P_sgd": counts_sgd / inp["N"],
                          "P_sgld": sgld["p"], "P_F": fe.p_f, "P_temp": p_temp, "counts_sgd": counts_sgd,
                          "counts_sgld": sgld["counts"]},
        "clusters": clusters, "table2": table2, "gtest": gtest, "gtest_ess": gtest_ess, "hypotheses": [*h4, *h5],
        "sgld_mixing": sgld["mixing"],
        "reference": {"converged": converged, "criterion": why, "max_rhat": ac.reference_max_rhat,
                      "min_ess": ac.reference_min_ess},
        "descriptives": {**_descriptives(tr, ll, sg, inp, ctx),
                         "xi_kl_range": [float(np.nanmin(sw.kl)), float(np.nanmax(sw.kl))]},
        "m": inp["m"], "notes": notes,
    }


