"""λ̂ along training: the engine hook of App G.1 (LLC every ``every`` steps; final λ = mean of
the last 10 estimates)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from .._validation import check_int
from .data_args import dataset_tensors
from .llc import estimate_llc_potential
from .llc_types import LLCConfig, LLCResult
from .model_potential import potential_for

__all__ = ["LLCTrainingHook"]


class LLCTrainingHook:
    """Estimate λ̂ for all models every ``every`` optimizer steps during training.

    Paper App G.1: LLC every 100 steps; final λ = mean of the last 10 estimates,
    se = std/√10. Successive estimates are autocorrelated (the weights move
    little between them), so that se is optimistic; :meth:`final` also returns
    the mean within-estimate chain std/√chains when chains > 1.

    Engine use (``sgdbayes.engine``)::

        hook = LLCTrainingHook(LLCConfig(...), every=100)
        res = train_ensemble(cfg, hooks=[hook.as_engine_hook()])
        res.hooks["llc"]            # long table step, seed, llc, llc_std, flags
        mean, se, chain_se = hook.final(last=10)

    ``hook(state)`` reads ``state.step``, ``state.w [k,P]``, ``state.spec`` (any model
    family), ``state.model_state`` (per-seed buffers: BatchNorm is evaluated with its
    running statistics), ``state.seeds`` and ``state.data`` (its train split) and returns
    per-seed arrays, which the engine records. The engine may run seeds in chunks; records
    are kept per (step, seed). Without the engine call :meth:`record` with
    ``(step, w, spec, x, y, model_ids, state)``.
    Each estimate uses base seed ``config.seed + step`` so successive estimates
    get fresh SGLD noise; model ids are the run seeds (batching invariant).
    """

    def __init__(self, config: Optional[LLCConfig] = None, every: int = 100, x: Optional[Tensor] = None,
                 y: Optional[Tensor] = None, keep_results: bool = False, name: str = "llc"):
        self.config = config if config is not None else LLCConfig()
        if not isinstance(self.config, LLCConfig):
            raise ValueError(f"config must be an LLCConfig, got {type(self.config).__name__}")
        self.every = check_int("every", every, 1)
        self.x, self.y = x, y
        self.keep_results = keep_results
        self.name = name
        self.rows: list[dict] = []
        self.results: list[LLCResult] = []

    def as_engine_hook(self, at_start: bool = False):
        from ..engine import Hook

        return Hook(every=self.every, fn=self, name=self.name, at_start=at_start)

    def __call__(self, state):
        step = int(state.step)
        if step % self.every != 0:
            return None
        x, y = self.x, self.y
        if x is None:
            x, y = dataset_tensors(state.data)
        st = None if state.model_state is None else {k: v.clone() for k, v in state.model_state.items()}
        res = self.record(step, state.w, state.spec, x, y, model_ids=state.seeds, state=st)
        return dict(llc=res.llc, llc_std=res.llc_std, negative=res.negative, trend_flag=res.trend_flag,
                    n_diverged=res.n_diverged, all_diverged=res.all_diverged)

    def record(self, step: int, w: Tensor, spec, x: Tensor, y: Tensor,
               model_ids: Optional[Sequence[int]] = None, state=None) -> LLCResult:
        cfg = replace(self.config, seed=self.config.seed + int(step))
        res = estimate_llc_potential(potential_for(spec, x, y, state), w.detach(), cfg,
                                     model_ids=None if model_ids is None else [int(s) for s in model_ids])
        for i, mid in enumerate(res.model_ids):
            self.rows.append(dict(step=int(step), model_id=int(mid), llc=float(res.llc[i]),
                                  llc_std=float(res.llc_std[i]), negative=bool(res.negative[i]),
                                  trend_flag=bool(res.trend_flag[i]), n_diverged=int(res.n_diverged[i]),
                                  all_diverged=bool(res.all_diverged[i]), nbeta=res.nbeta))
        if self.keep_results:
            self.results.append(res)
        return res

    def to_frame(self):
        """Long table: step, model_id, llc, llc_std, negative, trend_flag, n_diverged, all_diverged, nbeta."""
        return pd.DataFrame(self.rows, columns=["step", "model_id", "llc", "llc_std", "negative", "trend_flag",
                                                "n_diverged", "all_diverged", "nbeta"])

    def llc_trace(self):
        """Wide table ``[steps x model_id]`` of λ̂."""
        return self.to_frame().pivot(index="step", columns="model_id", values="llc").sort_index()

    def final(self, last: int = 10):
        """Per model: ``(mean, se, chain_se)`` of the last ``last`` estimates as pandas Series.

        mean = average of the last ``last`` λ̂ (App G.1); se = std(ddof=1)/√count
        (the estimates are autocorrelated, so this se is optimistic); chain_se =
        mean chain std / √chains (NaN with 1 chain). NaN estimates (all chains
        diverged) are excluded and so reduce the count.
        """
        last = check_int("last", last, 1)
        df = self.to_frame()
        if df.empty:
            raise ValueError("no LLC estimates recorded yet")
        steps = np.sort(df["step"].unique())[-last:]
        sub = df[df["step"].isin(steps)]
        g = sub.groupby("model_id")
        mean = g["llc"].mean()
        se = g["llc"].std(ddof=1) / np.sqrt(g["llc"].count())
        chain_se = g["llc_std"].mean() / math.sqrt(self.config.num_chains)
        return mean, se, chain_se

    def time_average(self):
        """λ̄ = mean of all estimates along training per model (Cor 3.3, H3)."""
        return self.to_frame().groupby("model_id")["llc"].mean()
