"""Stage ``reference`` of the posterior_concentration study: the posterior references H5 is also
checked against (issue 16; docs/estimates.md). ``[reference]`` (:class:`ReferenceConfig`) turns on

* SGLD run to a convergence target (:func:`sgdbayes.sampling.converge.sample_posterior_until`, the
  ``[sgld]`` kernel, the cluster assignment in the criterion), and
* Metropolis-adjusted HMC (:func:`sgdbayes.sampling.hmc.sample_hmc`, full batch),

both started from the sgld stage's starts plus, with ``overdispersed``, the best run of every
cluster (so the chains start in different basins). Every sample is assigned to the SGD clusters.
Each reference is cached as a plain record (no weights): whether it converged, why it stopped,
R̂, ESS, acceptance, divergences, compute, and the samples' cluster labels (-2 = diverged chain).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..runner.orchestrate import StageContext

__all__ = ["stage_reference", "reference_starts"]


def reference_starts(sg: dict, cu: dict, tr: dict, ll: dict, overdispersed: bool) -> np.ndarray:
    """Indices into all runs: the sgld stage's starts, then (``overdispersed``) the best run of every
    cluster not already among them (:func:`select_sgld_starts`, rule ``per_cluster``)."""
    from .posterior_concentration_common import select_sgld_starts

    starts = [int(i) for i in sg["start_index"]]
    if overdispersed:
        used = cu["used_index"]
        pick, _ = select_sgld_starts(tr["final_train_loss"][used], ll["llc"][used], cu["labels"], 0, "per_cluster",
                                     list(cu["categories"]))
        starts += [int(used[p]) for p in pick if int(used[p]) not in starts]
    return np.asarray(starts, dtype=np.int64)


def _assigner(ctx: StageContext, spec):
    """``assign(weights [C, B, P]) -> labels [C, B]``: the SGD clusters of each sample (non-finite
    weights, i.e. a diverged chain, get -2)."""
    from .posterior_concentration_common import _clusterer, _prob1

    cu = ctx["cluster"]
    cl = _clusterer(ctx).fit(cu["probs"][:, :, None])
    if not np.array_equal(cl.labels_, cu["labels"]):
        raise RuntimeError("refitted clusterer does not reproduce the cached labels")
    probe = torch.as_tensor(cu["probe"])

    def assign(w: torch.Tensor) -> np.ndarray:
        C, B, P = w.shape
        flat = w.reshape(C * B, P).detach().cpu().float()
        ok = torch.isfinite(flat).all(1).numpy()
        out = np.full(C * B, -2, dtype=np.int64)
        if ok.any():
            pr = _prob1(spec, flat[ok], probe)
            out[ok] = cl.predict(pr[:, :, None])
        return out.reshape(C, B)

    return assign


def _record(name: str, sampler: str, converged: bool, stop_reason: str, rhat: float, ess: float, labels, seed_labels,
            **extra) -> dict[str, Any]:
    """The cached summary of one reference (``extra``: sampler-specific numbers)."""
    labels = np.asarray(labels, dtype=np.int64)
    left = ((labels != seed_labels[:, None]) & (labels != -2)).sum(1)
    return {"name": name, "sampler": sampler, "converged": bool(converged), "stop_reason": stop_reason,
            "rhat": float(rhat), "ess": float(ess), "labels": labels, "left_seed_cluster": left.astype(np.int64),
            "n_chains": int(labels.shape[0]), "samples_per_chain": int(labels.shape[1]), **extra}


def _sgld_target(ctx, spec, data, w0, ids, groups, assign) -> dict[str, Any]:
    from ..sampling.converge import sample_posterior_until

    rc = ctx.config.reference
    r = sample_posterior_until(w0, spec=spec, data=data, config=replace(ctx.config.sgld, keep_samples=False),
                               target=rc.target(), assign=assign, start_ids=ids, groups=groups, progress=False)
    labels = np.where(np.asarray(r.diverged, bool)[:, None], -2, r.labels)
    converged = r.stop_reason.startswith("converged")
    ctx.log(f"    SGLD to target: {r.stop_reason}; {r.wall_s:.1f} s")
    return _record("SGLD to target", "SGLD", converged, r.stop_reason, r.rhat, r.ess, labels, np.asarray(groups),
                   rhat_labels=float(r.rhat_labels), acceptance=math.nan, divergences=int(np.sum(r.diverged)),
                   divergences_unit="diverged chains", wall_s=float(r.wall_s),
                   gradient_evaluations=int(r.gradient_evaluations), gradient_unit="minibatch gradients",
                   history={k: list(v) for k, v in r.history.to_dict("list").items()},
                   weight_decay=float(ctx.config.sgld.weight_decay), nbeta=float(r.nbeta))


def _hmc(ctx, spec, data, w0, ids, groups, assign) -> dict[str, Any]:
    from ..sampling.diagnostics import categorical_rhat
    from ..sampling.hmc import sample_hmc

    rc = ctx.config.reference
    k = rc.hmc_chains_per_start
    w = w0.repeat_interleave(k, 0)
    hids = [int(i) * k + j for i in ids for j in range(k)]  # distinct generators for a start's chains
    g = np.repeat(np.asarray(groups), k)
    r = sample_hmc(w, spec=spec, data=data, config=rc.hmc_config(ctx.config.sgld), start_ids=hids, groups=g,
                   progress=False)
    labels = assign(r.samples)
    ok = labels[(labels != -2).all(1)]
    rhat_labels = categorical_rhat(ok) if ok.size else math.nan
    # as for SGLD: the loss and the cluster assignment must both be on target
    converged = r.converged(rc.max_rhat, rc.min_ess) and rhat_labels <= rc.max_rhat
    why = (f"{'converged' if converged else 'not converged'} after {rc.hmc_num_warmup} warm-up + "
           f"{rc.hmc_num_samples} transitions per chain (R̂(loss) {r.rhat:.4g}, ESS {r.ess:.4g}, R̂(cluster "
           f"assignment) {rhat_labels:.4g}; targets R̂ ≤ {rc.max_rhat:g}, ESS ≥ {rc.min_ess:g})")
    if r.norm_traces is not None:  # flat or weakly constrained directions drift while the loss looks settled
        k = max(1, r.norm_traces.shape[1] // 10)
        why += (f"; mean ‖w‖ {r.norm_traces[:, :k].mean():.4g} → {r.norm_traces[:, -k:].mean():.4g} (first → last "
                f"10 % of draws), R̂(‖w‖) {r.rhat_norm:.3g}")
    ctx.log(f"    HMC: {why}; acceptance {r.acceptance_rate:.3f}, {r.n_divergent} divergent; {r.wall_s:.1f} s")
    return _record("HMC", "HMC", converged, why, r.rhat, r.ess, labels, g, rhat_labels=float(rhat_labels),
                   acceptance=float(r.acceptance_rate), divergences=int(r.n_divergent),
                   divergences_unit="divergent transitions", wall_s=float(r.wall_s),
                   gradient_evaluations=int(r.gradient_evaluations), gradient_unit="full-data gradients",
                   rhat_norm=float(r.rhat_norm), step_size=float(np.median(r.step_size)),
                   weight_decay=float(r.config.weight_decay), nbeta=float(r.nbeta))


def stage_reference(ctx: StageContext) -> dict[str, Any]:
    """The references ``[reference]`` turns on, each a record (module docstring)."""
    from .posterior_concentration_common import _dataset, _spec

    rc = ctx.config.reference
    tr, ll, cu, sg = ctx["train"], ctx["llc"], ctx["cluster"], ctx["sgld"]
    if not (rc.sgld_target or rc.hmc):
        return {"starts": np.zeros(0, np.int64), "references": []}
    data = _dataset(ctx)
    spec = _spec(ctx, data)
    starts = reference_starts(sg, cu, tr, ll, rc.overdispersed)
    row = {int(u): i for i, u in enumerate(cu["used_index"])}
    groups = [int(cu["labels"][row[int(s)]]) for s in starts]
    ids = [int(s) for s in tr["seeds"][starts]]
    w0 = torch.as_tensor(tr["w_final"][starts]).to(ctx.device)
    xy = (data.x_train.to(ctx.device), data.y_train.to(ctx.device))
    assign = _assigner(ctx, spec)
    refs = []
    if rc.sgld_target:
        refs.append(_sgld_target(ctx, spec, xy, w0, ids, groups, assign))
    if rc.hmc:
        refs.append(_hmc(ctx, spec, xy, w0, ids, groups, assign))
    return {"starts": starts, "start_seeds": np.asarray(ids, np.int64), "references": refs}
