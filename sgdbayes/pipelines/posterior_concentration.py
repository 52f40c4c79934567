"""posterior_concentration: paper §4.2 / App G.4 / Figs 3-4 / Table 2 (docs/methods.md).

Stages (each cached atomically by :mod:`sgdbayes.runner`):

1. ``train``    batched SGD ensemble (engine), loss curves, displacement, convergence filter
2. ``llc``      λ̂ of every final solution (batched localized SGLD, Table 3 settings)
3. ``cluster``  function-space clustering of the kept solutions (probe predictions, PCA, HDBSCAN,
                structure report, GMM fallback)
4. ``sgld``     temperature-1 posterior SGLD from the lowest-loss/lowest-λ solutions; samples
                assigned to the clusters; mixing diagnostics
5. ``reference`` SGLD run to a convergence target and (optionally) HMC, from the sgld starts plus
                one per cluster (:mod:`.posterior_concentration_reference`)
6. ``analysis`` late-window α per run, ξ sweep (+ split sample, bootstrap ξ*), tempered SGD,
                free-energy reference, Table 2 with bootstrap intervals, G-test, H4/H5 verdicts

The report (``write_report``) is rendered from ``results.json`` by
:mod:`sgdbayes.reporting.posterior_concentration`. Every statistic is a function of
:mod:`sgdbayes.stats` (H4: ``test_h4``; H5: ``test_h5``, conditioned on the SGLD reference having
converged, ``analysis.reference_max_rhat`` / ``reference_min_ess``, and once more against each
``[reference]`` reference); this module wires them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..runner.orchestrate import Stage, StageContext
from ..runner.shards import Partial, Sharding, ShardTask
from ..stats.concentration import convergence_filter
from ._ensemble_arrays import ENSEMBLE_ROWS, divergence_summary, ensemble_arrays, single_cell, train_shard_ensemble
from .posterior_concentration_config import (
    AnalysisConfig,
    ClusterConfig,
    ConvergenceConfig,
    PosteriorConcentrationConfig,
    ReportConfig,
    SGLDStarts,
    TemperingConfig,
)
from .posterior_concentration_analysis import stage_analysis
from .posterior_concentration_common import _clusterer, _dataset, _prob1, _spec, select_sgld_starts
from .posterior_concentration_reference import stage_reference

__all__ = ["CONFIG", "PosteriorConcentrationConfig", "ConvergenceConfig", "ClusterConfig", "SGLDStarts",
           "TemperingConfig", "AnalysisConfig", "ReportConfig", "STAGES", "write_report", "select_sgld_starts"]


CONFIG = PosteriorConcentrationConfig


# --------------------------------------------------------------------------- stage 1: train

def train_shard(task: ShardTask) -> Partial:
    """Some seeds of the ensemble as one batched computation (the data is rebuilt from the config)."""
    res = train_shard_ensemble(task)
    out = {**ensemble_arrays(res, displacement_dtype=np.float32),
           "w_final": res.w_final.detach().cpu().numpy().astype(np.float32),
           "engine_meta": {k: v for k, v in (res.meta or {}).items() if isinstance(v, (int, float, str, bool))}}
    return Partial.split(out, rows=(*ENSEMBLE_ROWS, "w_final"), first=("engine_meta",))


def train_merge(ctx: StageContext, cells: list[Partial]) -> dict[str, Any]:
    """The plateau filter over the merged ensemble (it needs every run: convergence.min_runs)."""
    c = ctx.config
    arrays = cells[0].flat()
    engine_meta = arrays.pop("engine_meta")
    K = int(np.size(arrays["seeds"]))
    plateau = convergence_filter(arrays["steps"], arrays["train_loss_curve"], c.convergence.window,
                                 c.convergence.rel_tol)
    rel, passed = plateau.rel_drop, plateau.passed
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
            f"train acc {np.mean(arrays['final_train_acc']):.3f}; {int(diverged.sum())} diverged")
    return {
        **arrays,
        "divergence": divergence_summary(diverged, arrays["diverged_step"], [f"seed {s}" for s in arrays["seeds"]]),
        "rel_drop": rel,
        "passed": passed,
        "used": used,
        "filter_status": filter_status,
        "engine_meta": engine_meta,
    }


# --------------------------------------------------------------------------- stage 2: llc

def _scatter(values: np.ndarray, at: np.ndarray, K: int, fill) -> np.ndarray:
    """``values`` (rows of the estimated runs) placed at rows ``at`` of a K-row array filled with ``fill``."""
    values = np.asarray(values)
    out = np.full((K, *values.shape[1:]), fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
    out[at] = values
    return out


def llc_cells(ctx: StageContext):
    """One cell: the runs that did not diverge (a diverged run's frozen weights have no finite loss)."""
    tr = ctx["train"]
    return [(0, tr["seeds"][~np.asarray(tr["diverged"], bool)])]


def llc_inputs(ctx: StageContext, cell: int, seeds: tuple[int, ...]) -> dict:
    """The final weights of the shard's runs."""
    tr = ctx["train"]
    row = {int(s): i for i, s in enumerate(tr["seeds"])}
    return {"w_final": tr["w_final"][[row[s] for s in seeds]]}


LLC_ROWS = ("llc", "llc_std", "llc_per_chain", "trend_z", "trend_rel", "trend_flag", "init_loss", "all_diverged",
            "n_diverged", "loss_traces")


def llc_shard(task: ShardTask) -> Partial:
    """λ̂ of some runs as one batched computation; chains are keyed by the run's seed, so a run's
    estimate does not depend on the other runs of its shard."""
    from ..sampling import estimate_llc

    c = task.config
    data = c.data.load("cpu")
    spec = c.model.spec(data.n_features, data.n_classes)
    w = torch.from_numpy(np.array(task.inputs["w_final"])).to(task.device)  # a copy: Ray hands out read-only arrays
    r = estimate_llc(w, (data.x_train.to(task.device), data.y_train.to(task.device)), spec=spec, config=c.llc,
                     model_ids=list(task.seeds), progress=task.progress)
    out = {k: getattr(r, k) for k in LLC_ROWS}
    out.update(nbeta=float(r.nbeta), nbeta_rule=r.config.nbeta_rule(), trend_z_threshold=float(r.config.trend_z),
               settings={k: v for k, v in r.settings().items() if isinstance(v, (int, float, str, bool, type(None)))},
               wall_s=float(r.wall_s))
    return Partial.split(out, rows=LLC_ROWS, totals=("wall_s",))


def llc_merge(ctx: StageContext, cells: list[Partial]) -> dict[str, Any]:
    """λ̂ of every run that did not diverge, placed among all K runs (a diverged run's λ̂ is NaN)."""
    tr, r = ctx["train"], cells[0].flat()
    K = int(np.size(tr["seeds"]))
    ok = np.flatnonzero(~np.asarray(tr["diverged"], bool))
    negative = int(np.sum(np.isfinite(r["llc"]) & (r["llc"] < 0)))
    ctx.log(f"    nβ = {r['nbeta']:.4g}; λ̂ mean {np.nanmean(r['llc']):.3g}; {negative} negative; "
            f"{int(r['trend_flag'].sum())} trend-flagged; {K - ok.size} diverged runs skipped; "
            f"{r['wall_s']:.1f} s")
    return {
        "llc": _scatter(r["llc"].astype(float), ok, K, np.nan),
        "llc_std": _scatter(r["llc_std"].astype(float), ok, K, np.nan),
        "llc_per_chain": _scatter(r["llc_per_chain"].astype(float), ok, K, np.nan),
        "trend_z": _scatter(r["trend_z"].astype(float), ok, K, np.nan),
        "trend_rel": _scatter(r["trend_rel"].astype(float), ok, K, np.nan),
        "trend_flag": _scatter(r["trend_flag"], ok, K, False),
        "init_loss": _scatter(r["init_loss"].astype(float), ok, K, np.nan),
        "all_diverged": _scatter(r["all_diverged"], ok, K, False),
        "n_diverged_chains": _scatter(r["n_diverged"].astype(np.int64), ok, K, 0),
        "loss_trace_mean": np.nanmean(r["loss_traces"], axis=(0, 1)).astype(float),
        "nbeta": r["nbeta"],
        "nbeta_rule": r["nbeta_rule"],
        "settings": r["settings"],
        "trend_z_threshold": r["trend_z_threshold"],
    }


# --------------------------------------------------------------------------- stage 3: cluster

def _probe(ctx: StageContext, data) -> np.ndarray:
    from ..stats.cluster import probe_inputs

    c = ctx.config.cluster
    return probe_inputs(data.x_train.cpu().numpy(), grid_size=c.grid, margin=c.grid_margin).astype(np.float32)


def _input_plane(ctx: StageContext, data, probs: np.ndarray, labels: np.ndarray, categories) -> dict[str, Any]:
    """What the input-plane figure draws, stored here so the report never reloads the data: the grid
    part of the probe, each cluster's mean P(y=1) on it (NaN without members), up to 8 members'
    P(y=1) (NaN padded; chosen with a fixed seed), and the training points."""
    g, n = ctx.config.cluster.grid, ctx.config.data.n
    grid = _probe(ctx, data)[n:n + g * g]
    on_grid = probs[:, n:n + g * g]
    K = len(categories)
    mean_prob = np.full((K, g, g), np.nan)
    members = np.full((K, 8, g, g), np.nan)
    rng = np.random.default_rng(0)
    for i, c in enumerate(categories):
        sel = np.flatnonzero(labels == c)
        if sel.size == 0:
            continue
        mean_prob[i] = on_grid[sel].mean(0).reshape(g, g)
        for j, k in enumerate(rng.choice(sel, size=min(8, sel.size), replace=False)):
            members[i, j] = on_grid[k].reshape(g, g)
    return {"plane_x": grid[:, 0].reshape(g, g), "plane_y": grid[:, 1].reshape(g, g), "plane_mean_prob": mean_prob,
            "plane_member_probs": members, "x_train": data.x_train.cpu().numpy(),
            "y_train": data.y_train.cpu().numpy()}


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
    labels = np.asarray(cl.labels_, dtype=np.int64)
    fallback_bic = cl.fallback_bic_ if cl.partition_kind_ == "gmm_fallback" else {}
    return {
        "used_index": used.astype(np.int64),
        "probe": probe,
        "probs": probs.astype(np.float32),
        "labels": labels,
        "hdbscan_labels": np.asarray(cl.hdbscan_labels_, dtype=np.int64),
        "categories": [int(c) for c in cl.categories_],
        "category_names": list(cl.category_names_),
        "partition_kind": cl.partition_kind_,
        "partition_label": cl.partition_label_,
        "embedding": np.asarray(cl.embedding_, dtype=float),
        "centroids": np.asarray(cl.centroids_, dtype=float),
        "structure": st,
        "fallback_bic": {str(k): float(v) for k, v in fallback_bic.items()},
        **_input_plane(ctx, data, probs, labels, cl.categories_),
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
    Stage("train", description="train the SGD ensemble", shard=Sharding(single_cell, train_shard, train_merge)),
    Stage("llc", description="estimate λ̂ of every solution", skip=_no_run_left,
          shard=Sharding(llc_cells, llc_shard, llc_merge, inputs=llc_inputs)),
    Stage("cluster", stage_cluster, "cluster solutions in function space", skip=_no_run_left),
    Stage("sgld", stage_sgld, "posterior SGLD from the best solutions", skip=_no_run_left),
    Stage("reference", stage_reference, "posterior references: SGLD to a convergence target, HMC",
          skip=_no_run_left),
    Stage("analysis", stage_analysis, "ξ sweep, tempering, Table 2, verdicts", skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.posterior_concentration import write_report as write

    return write(ctx)
