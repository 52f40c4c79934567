"""Temperature-1 posterior SGLD (Welling & Teh 2011) from given start weights (docs/methods.md)::

    Δw = −(ε/2) [ n ∇L_B(w) + ω w ] + N(0, ε I)

on the full training loss (minibatch gradients of the mean loss L_B scaled by the
training-set size n, i.e. nβ = n / T with temperature T = 1), no localization. ω is an
optional Gaussian prior precision (default 0: flat prior, as in the paper). Paper settings:
1000 samples, 200 burn-in steps, 10 steps between samples, ε = 1e-5, batch 128.

Samples are the weights at the draw steps of :class:`~sgdbayes.sampling.chains.DrawSchedule`
(the weights whose loss is recorded), returned stacked as ``[chains, samples, P]`` for
clustering in function space. The loss trace is the *full-data* loss at each sample
(``record="full"``, default) or the minibatch loss (``"batch"``, cheaper). Diagnostics per
chain and per group of chains: split-R̂ (rank-normalized, Vehtari et al. 2021) and ESS
(Geyer's initial positive sequence) of the loss trace.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._validation import check_choice, check_float, check_int
from ..stats.results import Result, encode, estimate_row, register
from .chains import DrawSchedule, FullLossTrace, WeightTrace, run_chains
from .diagnostics import ess, split_rhat
from .model_potential import starting_potential
from .sgld import SGLDConfig
from .streams import ChainStreams, chain_seeds

__all__ = ["PosteriorConfig", "PosteriorResult", "sample_posterior", "posterior_result"]


@register
@dataclass(frozen=True)
class PosteriorConfig:
    """Settings of posterior SGLD (validated). Defaults = the paper's."""

    step_size: float = 1e-5
    num_samples: int = 1000
    num_burnin_steps: int = 200
    num_steps_bw_samples: int = 10
    batch_size: Optional[int] = 128
    temperature: float = 1.0
    weight_decay: float = 0.0
    chains_per_start: int = 1
    seed: int = 0
    record: str = "full"
    keep_samples: bool = True

    def __post_init__(self):
        check_float("step_size (epsilon)", self.step_size, 0.0, strict_min=True)
        check_float("temperature", self.temperature, 0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        object.__setattr__(self, "chains_per_start", check_int("chains_per_start", self.chains_per_start, 1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        check_choice("record", self.record, ("full", "batch"))
        DrawSchedule(self.num_samples, self.num_burnin_steps, self.num_steps_bw_samples)

    @classmethod
    def from_dict(cls, d) -> "PosteriorConfig":
        from ..stats.results import decode

        fields = d["fields"] if "fields" in d else d
        return cls(**{k: decode(v) for k, v in fields.items()})

    @property
    def schedule(self) -> DrawSchedule:
        return DrawSchedule(self.num_samples, self.num_burnin_steps, self.num_steps_bw_samples)

    def kernel(self, n: int) -> SGLDConfig:
        return SGLDConfig(step_size=self.step_size, nbeta=n / self.temperature, localization=0.0,
                          weight_decay=self.weight_decay, noise_level=1.0)


@dataclass
class PosteriorResult(Result):
    """Posterior samples and diagnostics.

    samples ``[chains, samples, P]`` (None if ``keep_samples=False``; NaN rows after a
    divergence), loss_traces ``[chains, samples]``, start_index ``[chains]`` (which start each
    chain came from), start_ids, groups ``[chains]``, diverged ``[chains]``, rhat/ess per chain
    (split-R̂ of one chain = its two halves), and per group (all valid chains of the group
    together). :meth:`estimates` gives each group's mean loss with its Monte-Carlo standard
    error (sd / √ESS).

    Pooled over the valid chains: ``rhat`` / ``ess`` of the loss, ``rhat_labels`` (of the
    cluster assignment ``labels [chains, samples]`` when one was given, else NaN). Compute:
    ``n_steps`` SGLD steps per chain (burn-in and discarded samples included), so
    ``gradient_evaluations`` = n_steps x chains minibatch gradients of ``batch`` examples.
    A run to a convergence target (:func:`sgdbayes.sampling.converge.sample_posterior_until`)
    also states ``stop_reason``, ``history`` (one row per block) and ``kept_from`` (samples
    before it were discarded as burn-in).
    """

    samples: Optional[Tensor]
    loss_traces: np.ndarray
    start_index: np.ndarray
    start_ids: np.ndarray
    groups: np.ndarray
    diverged: np.ndarray
    rhat_chain: np.ndarray
    ess_chain: np.ndarray
    group_diagnostics: pd.DataFrame
    config: PosteriorConfig
    nbeta: float
    n_train: int
    wall_s: float
    mode: str = "n/a"
    rhat: float = float("nan")
    ess: float = float("nan")
    labels: Optional[np.ndarray] = None
    rhat_labels: float = float("nan")
    n_steps: int = 0
    stop_reason: str = "fixed length"
    history: Optional[pd.DataFrame] = None
    kept_from: int = 0

    @property
    def gradient_evaluations(self) -> int:
        """Minibatch gradients of all chains together (``n_steps`` x chains)."""
        return int(self.n_steps) * self.n_chains

    @property
    def n_chains(self) -> int:
        return int(self.loss_traces.shape[0])

    def valid_samples(self) -> Tensor:
        """Samples of non-diverged chains only, ``[valid_chains, samples, P]``."""
        if self.samples is None:
            raise ValueError("samples were not kept (keep_samples=False)")
        return self.samples[torch.as_tensor(~self.diverged)]

    def _estimate_rows(self, level: float) -> list[dict]:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + level / 2))
        rows = []
        for _, g in self.group_diagnostics.iterrows():
            sel = (self.groups == g["group"]) & ~self.diverged
            tr = self.loss_traces[sel]
            se = float(np.std(tr) / np.sqrt(g["ess"])) if sel.any() and g["ess"] > 0 else float("nan")
            m = float(g["mean_loss"])
            rows.append(estimate_row(f"mean_loss[{g['group']}]", m, se, m - z * se, m + z * se))
        return rows

    def to_dict(self) -> dict:
        d = encode(dataclasses.replace(self, samples=None))
        d["fields"]["samples"] = None if self.samples is None else encode(self.samples.cpu().numpy())
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "PosteriorResult":
        out = super().from_dict(d)
        if out.samples is not None and not isinstance(out.samples, Tensor):
            out.samples = torch.as_tensor(out.samples)
        return out

    def chain_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "chain": np.arange(self.n_chains), "start_index": self.start_index,
            "start_id": self.start_ids[self.start_index], "group": self.groups,
            "diverged": self.diverged, "rhat": self.rhat_chain, "ess": self.ess_chain,
            "mean_loss": np.nanmean(self.loss_traces, axis=1) if self.loss_traces.size else [],
        })

    def summary(self) -> str:
        c = self.config
        lines = [
            "Posterior SGLD (Welling & Teh, temperature "
            f"{c.temperature:g}: dw = -(eps/2) n grad L_B + N(0, eps)), n={self.n_train}, nbeta={self.nbeta:g}, "
            f"mode={self.mode}",
            f"  eps={c.step_size:g} samples={self.loss_traces.shape[1]} burn-in={c.num_burnin_steps} "
            f"steps/sample={c.num_steps_bw_samples} batch={c.batch_size} weight_decay={c.weight_decay:g} "
            f"loss trace={c.record} wall={self.wall_s:.1f}s",
            f"  chains={self.n_chains} diverged={int(self.diverged.sum())} (excluded from group diagnostics); "
            f"{self.n_steps} steps per chain, {self.gradient_evaluations} minibatch gradients in all",
            f"  pooled split-R̂ of the loss {self.rhat:.4g}, bulk ESS {self.ess:.4g}"
            + (f", split-R̂ of the cluster assignment {self.rhat_labels:.4g}" if self.labels is not None else "")
            + f"; stopped: {self.stop_reason}",
            "  per group: " + self.group_diagnostics.to_string(index=False, float_format=lambda v: f"{v:.3g}"),
        ]
        return "\n".join(lines)


def sample_posterior(w_start: Tensor, potential=None, *, spec=None, data=None, state=None,
                     config: Optional[PosteriorConfig] = None, start_ids: Optional[Sequence[int]] = None,
                     groups: Optional[Sequence] = None, progress: bool = True) -> PosteriorResult:
    """Temperature-1 SGLD chains from each row of ``w_start [S, P]``.

    Give either ``potential`` (:mod:`sgdbayes.sampling.potentials`) or ``spec`` + ``data`` (a
    model family, e.g. ``ensemble.spec``, with ``state`` its per-start state, and ``(x, y)`` /
    Dataset / DataLoader). ``config.chains_per_start`` chains start from each row (rows
    ``s * chains_per_start + j``). ``start_ids`` (default 0..S-1, e.g. the SGD seeds) seed the
    chains' streams, so a chain does not depend on what else runs with it. ``groups`` labels each
    start (e.g. its SGD cluster); diagnostics are reported per group of chains. ``progress``: a
    tqdm bar on long runs.
    """
    config = config if config is not None else PosteriorConfig()
    if not isinstance(config, PosteriorConfig):
        raise ValueError(f"config must be a PosteriorConfig, got {type(config).__name__}")
    pot = starting_potential(w_start, potential, spec, data, state)
    S, P = w_start.shape
    J = config.chains_per_start
    start_ids = list(range(S)) if start_ids is None else [int(s) for s in start_ids]
    if len(start_ids) != S:
        raise ValueError(f"start_ids has {len(start_ids)} entries for {S} starts")
    groups = np.asarray(list(groups) if groups is not None else [0] * S)
    if groups.shape != (S,):
        raise ValueError(f"groups must have one label per start ({S}), got shape {groups.shape}")
    n = int(pot.n)
    kernel = config.kernel(n)
    t0 = time.perf_counter()
    w0 = w_start.detach().repeat_interleave(J, dim=0)
    streams = ChainStreams(chain_seeds(config.seed, start_ids, J), n=n, batch_size=config.batch_size,
                           n_params=P, device=w_start.device, dtype=w_start.dtype)
    observers = ([WeightTrace()] if config.keep_samples else []) + ([FullLossTrace()] if config.record == "full" else [])
    run = run_chains(pot, w0, kernel, config.schedule, streams, observers=observers, progress=progress,
                     desc=f"posterior SGLD {S * J} chains")
    traces = (run.full_losses if config.record == "full" else run.losses).cpu().numpy().astype(np.float64)
    return posterior_result(traces, run.diverged.cpu().numpy(), run.weights, np.repeat(np.arange(S), J), start_ids,
                            groups, config, kernel.nbeta, n, time.perf_counter() - t0, pot.mode, n_steps=run.end_step)


def posterior_result(traces, diverged, samples, start_index, start_ids, groups, config, nbeta, n, wall_s, mode,
                     **extra) -> PosteriorResult:
    """A :class:`PosteriorResult` with its per-chain, per-group and pooled diagnostics."""
    chain_groups = np.asarray(groups)[start_index]
    rhat_c = np.array([split_rhat(t) if not dv else np.nan for t, dv in zip(traces, diverged)])
    ess_c = np.array([ess(t) if not dv else np.nan for t, dv in zip(traces, diverged)])
    valid = ~np.asarray(diverged, bool)
    return PosteriorResult(samples=samples, loss_traces=traces, start_index=start_index,
                           start_ids=np.asarray(start_ids), groups=chain_groups, diverged=np.asarray(diverged, bool),
                           rhat_chain=rhat_c, ess_chain=ess_c,
                           group_diagnostics=_group_diagnostics(traces, chain_groups, diverged),
                           config=config, nbeta=nbeta, n_train=n, wall_s=wall_s, mode=mode,
                           rhat=float(split_rhat(traces[valid])) if valid.any() else float("nan"),
                           ess=float(ess(traces[valid])) if valid.any() else float("nan"), **extra)


def _group_diagnostics(traces, chain_groups, diverged) -> pd.DataFrame:
    rows = []
    for g in pd.unique(chain_groups):
        sel = (chain_groups == g) & ~diverged
        tr = traces[sel]
        rows.append(dict(group=g, n_chains=int((chain_groups == g).sum()), n_valid=int(sel.sum()),
                         rhat=split_rhat(tr) if sel.any() else np.nan, ess=ess(tr) if sel.any() else np.nan,
                         mean_loss=float(tr.mean()) if sel.any() else np.nan))
    return pd.DataFrame(rows)
