"""Posterior SGLD run to a convergence target, in blocks (docs/estimates.md#sgld-reference-run-to-a-target).

:func:`sample_posterior_until` runs the chains of :func:`sgdbayes.sampling.sample_posterior` in
blocks of ``target.block_samples`` samples. After each block it computes, over the valid chains
and the samples *kept* (the last ``1 − discard`` of those drawn so far: the first part of a run
counts as burn-in, growing with the run, as in Gelman & Rubin 1992), the pooled split-R̂ and bulk
ESS of the loss and, when ``assign`` maps samples to clusters, the split-R̂ of the cluster
assignment (:func:`sgdbayes.sampling.diagnostics.categorical_rhat`). It stops when

* R̂(loss) ≤ ``max_rhat``, ESS(loss) ≥ ``min_ess`` and R̂(assignment) ≤ ``max_rhat``
  (*converged*), or
* another block would exceed ``max_samples`` samples per chain (*budget spent*),

and says which, with the numbers (``stop_reason``, ``history``). The chains are one batched
computation; a block continues the previous one exactly (same weights, same per-chain noise and
minibatch streams), so chain c's draws do not depend on the block size, on how many blocks ran
or on the other chains. (*When* the run stops does depend on all chains.)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._validation import check_float, check_int
from ..stats.results import decode, register
from .chains import DrawSchedule, FullLossTrace, WeightTrace, run_chains
from .diagnostics import categorical_rhat, ess, split_rhat
from .model_potential import starting_potential
from .posterior import PosteriorConfig, PosteriorResult, posterior_result
from .streams import ChainStreams, chain_seeds

__all__ = ["ConvergenceTarget", "sample_posterior_until"]


@register
@dataclass(frozen=True)
class ConvergenceTarget:
    """When a run to a target stops (module docstring): ``max_rhat``, ``min_ess``, samples per
    chain per block (``block_samples``), the budget (``max_samples`` per chain), and the
    fraction ``discard`` of the samples drawn so far that is treated as burn-in."""

    max_rhat: float = 1.01
    min_ess: float = 400.0
    block_samples: int = 250
    max_samples: int = 4000
    discard: float = 0.5

    def __post_init__(self):
        check_float("max_rhat", self.max_rhat, 1.0, strict_min=True)
        check_float("min_ess", self.min_ess, 0.0)
        object.__setattr__(self, "block_samples", check_int("block_samples", self.block_samples, 4))
        object.__setattr__(self, "max_samples", check_int("max_samples", self.max_samples, self.block_samples))
        check_float("discard", self.discard, 0.0, 1.0, strict_max=True)

    @classmethod
    def from_dict(cls, d) -> "ConvergenceTarget":
        fields = d["fields"] if "fields" in d else d
        return cls(**{k: decode(v) for k, v in fields.items()})

    def kept(self, total: int) -> int:
        """Index of the first kept sample when ``total`` have been drawn."""
        return int(math.floor(self.discard * total))


def _diagnose(traces: np.ndarray, labels: Optional[np.ndarray], valid: np.ndarray) -> dict:
    tr = traces[valid]
    out = {"rhat": float(split_rhat(tr)) if tr.size else math.nan, "ess": float(ess(tr)) if tr.size else math.nan,
           "rhat_labels": math.nan}
    if labels is not None and valid.any():
        out["rhat_labels"] = categorical_rhat(labels[valid])
    return out


def _verdict(d: dict, target: ConvergenceTarget, with_labels: bool) -> bool:
    ok = d["rhat"] <= target.max_rhat and d["ess"] >= target.min_ess
    return bool(ok and (not with_labels or d["rhat_labels"] <= target.max_rhat))


def _reason(d: dict, target: ConvergenceTarget, total: int, converged: bool, with_labels: bool) -> str:
    lab = f", R̂(cluster assignment) {d['rhat_labels']:.4g}" if with_labels else ""
    nums = f"R̂(loss) {d['rhat']:.4g}, ESS {d['ess']:.4g}{lab}"
    if converged:
        return (f"converged after {total} samples per chain ({nums}; targets R̂ ≤ {target.max_rhat:g}, "
                f"ESS ≥ {target.min_ess:g})")
    return (f"budget spent: {total} samples per chain (max_samples = {target.max_samples}) without reaching "
            f"R̂ ≤ {target.max_rhat:g} and ESS ≥ {target.min_ess:g} ({nums})")


def sample_posterior_until(w_start: Tensor, potential=None, *, spec=None, data=None, state=None,
                           config: Optional[PosteriorConfig] = None, target: Optional[ConvergenceTarget] = None,
                           assign: Optional[Callable[[Tensor], np.ndarray]] = None,
                           start_ids: Optional[Sequence[int]] = None, groups: Optional[Sequence] = None,
                           progress: bool = True) -> PosteriorResult:
    """Posterior SGLD chains from the rows of ``w_start [S, P]`` run in blocks until ``target``
    is met or its budget is spent (module docstring).

    ``config`` gives the kernel (step size, batch, temperature, weight decay), the burn-in
    steps before the first block, the steps between samples, the loss trace (``record``) and
    whether the kept samples' weights are returned (``keep_samples``); its ``num_samples`` is
    not used. ``assign(weights [chains, block, P]) -> labels [chains, block]`` (e.g. the SGD
    clusters) adds the cluster assignment to the criterion. Other arguments as
    :func:`sgdbayes.sampling.sample_posterior` (one chain per start here).
    """
    config = config if config is not None else PosteriorConfig()
    target = target if target is not None else ConvergenceTarget()
    if not isinstance(config, PosteriorConfig) or not isinstance(target, ConvergenceTarget):
        raise ValueError("config must be a PosteriorConfig and target a ConvergenceTarget")
    if config.chains_per_start != 1:
        raise ValueError(f"sample_posterior_until runs one chain per start: config.chains_per_start must be 1, "
                         f"got {config.chains_per_start} (repeat rows of w_start for more chains)")
    pot = starting_potential(w_start, potential, spec, data, state)
    S, P = w_start.shape
    start_ids = list(range(S)) if start_ids is None else [int(s) for s in start_ids]
    groups = np.asarray(list(groups) if groups is not None else [0] * S)
    if len(start_ids) != S or groups.shape != (S,):
        raise ValueError(f"start_ids and groups need one entry per start ({S})")
    n = int(pot.n)
    kernel = config.kernel(n)
    streams = ChainStreams(chain_seeds(config.seed, start_ids, 1), n=n, batch_size=config.batch_size, n_params=P,
                           device=w_start.device, dtype=w_start.dtype)
    blocks = _run_blocks(pot, w_start.detach(), kernel, config, target, streams, assign, progress)
    traces = np.concatenate(blocks["traces"], axis=1)
    labels = np.concatenate(blocks["labels"], axis=1) if assign is not None else None
    k0 = target.kept(traces.shape[1])
    samples = torch.cat(blocks["samples"], dim=1)[:, k0:] if config.keep_samples else None
    return posterior_result(traces[:, k0:], blocks["diverged"], samples, np.arange(S), start_ids, groups, config,
                            kernel.nbeta, n, blocks["wall_s"], pot.mode, n_steps=blocks["n_steps"],
                            labels=None if labels is None else labels[:, k0:], rhat_labels=blocks["last"]["rhat_labels"],
                            stop_reason=blocks["reason"], history=pd.DataFrame(blocks["history"]), kept_from=k0)


def _run_blocks(pot, w0: Tensor, kernel, config: PosteriorConfig, target: ConvergenceTarget, streams, assign,
                progress) -> dict:
    t0 = time.perf_counter()
    w, div, dstep, step = w0, None, None, 0
    out = {"traces": [], "labels": [], "samples": [], "history": []}
    need_w = config.keep_samples or assign is not None
    total = 0
    while True:
        sched = DrawSchedule(target.block_samples, config.num_burnin_steps if step == 0 else 0,
                             config.num_steps_bw_samples)
        obs = ([WeightTrace()] if need_w else []) + ([FullLossTrace()] if config.record == "full" else [])
        run = run_chains(pot, w, kernel, sched, streams, observers=obs, centers=w0, diverged=div, diverged_step=dstep,
                         first_step=step, progress=progress, desc=f"posterior SGLD block {len(out['history']) + 1}")
        w, div, dstep, step = run.w_last, run.diverged, run.diverged_step, run.end_step
        out["traces"].append((run.full_losses if config.record == "full" else run.losses).cpu().numpy().astype(np.float64))
        if assign is not None:
            out["labels"].append(np.asarray(assign(run.weights), dtype=np.int64))
        if config.keep_samples:
            out["samples"].append(run.weights)
        total += target.block_samples
        k0 = target.kept(total)
        valid = ~div.cpu().numpy()
        traces = np.concatenate(out["traces"], axis=1)[:, k0:]
        labels = np.concatenate(out["labels"], axis=1)[:, k0:] if assign is not None else None
        d = _diagnose(traces, labels, valid)
        done = _verdict(d, target, assign is not None)
        out["history"].append({"block": len(out["history"]) + 1, "samples": total, "kept_from": k0, **d,
                               "n_valid": int(valid.sum()), "wall_s": time.perf_counter() - t0})
        if done or total + target.block_samples > target.max_samples:
            out.update(reason=_reason(d, target, total, done, assign is not None), last=d, diverged=~valid,
                       n_steps=step, wall_s=time.perf_counter() - t0, converged=done)
            return out
