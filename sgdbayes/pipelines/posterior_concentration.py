"""posterior_concentration: paper §4.2 / App G.4 / Figs 3-4 / Table 2 (docs/methods.md).

Stages (each cached atomically by :mod:`sgdbayes.runner`):

1. ``train``    batched SGD ensemble (engine), loss curves, displacement, convergence filter
2. ``llc``      λ̂ of every final solution (batched localized SGLD, Table 3 settings)
3. ``cluster``  function-space clustering of the kept solutions (probe predictions, PCA, HDBSCAN,
                structure report, GMM fallback)
4. ``sgld``     temperature-1 posterior SGLD from the lowest-loss/lowest-λ solutions; samples
                assigned to the clusters; mixing diagnostics
5. ``analysis`` late-window α per run, ξ sweep (+ split sample, bootstrap ξ*), tempered SGD,
                free-energy reference, Table 2 with bootstrap intervals, G-test, H4/H5 verdicts

The report (``write_report``) is rendered from ``results.json`` by
:mod:`sgdbayes.reporting.pc_report`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..runner.orchestrate import Stage, StageContext
from ._ensemble_arrays import divergence_summary, ensemble_arrays
from .posterior_concentration_config import (
    AnalysisConfig,
    ClusterConfig,
    ConvergenceConfig,
    PosteriorConcentrationConfig,
    ReportConfig,
    SGLDStarts,
    TemperingConfig,
)
from .sections import sgd_ensemble

__all__ = ["CONFIG", "PosteriorConcentrationConfig", "ConvergenceConfig", "ClusterConfig", "SGLDStarts",
           "TemperingConfig", "AnalysisConfig", "ReportConfig", "STAGES", "write_report", "convergence_filter",
           "select_sgld_starts"]


CONFIG = PosteriorConcentrationConfig


# --------------------------------------------------------------------------- helpers

def _dataset(ctx: StageContext):
    return ctx.config.data.load("cpu")


def _spec(ctx: StageContext, data):
    return ctx.config.model.spec(data.n_features, data.n_classes)


def convergence_filter(steps: np.ndarray, loss: np.ndarray, window: float, rel_tol: float):
    """Relative loss plateau over the last ``window`` fraction of steps.

    For each run, an OLS line is fitted to the recorded training loss at the grid
    steps t in ``[(1 - window) T, T]``; the relative drop over the window is
    ``-slope * window * T / mean(loss in window)``. A run passes when the drop is
    ``< rel_tol`` (and the loss is finite). Returns ``(rel_drop [K], passed [K])``.
    """
    steps = np.asarray(steps, float)
    T = steps[-1]
    sel = steps >= (1.0 - window) * T - 1e-9
    t = steps[sel]
    L = np.asarray(loss, float)[:, sel]
    if t.size < 2:
        rel = np.full(L.shape[0], np.nan)
    else:
        tc = t - t.mean()
        slope = (L - L.mean(1, keepdims=True)) @ tc / (tc @ tc)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = -slope * window * T / L.mean(1)
    passed = np.isfinite(rel) & (rel < rel_tol)
    return rel, passed


@torch.no_grad()
def _prob1(spec, w: torch.Tensor, x: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """P(y = 1) of each model on x: ``[K, n]`` float32 (chunked over models)."""
    out = []
    for s in range(0, w.shape[0], chunk):
        logits = spec.forward(w[s:s + chunk], x, train=False)
        out.append(torch.softmax(logits, -1)[..., 1].float().cpu().numpy())
    return np.concatenate(out, 0)


def _rank(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v, method="average")


def select_sgld_starts(loss: np.ndarray, llc: np.ndarray, labels: np.ndarray, n_chains: int,
                       seeding: str, categories: list[int]) -> tuple[np.ndarray, str]:
    """Indices (into the kept runs) that seed SGLD, and a sentence saying how.

    Score = rank of final training loss + rank of λ̂ (both ascending; lower = better);
    runs with λ̂ <= 0 or non-finite λ̂ are not eligible (λ̂ <= 0 is an estimation
    artefact, it would otherwise win the λ ranking) unless too few runs remain.
    ``lowest``: the ``n_chains`` best scores overall. ``per_cluster``: the best score
    of every non-noise cluster (noise is not a basin).
    """
    K = loss.size
    eligible = np.isfinite(llc) & (llc > 0) & np.isfinite(loss)
    note = "runs with λ̂ ≤ 0 excluded"
    if eligible.sum() < max(1, min(n_chains, K)):
        eligible = np.isfinite(llc) & np.isfinite(loss)
        note = "too few runs with λ̂ > 0, so runs with λ̂ ≤ 0 were eligible too"
    idx = np.flatnonzero(eligible)
    score = _rank(loss[idx]) + _rank(llc[idx])
    order = idx[np.lexsort((loss[idx], score))]
    if seeding == "lowest":
        pick = order[:n_chains]
        how = (f"the {pick.size} kept runs with the smallest (rank of final training loss + rank of λ̂), "
               f"ties broken by loss; {note}")
    else:
        pick = []
        for c in categories:
            if c == -1:
                continue
            members = order[labels[order] == c]
            if members.size:
                pick.append(members[0])
        pick = np.asarray(pick, dtype=int)
        how = (f"one chain per cluster ({pick.size} chains), each seeded from the cluster's run with the "
               f"smallest (rank of loss + rank of λ̂); {note}")
    return np.asarray(pick, dtype=int), how


# --------------------------------------------------------------------------- stage 1: train

def stage_train(ctx: StageContext) -> dict[str, Any]:
    from ..engine import train_ensemble

    c = ctx.config
    res = train_ensemble(sgd_ensemble(c.data, c.model, c.train, c.data.n_train, ctx.device))
    fin = res.final
    K = len(res.seeds)
    rel, passed = convergence_filter(res.steps, res.train_loss, c.convergence.window, c.convergence.rel_tol)
    arrays = ensemble_arrays(res, displacement_dtype=np.float32)
    diverged = arrays["diverged"]
    passed &= ~diverged
    n_pass = int(passed.sum())
    apply = bool(c.convergence.apply)
    if apply and n_pass >= c.convergence.min_runs:
        used = passed.copy()
        filter_status = "applied"
    else:
        used = ~diverged
        filter_status = ("not applied (convergence.apply = false)" if not apply else
                         f"not applied: only {n_pass} runs passed (< convergence.min_runs = "
                         f"{c.convergence.min_runs}); all non-diverged runs kept")
    ctx.log(f"    {K} runs, {n_pass} pass the plateau filter; filter {filter_status}; "
            f"train acc {fin['train_acc'].mean():.3f}; {int(diverged.sum())} diverged")
    return {
        **arrays,
        "divergence": divergence_summary(diverged, arrays["diverged_step"], [f"seed {s}" for s in arrays["seeds"]]),
        "rel_drop": rel,
        "passed": passed,
        "used": used,
        "w_final": res.w_final.detach().cpu().numpy().astype(np.float32),
        "filter_status": filter_status,
        "engine_meta": {k: v for k, v in (res.meta or {}).items() if isinstance(v, (int, float, str, bool))},
    }


# --------------------------------------------------------------------------- stage 2: llc

def _scatter(values: np.ndarray, at: np.ndarray, K: int, fill) -> np.ndarray:
    """``values`` (rows of the estimated runs) placed at rows ``at`` of a K-row array filled with ``fill``."""
    values = np.asarray(values)
    out = np.full((K, *values.shape[1:]), fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
    out[at] = values
    return out


def stage_llc(ctx: StageContext) -> dict[str, Any]:
    """λ̂ of every run that did not diverge (a diverged run's frozen weights have no finite loss;
    its λ̂ is NaN). Chains are keyed by the run's seed, so the others' estimates do not change."""
    from ..sampling import estimate_llc

    tr = ctx["train"]
    data = _dataset(ctx)
    spec = _spec(ctx, data)
    K = int(np.size(tr["seeds"]))
    ok = np.flatnonzero(~np.asarray(tr["diverged"], bool))
    w = torch.as_tensor(tr["w_final"][ok]).to(ctx.device)
    r = estimate_llc(w, (data.x_train.to(ctx.device), data.y_train.to(ctx.device)), spec=spec,
                     config=ctx.config.llc, model_ids=[int(s) for s in tr["seeds"][ok]])
    ctx.log(f"    nβ = {r.nbeta:.4g}; λ̂ mean {np.nanmean(r.llc):.3g}; {int(r.negative.sum())} negative; "
            f"{int(r.trend_flag.sum())} trend-flagged; {K - ok.size} diverged runs skipped; {r.wall_s:.1f} s")
    return {
        "llc": _scatter(r.llc.astype(float), ok, K, np.nan),
        "llc_std": _scatter(r.llc_std.astype(float), ok, K, np.nan),
        "llc_per_chain": _scatter(r.llc_per_chain.astype(float), ok, K, np.nan),
        "trend_z": _scatter(r.trend_z.astype(float), ok, K, np.nan),
        "trend_rel": _scatter(r.trend_rel.astype(float), ok, K, np.nan),
        "trend_flag": _scatter(r.trend_flag, ok, K, False),
        "init_loss": _scatter(r.init_loss.astype(float), ok, K, np.nan),
        "all_diverged": _scatter(r.all_diverged, ok, K, False),
        "n_diverged_chains": _scatter(r.n_diverged.astype(np.int64), ok, K, 0),
        "loss_trace_mean": np.nanmean(r.loss_traces, axis=(0, 1)).astype(float),
        "nbeta": float(r.nbeta),
        "nbeta_rule": r.config.nbeta_rule(),
        "settings": {k: v for k, v in r.settings().items() if isinstance(v, (int, float, str, bool, type(None)))},
        "trend_z_threshold": float(r.config.trend_z),
    }


# --------------------------------------------------------------------------- stage 3: cluster

def _probe(ctx: StageContext, data) -> np.ndarray:
    from ..stats.cluster import probe_inputs

    c = ctx.config.cluster
    return probe_inputs(data.x_train.cpu().numpy(), grid_size=c.grid, margin=c.grid_margin).astype(np.float32)


def _clusterer(ctx: StageContext):
    from ..stats.cluster import FunctionSpaceClusterer

    c = ctx.config.cluster
    return FunctionSpaceClusterer(n_components=c.pca_dim, min_cluster_size=c.min_cluster_size, fallback="gmm",
                                  max_k=c.gmm_max_k, random_state=c.seed)


def stage_cluster(ctx: StageContext) -> dict[str, Any]:
    tr = ctx["train"]
    data = _dataset(ctx)
    spec = _spec(ctx, data)
    used = np.flatnonzero(tr["used"])
    probe = _probe(ctx, data)
    probs = _prob1(spec, torch.as_tensor(tr["w_final"][used]), torch.as_tensor(probe))
    cl = _clusterer(ctx).fit(probs[:, :, None])
    st = cl.structure_
    ctx.log(f"    {used.size} solutions; HDBSCAN clusters: {st.hdbscan_n_clusters} "
            f"(noise fraction {st.hdbscan_noise_fraction:.2f}); partition: {cl.partition_kind_} "
            f"with {len(cl.categories_)} categories")
    return {
        "used_index": used.astype(np.int64),
        "probe": probe,
        "probs": probs.astype(np.float32),
        "labels": np.asarray(cl.labels_, dtype=np.int64),
        "hdbscan_labels": np.asarray(cl.hdbscan_labels_, dtype=np.int64),
        "categories": [int(c) for c in cl.categories_],
        "category_names": list(cl.category_names_),
        "partition_kind": cl.partition_kind_,
        "partition_label": cl.partition_label_,
        "embedding": np.asarray(cl.embedding_, dtype=float),
        "centroids": np.asarray(cl.centroids_, dtype=float),
        "structure": {
            "n_samples": st.n_samples, "n_components": st.n_components,
            "explained_variance": st.explained_variance, "hdbscan_n_clusters": st.hdbscan_n_clusters,
            "hdbscan_noise_fraction": st.hdbscan_noise_fraction, "validity_index": st.validity_index,
            "gmm_bic": {str(k): v for k, v in st.gmm_bic.items()}, "gmm_best_k": st.gmm_best_k,
            "silhouette": {str(k): v for k, v in st.silhouette.items()},
            "silhouette_best_k": st.silhouette_best_k, "silhouette_best": st.silhouette_best,
            "min_cluster_size": st.min_cluster_size, "min_samples": st.min_samples,
            "separated_basins": bool(st.separated_basins), "notes": list(st.notes),
            "fallback_bic": {str(k): float(v) for k, v in getattr(cl, "fallback_bic_", {}).items()},
        },
    }


# --------------------------------------------------------------------------- stage 4: sgld

def stage_sgld(ctx: StageContext) -> dict[str, Any]:
    from ..sampling import sample_posterior
    from ..sampling.diagnostics import ess, split_rhat

    tr, ll, cu = ctx["train"], ctx["llc"], ctx["cluster"]
    data = _dataset(ctx)
    spec = _spec(ctx, data)
    used = cu["used_index"]
    labels = cu["labels"]
    cats = list(cu["categories"])
    # refit the (deterministic) clusterer on the cached probe predictions
    cl = _clusterer(ctx).fit(cu["probs"][:, :, None])
    if not np.array_equal(cl.labels_, labels):
        raise RuntimeError("refitted clusterer does not reproduce the cached labels")
    loss_u = tr["final_train_loss"][used]
    llc_u = ll["llc"][used]
    starts = ctx.config.sgld_starts
    pick, how = select_sgld_starts(loss_u, llc_u, labels, starts.n_chains, starts.rule, cats)
    if pick.size == 0:
        raise RuntimeError("no run is eligible to seed SGLD")
    w0 = torch.as_tensor(tr["w_final"][used[pick]]).to(ctx.device)
    pcfg = ctx.config.sgld
    seed_ids = [int(s) for s in tr["seeds"][used[pick]]]
    r = sample_posterior(w0, spec=spec, data=(data.x_train.to(ctx.device), data.y_train.to(ctx.device)),
                         config=pcfg, start_ids=seed_ids, groups=labels[pick].tolist())
    C, S = r.loss_traces.shape
    samples = r.samples  # [C, S, P]
    probe = torch.as_tensor(cu["probe"])
    sample_labels = np.full((C, S), -2, dtype=np.int64)  # -2 = diverged (no sample)
    sample_emb = np.full((C, S, cl.n_components_), np.nan)
    for c in range(C):
        if r.diverged[c]:
            continue
        pr = _prob1(spec, samples[c].cpu().float(), probe)
        sample_labels[c] = cl.predict(pr[:, :, None])
        sample_emb[c] = cl.transform(pr[:, :, None])
    del samples
    seed_labels = labels[pick]
    valid = ~r.diverged
    left = (sample_labels != seed_labels[:, None]) & valid[:, None]
    traces = r.loss_traces
    rhat_all = float(split_rhat(traces[valid])) if valid.sum() else float("nan")
    ess_all = float(ess(traces[valid])) if valid.sum() else float("nan")
    ctx.log(f"    {C} chains x {S} samples; split-R̂ {rhat_all:.3g}, ESS {ess_all:.0f}; "
            f"{int(left.sum())} samples left their seed's cluster; {r.wall_s:.1f} s")
    return {
        "start_index": used[pick].astype(np.int64),  # index into all runs
        "start_seeds": np.asarray(seed_ids, dtype=np.int64),
        "start_labels": seed_labels.astype(np.int64),
        "start_loss": loss_u[pick],
        "start_llc": llc_u[pick],
        "selection": how,
        "loss_traces": traces.astype(float),
        "labels": sample_labels,
        "embedding": sample_emb.astype(np.float32),
        "diverged": np.asarray(r.diverged, bool),
        "rhat_chain": np.asarray(r.rhat_chain, float),
        "ess_chain": np.asarray(r.ess_chain, float),
        "rhat_all": rhat_all,
        "ess_all": ess_all,
        "left_seed_cluster": left.sum(1).astype(np.int64),
        "nbeta": float(r.nbeta),
        "wall_s": float(r.wall_s),
    }


# --------------------------------------------------------------------------- stage 5: analysis

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


def _paired_bootstrap(fn_ref, fn_tgt, n: int, centroids, n_boot: int, level: float, margin: float,
                      rng: np.random.Generator, fn_tgt_smoothed=None) -> dict:
    """Bootstrap of divergences when both distributions derive from the same SGD runs:
    each resample of runs feeds both (paired)."""
    from ..stats.bootstrap import percentile_interval, upper_bound
    from ..stats.divergence import js_divergence, kl_divergence, wasserstein1

    fn_tgt_smoothed = fn_tgt_smoothed or fn_tgt

    def metrics(idx):
        p, q = fn_ref(idx), fn_tgt(idx)
        return {"kl": kl_divergence(p, q), "kl_smoothed": kl_divergence(p, fn_tgt_smoothed(idx)),
                "js": js_divergence(p, q), "w1": wasserstein1(p, q, centroids)}

    point = metrics(np.arange(n))
    boot = {m: np.empty(n_boot) for m in point}
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        for m, v in metrics(idx).items():
            boot[m][b] = v
    out = {}
    for m, v in point.items():
        lo, hi = percentile_interval(boot[m], level)
        up = upper_bound(boot[m], level)
        out[m] = {"estimate": v, "ci": [lo, hi], "upper": up, "equivalent": bool(up < margin),
                  "n_boot_inf": int(np.isinf(boot[m]).sum())}
    return out


def _from_boot_result(br) -> dict:
    out = {}
    pm = br.point.metrics()
    for m in br.boot:
        out[m] = {"estimate": pm[m], "ci": list(br.intervals[m]), "upper": br.upper[m],
                  "equivalent": bool(br.equivalent[m]), "n_boot_inf": int(br.n_inf[m])}
    return out


def _spearman_mass_llc(pos: np.ndarray, K: int, llc: np.ndarray, idx: np.ndarray):
    from scipy.stats import spearmanr

    p = pos[idx]
    v = llc[idx]
    n = np.bincount(p, minlength=K)
    fin = np.isfinite(v)
    s = np.bincount(p[fin], weights=v[fin], minlength=K)
    c = np.bincount(p[fin], minlength=K)
    ok = (n > 0) & (c > 0)
    if ok.sum() < 3:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = s[ok] / c[ok]
        r = spearmanr(n[ok] / p.size, lam).statistic
    return float(r)


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    from scipy.stats import kruskal

    from ..stats.bootstrap import label_positions, percentile_interval
    from ..stats.divergence import bootstrap_divergences, g_test
    from ..stats.tempering import (
        cluster_properties,
        free_energy_distribution,
        kl_sgd_theory,
        make_tempered_fn,
        sweep_xi,
        tempered_distribution,
    )

    tr, ll, cu, sg = ctx["train"], ctx["llc"], ctx["cluster"], ctx["sgld"]
    used = cu["used_index"]
    labels = cu["labels"]
    cats = list(cu["categories"])
    names = list(cu["category_names"])
    K = len(cats)
    N = used.size
    ac, tc = ctx.config.analysis, ctx.config.tempering
    level = ac.level
    margin = ac.margin
    pc = ac.pseudocount
    n_boot = ac.n_boot
    rng = np.random.default_rng(ac.seed)
    m = float(tc.m or ctx.config.data.n)
    lr = tc.gamma
    notes: list[str] = []

    # -- α per run (late window after the crossover, or whole range)
    t0 = time.perf_counter()
    alpha_all, alpha_whole_all, anotes = _alpha_per_run(tr["steps"], tr["displacement"][used],
                                                        ac.alpha_window, ac.seed)
    notes += anotes
    ctx.log(f"    α fits: {time.perf_counter() - t0:.1f} s; median α {np.nanmedian(alpha_all):.3f}")
    loss = tr["final_train_loss"][used]
    llc = ll["llc"][used]

    # -- ξ sweep
    grid = np.logspace(np.log10(tc.xi_min), np.log10(tc.xi_max), tc.xi_points)
    sw = sweep_xi(labels, cats, loss, alpha_all, lr, grid=grid, n_boot=tc.n_boot_xi,
                  level=level, split_seed=tc.split_seed, rng=rng, llc=llc)
    props = sw.properties
    xi_star = sw.xi_star
    # held-out curve for the figure: selected on half A, evaluated on half B
    perm = np.random.default_rng(tc.split_seed).permutation(N)
    B = np.sort(perm[N // 2:])
    pB = np.bincount(label_positions(labels[B], cats), minlength=K) / B.size
    propsB = cluster_properties(labels[B], cats, loss[B], alpha_all[B], llc[B])
    kl_heldout = kl_sgd_theory(pB, propsB.loss, propsB.d_walk, lr, grid)

    # -- tempered SGD and the free-energy reference
    counts_sgd = np.bincount(label_positions(labels, cats), minlength=K)
    if np.isfinite(xi_star):
        log_D = props.log_D(xi_star)
        temp = tempered_distribution(counts_sgd, log_D, m, categories=cats, xi=xi_star)
        p_temp = temp.p_temp
        temp_info = {"collapsed": temp.collapsed, "n_effective": temp.n_effective, "exponent": temp.exponent,
                     "log_D": log_D, "notes": temp.notes}
    else:
        p_temp = np.full(K, np.nan)
        temp_info = {"collapsed": False, "n_effective": float("nan"), "exponent": np.full(K, np.nan),
                     "log_D": np.full(K, np.nan), "notes": ["ξ* undefined: no tempered distribution"]}
    fe = free_energy_distribution(props.loss, props.llc, m, categories=cats)
    p_f = fe.p_f

    # -- SGLD distribution over clusters
    s_lab = sg["labels"]
    s_valid = s_lab != -2
    chain_ids = np.repeat(np.arange(s_lab.shape[0]), s_lab.shape[1]).reshape(s_lab.shape)
    sgld_labels = s_lab[s_valid]
    sgld_groups = chain_ids[s_valid]
    counts_sgld = np.bincount(label_positions(sgld_labels, cats), minlength=K) if sgld_labels.size else np.zeros(K)
    p_sgld = counts_sgld / max(1, counts_sgld.sum())
    left_total = int(sg["left_seed_cluster"].sum())
    chains_moved = int((sg["left_seed_cluster"] > 0).sum())
    sgld_restates_seeding = left_total == 0

    # centroids for W1: SGD centroids; a category without SGD members (e.g. noise) gets the
    # centroid of its SGLD samples; with neither it carries no mass and its centroid is irrelevant (0)
    centroids = np.asarray(cu["centroids"], float).copy()
    s_emb = np.asarray(sg["embedding"], float)
    for i, c in enumerate(cats):
        if not np.isfinite(centroids[i]).all():
            sel = s_lab == c
            if sel.any():
                centroids[i] = s_emb[sel].mean(0)
                notes.append(f"category {names[i]} has no SGD member: W1 uses the centroid of its SGLD samples")
            else:
                centroids[i] = 0.0

    # -- Table 2: references x targets
    table2 = []
    have_temp = np.isfinite(p_temp).all()
    tfn = make_tempered_fn(labels, cats, alpha_all, xi_star, m) if have_temp else None
    tfn_s = make_tempered_fn(labels, cats, alpha_all, xi_star, m, pseudocount=pc) if have_temp else None
    sgd_fn = lambda idx: np.bincount(label_positions(labels[idx], cats), minlength=K).astype(float)  # noqa: E731
    sgd_fn_s = lambda idx: (sgd_fn(idx) + pc) / (len(idx) + pc * K)  # noqa: E731
    pos_all = label_positions(labels, cats)

    def fe_fn(idx):
        pr = cluster_properties(labels[idx], cats, loss[idx], alpha_all[idx], llc[idx])
        return free_energy_distribution(pr.loss, pr.llc, m, categories=cats).p_f

    gtest = None
    if sgld_labels.size:
        targets = [("tempered SGD", tfn, tfn_s)] if have_temp else []
        targets.append(("raw SGD", None, None))
        for tname, fn, fn_s in targets:
            br = bootstrap_divergences(sgld_labels, labels, cats, centroids=centroids, groups_p=sgld_groups,
                                       dist_q=fn, smoothed_q=fn_s, n_boot=n_boot, level=level, margin=margin,
                                       pseudocount=pc, names=("SGLD", tname), gtest=(fn is None), rng=rng)
            table2.append({"reference": "SGLD", "target": tname, "metrics": _from_boot_result(br),
                           "resampling": f"SGLD: whole chains ({int(np.unique(sgld_groups).size)}); SGD: runs ({N})",
                           "notes": list(br.point.notes) + list(br.notes)})
            if fn is None and br.gtest is not None:
                gtest = {"statistic": br.gtest.statistic, "pvalue": br.gtest.pvalue, "dof": br.gtest.dof,
                         "notes": list(br.gtest.notes)}
    else:
        notes.append("all SGLD chains diverged: no SGLD reference")
    fe_targets = [("tempered SGD", tfn, tfn_s)] if have_temp else []
    fe_targets.append(("raw SGD", lambda idx: sgd_fn(idx) / len(idx), sgd_fn_s))
    for tname, fn, fn_s in fe_targets:
        res = _paired_bootstrap(fe_fn, fn, N, centroids, n_boot, level, margin, rng, fn_tgt_smoothed=fn_s)
        table2.append({"reference": "free energy", "target": tname, "metrics": res,
                       "resampling": f"SGD runs ({N}), paired (both sides recomputed from each resample)",
                       "notes": []})
    # ESS-scaled G-test (SGLD samples are autocorrelated)
    gtest_ess = None
    if sgld_labels.size and np.isfinite(sg["ess_chain"]).any():
        scale = float(np.nansum(sg["ess_chain"][~sg["diverged"]])) / sgld_labels.size
        scale = min(1.0, max(scale, 1e-12))
        g2 = g_test(counts_sgd.astype(float), counts_sgld * scale, cats)
        gtest_ess = {"statistic": g2.statistic, "pvalue": g2.pvalue, "dof": g2.dof, "scale": scale}

    # -- H4: SGD concentrates on low-LLC solutions
    fin_llc = np.isfinite(llc)
    groups_llc = [llc[(labels == c) & fin_llc] for c in cats]
    groups_llc = [g for g in groups_llc if g.size >= 2]
    if len(groups_llc) >= 2:
        kw = kruskal(*groups_llc)
        kw_res = {"statistic": float(kw.statistic), "pvalue": float(kw.pvalue), "k": len(groups_llc)}
    else:
        kw_res = {"statistic": float("nan"), "pvalue": float("nan"), "k": len(groups_llc)}
    rho = _spearman_mass_llc(pos_all, K, llc, np.arange(N))
    rho_boot = np.array([_spearman_mass_llc(pos_all, K, llc, rng.integers(0, N, N)) for _ in range(n_boot)])
    rb = rho_boot[np.isfinite(rho_boot)]
    rho_ci = percentile_interval(rb, level) if rb.size >= 10 else (float("nan"), float("nan"))
    # bootstrap p-value of H0: rho >= 0 (one-sided, the claim is rho < 0)
    rho_p = float((np.sum(rb >= 0) + 1) / (rb.size + 1)) if rb.size else float("nan")
    n_clusters_with_llc = int(sum(((labels == c) & fin_llc).any() for c in cats))
    if not np.isfinite(rho):
        h4_verdict = (f"untestable at cluster level: only {n_clusters_with_llc} categories with runs "
                      f"(a rank correlation needs >= 3)")
    elif np.isfinite(rho_ci[1]) and rho_ci[1] < 0:
        h4_verdict = "supported: mass decreases with cluster λ (upper bound < 0)"
    elif rho < 0:
        h4_verdict = "not supported: ρ < 0 but its interval includes 0"
    else:
        h4_verdict = "not supported: ρ ≥ 0 (more mass does not go to lower-λ clusters)"
    # run-level view: is λ̂ lower in the most populated cluster?
    big = int(np.argmax(counts_sgd))
    lam_big = llc[(labels == cats[big]) & fin_llc]
    lam_rest = llc[(labels != cats[big]) & fin_llc]

    # -- H5 verdicts
    def _h5(ref: str, metric: str = "js"):
        row = next((r for r in table2 if r["reference"] == ref and r["target"] == "tempered SGD"), None)
        if row is None:
            return None, "untestable: no tempered distribution or no reference"
        mm = row["metrics"]
        # an infinite upper bound fails the margin; an undefined (NaN) one cannot pass it either
        eq_all = all(mm[k]["equivalent"] for k in ("kl_smoothed", "js", "w1") if k in mm)
        if ref == "SGLD" and sgld_restates_seeding:
            return row, ("inconclusive: no SGLD sample left its seed's cluster, so P_SGLD only restates "
                         "the seeding" + (" (divergences would pass the margin)" if eq_all else
                                          "; divergences also exceed the margin"))
        if eq_all:
            return row, f"supported: all upper {level:.0%} bounds (smoothed KL, JS, W1) < margin {margin}"
        return row, f"not supported: an upper {level:.0%} bound exceeds margin {margin}"

    h5_sgld_row, h5_sgld = _h5("SGLD")
    h5_fe_row, h5_fe = _h5("free energy")

    hypotheses = []
    hypotheses.append({
        "id": "H4", "claim": "SGD mass concentrates on low-λ clusters",
        "statistic": "Spearman ρ(P_sgd(c), mean λ̂_c)", "value": rho, "ci": list(rho_ci),
        "pvalue": rho_p, "p_label": "bootstrap, one-sided H0: ρ ≥ 0", "verdict": h4_verdict,
    })
    hypotheses.append({
        "id": "H4", "claim": "λ̂ differs between clusters",
        "statistic": "Kruskal–Wallis H (λ̂ by cluster)", "value": kw_res["statistic"], "ci": [None, None],
        "pvalue": kw_res["pvalue"], "p_label": "asymptotic χ²",
        "verdict": ("untestable (fewer than 2 clusters with ≥ 2 runs)" if not np.isfinite(kw_res["pvalue"]) else
                    ("λ̂ differs between clusters (p < 0.05)" if kw_res["pvalue"] < 0.05 else
                     "no detectable λ̂ difference between clusters (p ≥ 0.05)")),
    })
    for ref, row, verdict in (("SGLD", h5_sgld_row, h5_sgld), ("free energy", h5_fe_row, h5_fe)):
        js = row["metrics"]["js"] if row else None
        hypotheses.append({
            "id": "H5", "claim": f"tempered SGD ≈ {ref} posterior",
            "statistic": f"JS({ref} ‖ tempered SGD) [nats]", "value": js["estimate"] if js else float("nan"),
            "ci": js["ci"] if js else [None, None],
            "pvalue": (gtest["pvalue"] if (ref == "SGLD" and gtest) else None),
            "p_label": ("G-test SGD vs SGLD counts (homogeneity)" if ref == "SGLD" and gtest else "—"),
            "verdict": verdict,
        })

    # -- per-cluster table
    cluster_rows = []
    for i, c in enumerate(cats):
        sel = labels == c
        cluster_rows.append({
            "category": c, "name": names[i], "n": int(sel.sum()), "P_sgd": float(counts_sgd[i] / N),
            "L_c": float(props.loss[i]), "acc_c": float(np.nanmean(tr["final_train_acc"][used][sel])) if sel.any() else float("nan"),
            "llc_c": float(props.llc[i]),
            "llc_sd": float(np.nanstd(llc[sel], ddof=1)) if sel.sum() > 1 else float("nan"),
            "n_llc_negative": int((llc[sel] < 0).sum()),
            "alpha_c": float(props.alpha[i]), "d_walk_c": float(props.d_walk[i]),
            "log_D_xi_star": float(temp_info["log_D"][i]), "m_D_xi_star": float(temp_info["exponent"][i]),
            "P_temp": float(p_temp[i]), "P_sgld": float(p_sgld[i]), "P_F": float(p_f[i]),
            "F_c": float(fe.free_energy[i]), "n_sgld": int(counts_sgld[i]),
        })

    return {
        "alpha": alpha_all, "alpha_whole": alpha_whole_all,
        "xi_grid": grid, "xi_kl": sw.kl, "xi_kl_heldout": kl_heldout, "xi_boot": sw.boot_xi_star,
        "xi": {"xi_star": xi_star, "kl_min": sw.kl_min, "ci": list(sw.xi_star_ci), "xi_A": sw.xi_A,
               "kl_B_at_xi_A": sw.kl_B_at_xi_A, "xi_B": sw.xi_B, "kl_A_at_xi_B": sw.kl_A_at_xi_B,
               "kl_split": sw.kl_split, "at_boundary": sw.at_boundary, "notes": list(sw.notes),
               "lr": lr, "n_boot": tc.n_boot_xi},
        "tempering": {"m": m, "xi_star": xi_star, "p_temp": p_temp, "collapsed": temp_info["collapsed"],
                      "n_effective": temp_info["n_effective"], "notes": temp_info["notes"]},
        "free_energy": {"p_f": p_f, "F": fe.free_energy, "notes": list(fe.notes)},
        "distributions": {"categories": cats, "names": names, "P_sgd": counts_sgd / N, "P_sgld": p_sgld,
                          "P_F": p_f, "P_temp": p_temp, "counts_sgd": counts_sgd, "counts_sgld": counts_sgld},
        "clusters": cluster_rows,
        "table2": table2,
        "gtest": gtest, "gtest_ess": gtest_ess,
        "h4": {"spearman": rho, "spearman_ci": list(rho_ci), "spearman_p": rho_p, "kruskal": kw_res,
               "n_boot_finite": int(rb.size), "largest_cluster": names[big],
               "llc_largest_median": float(np.median(lam_big)) if lam_big.size else float("nan"),
               "llc_rest_median": float(np.median(lam_rest)) if lam_rest.size else float("nan")},
        "sgld_mixing": {"samples_left_seed_cluster": left_total, "chains_that_moved": chains_moved,
                        "restates_seeding": sgld_restates_seeding},
        "hypotheses": hypotheses,
        "notes": notes,
    }


def _no_run_left(ctx: StageContext):
    """A reason to skip the later stages: fewer than 3 usable runs (clustering needs 3)."""
    d = ctx["train"]["divergence"]
    if d["all_diverged"]:
        return f"all {d['n_runs']} seeds diverged"
    n_used = int(np.sum(ctx["train"]["used"]))
    if n_used < 3:
        return (f"only {n_used} of {d['n_runs']} runs are usable ({d['n_diverged']} diverged); "
                f"clustering solutions needs at least 3")
    return None


STAGES = [
    Stage("train", stage_train, "train the SGD ensemble"),
    Stage("llc", stage_llc, "estimate λ̂ of every solution", skip=_no_run_left),
    Stage("cluster", stage_cluster, "cluster solutions in function space", skip=_no_run_left),
    Stage("sgld", stage_sgld, "posterior SGLD from the best solutions", skip=_no_run_left),
    Stage("analysis", stage_analysis, "ξ sweep, tempering, Table 2, verdicts", skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.pc_report import write_report as _write

    return _write(ctx)
