"""Calibration of the LLC sampler: a small ε–γ–nβ grid as one batched run (docs/estimates.md#calibration).

:func:`calibrate_llc` runs ``num_chains`` SGLD chains (eq 25 of the paper, the update of
:mod:`sgdbayes.sampling.integrator` with per-row coefficients) for every cell of the grid
``step_sizes × localizations × nbetas`` at once: all ``cells × chains`` rows are one stacked
computation, one ``loss_and_grad`` of the potential per step. Row ``(cell g, chain c)`` draws its
noise and minibatches from ``chain_seeds(seed, [g], C)``, so a cell's chains do not depend on the
other cells of the grid.

Every cell gets λ̂ (mean over chains of nβ (mean draw loss − L(w*))), its chain std, the
per-chain trend z (:func:`sgdbayes.sampling.llc_checks.chain_trends`) and the MALA acceptance of
each step (:func:`sgdbayes.sampling.mala.mala_log_acceptance`'s formula, both ends of a transition
on the minibatch the step used, as ``LLCConfig(mala_batch="same")``; with minibatches that is one
extra loss-and-gradient evaluation per step, with full batch none). The recommendation follows stated
criteria, in order:

1. **stationarity**: no chain's |trend z| exceeds ``trend_z`` Bonferroni-corrected for C chains;
2. **acceptance**: mean MALA acceptance ≥ ``min_accept``;
3. **insensitivity to γ**: |λ̂(γ) − λ̂(γ′)| ≤ ``gamma_rtol`` · |λ̂(γ)| + 2 √(se² + se′²) for the
   neighbouring γ′ of the grid (same ε, nβ; the next smaller γ, or the next larger for the
   smallest; se = chain std / √C): the localization no longer pulls λ̂ beyond the
   Monte-Carlo error (a large γ biases λ̂ towards 0). ``gamma_sensitivity`` is the change
   in units of that allowance (≤ 1 passes);
4. no diverged chain and λ̂ > 0.

Among the cells passing all four, the largest ε (fastest mixing) is recommended, then the
smallest γ (least localization), then the first nβ of the grid. ``recommended`` is None when no
cell passes; ``why`` says which criterion failed most.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._validation import check_float, check_int
from .llc_checks import bonferroni_z, chain_trends
from .potentials import as_potential, check_weights
from .sgld import default_nbeta
from .streams import ChainStreams, chain_seeds

__all__ = ["CalibrationGrid", "Calibration", "calibrate_llc"]


@dataclass(frozen=True)
class CalibrationGrid:
    """The grid and the run: ``step_sizes``, ``localizations``, ``nbetas`` (numbers, or "batch" /
    "n" as in :class:`~sgdbayes.sampling.LLCConfig`), chains per cell, draws, burn-in steps,
    minibatch size (None = full batch), seed; the criteria (module docstring)."""

    step_sizes: Sequence[float] = (1e-5, 1e-4, 1e-3)
    localizations: Sequence[float] = (1.0, 10.0, 100.0)
    nbetas: Sequence = ("n",)
    num_chains: int = 4
    num_draws: int = 500
    num_burnin_steps: int = 200
    batch_size: Optional[int] = None
    seed: int = 0
    trend_z: float = 3.0
    min_accept: float = 0.95
    gamma_rtol: float = 0.1

    def __post_init__(self):
        for name in ("step_sizes", "localizations", "nbetas"):
            vals = tuple(getattr(self, name))
            if not vals:
                raise ValueError(f"CalibrationGrid.{name} must not be empty")
            object.__setattr__(self, name, vals)
        for e in self.step_sizes:
            check_float("step_sizes entry", e, 0.0, strict_min=True)
        for g in self.localizations:
            check_float("localizations entry", g, 0.0)
        for b in self.nbetas:
            if not (b in ("batch", "n") or (isinstance(b, (int, float)) and b > 0)):
                raise ValueError(f"nbetas entries must be 'batch', 'n' or a number > 0, got {b!r}")
        object.__setattr__(self, "num_chains", check_int("num_chains", self.num_chains, 2))
        object.__setattr__(self, "num_draws", check_int("num_draws", self.num_draws, 8))
        object.__setattr__(self, "num_burnin_steps", check_int("num_burnin_steps", self.num_burnin_steps, 0))
        check_float("min_accept", self.min_accept, 0.0, 1.0)
        check_float("gamma_rtol", self.gamma_rtol, 0.0, strict_min=True)

    def cells(self, n: int) -> pd.DataFrame:
        """One row per cell: ``step_size``, ``localization``, ``nbeta`` (resolved for ``n``)."""
        rows = [(e, g, _nbeta(b, n, self.batch_size)) for e in self.step_sizes for g in self.localizations
                for b in self.nbetas]
        return pd.DataFrame(rows, columns=["step_size", "localization", "nbeta"])


def _nbeta(b, n: int, batch_size: Optional[int]) -> float:
    if b == "n":
        return default_nbeta(n)
    if b == "batch":
        return default_nbeta(batch_size if batch_size is not None else n)
    return float(b)


@dataclass
class Calibration:
    """``cells`` (one row per grid cell: settings, ``llc``, ``llc_std``, ``trend_z_max``,
    ``stationary``, ``mala_accept``, ``accept_ok``, ``gamma_sensitivity``, ``insensitive``,
    ``diverged``, ``passes``), ``recommended`` (the chosen row as a dict, or None), ``why``
    (a sentence), ``wall_s``."""

    cells: pd.DataFrame
    recommended: Optional[dict]
    why: str
    wall_s: float

    def summary(self) -> str:
        cols = ["step_size", "localization", "nbeta", "llc", "llc_std", "trend_z_max", "mala_accept",
                "gamma_sensitivity", "passes"]
        return "\n".join([f"LLC calibration ({len(self.cells)} cells, {self.wall_s:.1f}s): {self.why}",
                          self.cells[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")])


def calibrate_llc(potential, w_star: Tensor, grid: Optional[CalibrationGrid] = None) -> Calibration:
    """Run ``grid`` around ``w_star [1, P]`` (or ``[P]``) under ``potential`` and recommend
    settings (module docstring)."""
    grid = grid if grid is not None else CalibrationGrid()
    pot = as_potential(potential)
    w_star = w_star.detach()
    w_star = w_star.unsqueeze(0) if w_star.dim() == 1 else w_star
    check_weights(w_star, "w_star")
    if w_star.shape[0] != 1:
        raise ValueError(f"calibrate_llc calibrates one model: w_star must be [1, P], got {tuple(w_star.shape)}")
    n = int(pot.n)
    cells = grid.cells(n)
    t0 = time.perf_counter()
    losses, accept, l0 = _run_grid(pot, w_star, cells, grid, n)
    out = _score(cells, losses, accept, l0, grid)
    rec, why = _recommend(out)
    return Calibration(cells=out, recommended=rec, why=why, wall_s=time.perf_counter() - t0)


def _run_grid(pot, w_star: Tensor, cells: pd.DataFrame, grid: CalibrationGrid, n: int):
    G, C, P = len(cells), grid.num_chains, w_star.shape[1]
    M = G * C
    dt = w_star.dtype
    col = lambda name: torch.tensor(np.repeat(cells[name].to_numpy(), C), dtype=torch.float64)[:, None]  # noqa: E731
    eps, gam, nb = col("step_size"), col("localization"), col("nbeta")
    center = w_star.repeat(M, 1).double()
    w = center.clone()
    streams = ChainStreams(chain_seeds(grid.seed, list(range(G)), C), n=n, batch_size=grid.batch_size, n_params=P,
                           device=w_star.device, dtype=dt)
    with torch.no_grad():
        l0 = float(pot(w_star, None)[0])
    D, B0 = grid.num_draws, grid.num_burnin_steps
    losses = np.full((M, D), np.nan)
    accept = np.full((M, D), np.nan)

    def energy(w, batch):
        loss, g = pot.loss_and_grad(w.to(dt), batch)
        loss, g = loss.double(), g.double()
        return loss, nb[:, 0] * loss + 0.5 * gam[:, 0] * (w - center).square().sum(1), nb * g + gam * (w - center)

    ahead = None      # full batch: the energy at the new point is the next step's own
    for i in range(B0 + D):
        batch = streams.next_batch()
        loss, U, G_ = ahead if ahead is not None else energy(w, batch)
        if i >= B0:
            losses[:, i - B0] = loss.cpu().numpy()
        w1 = w - 0.5 * eps * G_ + eps.sqrt() * streams.noise().double()
        bad = ~torch.isfinite(w1).all(1)
        if bad.any():
            w1 = torch.where(bad[:, None], center, w1)
        ahead = None
        if B0 <= i + 1 < B0 + D:   # the transition into draw i + 1, both ends on this step's batch
            here = energy(w1, batch)
            acc = _acceptance((w, U, G_), (w1, here[1], here[2]), eps)
            accept[:, i + 1 - B0] = torch.where(bad, torch.full_like(acc, float("nan")), acc).cpu().numpy()
            ahead = here if batch is None else None
        w = w1
    return losses.reshape(G, C, D), accept.reshape(G, C, D), l0


def _acceptance(prev, here, eps: Tensor) -> Tensor:
    (w0, u0, g0), (w1, u1, g1) = prev, here
    d = w1 - w0
    fwd = (d + 0.5 * eps * g0).square().sum(1)
    rev = (-d + 0.5 * eps * g1).square().sum(1)
    la = (u0 - u1) + (fwd - rev) / (2.0 * eps[:, 0])
    return torch.exp(torch.clamp(la, max=0.0))


def _score(cells: pd.DataFrame, losses: np.ndarray, accept: np.ndarray, l0: float, grid: CalibrationGrid):
    out = cells.copy()
    G, C, _ = losses.shape
    diverged = ~np.isfinite(losses).all(axis=2)
    nb = out["nbeta"].to_numpy()[:, None]
    with np.errstate(invalid="ignore"):
        per_chain = nb * (np.nanmean(losses, axis=2) - l0)
    out["llc"] = np.nanmean(per_chain, axis=1)
    out["llc_std"] = np.nanstd(per_chain, axis=1, ddof=1)
    z, _ = chain_trends(losses, diverged)
    za = np.where(np.isfinite(z), np.abs(z), 0.0)
    out["trend_z_max"] = za.max(axis=1)
    out["stationary"] = out["trend_z_max"] <= bonferroni_z(grid.trend_z, C)
    out["mala_accept"] = np.nanmean(accept.reshape(G, -1), axis=1)
    out["accept_ok"] = out["mala_accept"] >= grid.min_accept
    out["diverged"] = diverged.sum(axis=1)
    out["gamma_sensitivity"] = _gamma_sensitivity(out, C, grid.gamma_rtol)
    out["insensitive"] = out["gamma_sensitivity"] <= 1.0
    out["passes"] = (out["stationary"] & out["accept_ok"] & out["insensitive"] & (out["diverged"] == 0)
                     & (out["llc"] > 0))
    return out


def _gamma_sensitivity(out: pd.DataFrame, C: int, rtol: float) -> np.ndarray:
    sens = np.full(len(out), np.nan)
    for _, idx in out.groupby(["step_size", "nbeta"]).groups.items():
        sub = out.loc[idx].sort_values("localization")
        rows, vals = list(sub.index), sub["llc"].to_numpy()
        se = sub["llc_std"].to_numpy() / math.sqrt(C)
        for j, r in enumerate(rows):
            if len(rows) < 2:
                continue
            o = j - 1 if j > 0 else 1
            allow = rtol * abs(vals[j]) + 2.0 * math.sqrt(se[j] ** 2 + se[o] ** 2)
            sens[r] = abs(vals[j] - vals[o]) / allow if allow > 0 else math.inf
    return sens


def _recommend(out: pd.DataFrame) -> tuple[Optional[dict], str]:
    ok = out[out["passes"]]
    if ok.empty:
        fails = {"not stationary": int((~out["stationary"]).sum()), "acceptance too low": int((~out["accept_ok"]).sum()),
                 "lambda-hat sensitive to gamma": int((~out["insensitive"]).sum())}
        worst = max(fails, key=fails.get)
        return None, (f"no cell passes every criterion (most common failure: {worst}, {fails[worst]} of "
                      f"{len(out)} cells); widen the grid")
    best = ok.assign(_neg_eps=-ok["step_size"]).sort_values(["_neg_eps", "localization"], kind="stable").iloc[0]
    rec = {k: best[k] for k in out.columns}
    return rec, (f"recommended ε = {best['step_size']:g}, γ = {best['localization']:g}, nβ = {best['nbeta']:.4g} "
                 f"(λ̂ = {best['llc']:.4g}): {len(ok)} of {len(out)} cells pass; the largest ε, then the smallest γ")
