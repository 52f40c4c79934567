"""The result of :func:`sgdbayes.sampling.hmc.sample_hmc`: samples, loss traces, acceptance,
divergent transitions, adapted step sizes, compute, and convergence diagnostics."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..stats.results import Result, encode, estimate_row
from .diagnostics import ess, split_rhat

__all__ = ["HMCResult"]


@dataclass
class HMCResult(Result):
    """HMC chains (rows = chains, one per start).

    ``samples [C, S, P]`` (None unless kept), ``loss_traces [C, S]`` (full-data mean loss of each
    sample), ``accept [C, S]`` (acceptance probability of each sampling transition),
    ``divergent [C, S]``, ``step_size [C]`` (adapted), ``warmup_accept [C]``, ``metric_range
    [C, 3]`` (min, median, max of the adapted inverse metric), ``n_grad [C]`` / ``n_grad_warmup
    [C]`` (batched loss-and-gradient calls per chain: full-data gradients, n examples each),
    ``rhat`` / ``ess`` (pooled split-R̂ and bulk ESS of the loss), per chain ``rhat_chain`` /
    ``ess_chain``, ``wall_s``; ``norm_traces [C, S]`` (the weight norm ‖w‖ of each sample: on a
    posterior with flat directions, e.g. a flat prior, it drifts while the loss may look settled;
    ``rhat_norm`` is its pooled split-R̂); ``config`` (an :class:`~sgdbayes.sampling.hmc.HMCConfig`).
    """

    samples: Optional[Tensor]
    loss_traces: np.ndarray
    accept: np.ndarray
    divergent: np.ndarray
    step_size: np.ndarray
    warmup_accept: np.ndarray
    metric_range: np.ndarray
    n_grad: np.ndarray
    n_grad_warmup: np.ndarray
    rhat: float
    ess: float
    rhat_chain: np.ndarray
    ess_chain: np.ndarray
    start_ids: np.ndarray
    groups: np.ndarray
    config: Any
    nbeta: float
    n_train: int
    wall_s: float
    mode: str = "n/a"
    norm_traces: Optional[np.ndarray] = None

    @classmethod
    def from_run(cls, out: Mapping, **kw) -> "HMCResult":
        tr = np.asarray(out["losses"], np.float64)
        return cls(samples=out["samples"], loss_traces=tr, accept=out["accept"], divergent=out["divergent"],
                   step_size=out["step_size"], warmup_accept=out["warmup_accept"], metric_range=out["metric_range"],
                   n_grad=out["n_grad"], n_grad_warmup=out["n_grad_warmup"], rhat=float(split_rhat(tr)),
                   ess=float(ess(tr)), rhat_chain=np.array([split_rhat(t) for t in tr]),
                   ess_chain=np.array([ess(t) for t in tr]), wall_s=float(out["wall_s"]),
                   norm_traces=out.get("norms"), **kw)

    @property
    def n_chains(self) -> int:
        return int(self.loss_traces.shape[0])

    @property
    def rhat_norm(self) -> float:
        """Pooled split-R̂ of the weight norm ‖w‖ (NaN when not recorded)."""
        return float("nan") if self.norm_traces is None else float(split_rhat(np.asarray(self.norm_traces)))

    @property
    def acceptance_rate(self) -> float:
        """Mean acceptance probability over the sampling transitions of every chain."""
        return float(np.nanmean(self.accept))

    @property
    def n_divergent(self) -> int:
        return int(self.divergent.sum())

    @property
    def gradient_evaluations(self) -> int:
        """Full-data gradient evaluations of all chains together (warm-up included)."""
        return int(self.n_grad.sum())

    def converged(self, max_rhat: float = 1.01, min_ess: float = 400.0) -> bool:
        """Pooled split-R̂ of the loss ≤ ``max_rhat`` and pooled bulk ESS ≥ ``min_ess``."""
        return bool(self.rhat <= max_rhat and self.ess >= min_ess)

    def _estimate_rows(self, level: float) -> list[dict]:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + level / 2))
        m = float(np.mean(self.loss_traces))
        se = float(np.std(self.loss_traces) / np.sqrt(self.ess)) if self.ess > 0 else float("nan")
        return [estimate_row("mean_loss", m, se, m - z * se, m + z * se)]

    def chain_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "chain": np.arange(self.n_chains), "start_id": self.start_ids, "group": self.groups,
            "step_size": self.step_size, "warmup_accept": self.warmup_accept,
            "accept": np.nanmean(self.accept, axis=1), "n_divergent": self.divergent.sum(1),
            "rhat": self.rhat_chain, "ess": self.ess_chain, "mean_loss": self.loss_traces.mean(1),
            "n_grad": self.n_grad,
        })

    def to_dict(self) -> dict:
        d = encode(dataclasses.replace(self, samples=None))
        d["fields"]["samples"] = None if self.samples is None else encode(self.samples.cpu().numpy())
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "HMCResult":
        out = super().from_dict(d)
        if out.samples is not None and not isinstance(out.samples, Tensor):
            out.samples = torch.as_tensor(out.samples)
        return out

    def summary(self) -> str:
        c = self.config
        return "\n".join([
            f"HMC (Metropolis-adjusted, {c.num_leapfrog} leapfrog steps, temperature {c.temperature:g}, nβ = "
            f"{self.nbeta:g}), n={self.n_train}, mode={self.mode}",
            f"  chains={self.n_chains} warm-up={c.num_warmup} samples={c.num_samples} target accept="
            f"{c.target_accept:g} metric={'diagonal, adapted' if c.adapt_metric else 'identity'} wall={self.wall_s:.1f}s",
            f"  acceptance {self.acceptance_rate:.3g}; divergent transitions {self.n_divergent}; step sizes "
            f"{np.min(self.step_size):.3g}..{np.max(self.step_size):.3g}; gradient evaluations "
            f"{self.gradient_evaluations}",
            f"  split-R̂ of the loss {self.rhat:.4g}, bulk ESS {self.ess:.4g}; split-R̂ of |w| {self.rhat_norm:.4g}",
            self.chain_frame().to_string(index=False, float_format=lambda v: f"{v:.4g}"),
        ])
