"""Metropolis-adjusted Hamiltonian Monte Carlo, chains batched (docs/estimates.md#hmc-reference).

Target: the tempered posterior ``π(w) ∝ exp(−U(w))`` with ``U(w) = (n/T) L(w) + (ω/2)|w|²``
(``L`` the full-data mean loss, n the training-set size, T the temperature, ω a Gaussian prior
precision; T = 1, ω = 0 is the target of posterior SGLD, :mod:`sgdbayes.sampling.posterior`).

One transition of chain c (Neal 2011): momentum ``p ~ N(0, M_c)`` with a diagonal mass matrix
``M_c = diag(1 / m_c)``; ``num_leapfrog`` leapfrog steps of size ``ε_c`` (jittered uniformly by
``± jitter`` per transition)::

    p ← p − (ε/2) ∇U(w);   repeat L times: w ← w + ε m ⊙ p,  p ← p − ε ∇U(w)  (the last one ε/2)

then accept the end point with probability ``min(1, exp(−ΔH))``, ``H = U(w) + ½ Σ m p²``. A
transition is *divergent* when ``ΔH > max_energy_error`` or is not finite (it is rejected).

Warm-up (``num_warmup`` transitions, discarded; Stan's windowed adaptation, per chain): the
step size by dual averaging (Hoffman & Gelman 2014, Alg. 5: target ``target_accept``,
γ = 0.05, t₀ = 10, κ = 0.75, μ = log 10ε) after a doubling/halving search for a reasonable
first step (their Alg. 4); with ``adapt_metric`` the diagonal ``m_c`` is the chain's own
variance of the draws in slow windows of 25, 50, 100, ... transitions between a 15 % initial and a
10 % final fast window, regularized as Stan does (``n/(n+5) var + 1e-3 · 5/(n+5)``), the dual
averaging restarting after each update. Sampling uses the averaged step size. Each draw's loss and
weight norm ‖w‖ are recorded (``HMCResult.norm_traces``): on a posterior with flat directions
(a ReLU network under a flat prior) |w| drifts while the loss may look settled.

Batched: all chains advance together, with **one** batched ``loss_and_grad`` of the potential
per leapfrog step for all chains. Every chain has its own generator (``chain_seeds(seed,
start_id, 0)``), step size, metric and adaptation state, so chain c's draws do not depend on
the other chains (nor on the rows being split over threads). Why not Pyro / NumPyro /
blackjax: docs/estimates.md#hmc-reference.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .._linalg import single_threaded_blas
from .._validation import check_float, check_int
from ..stats.results import decode, register
from .chains import _auto_workers
from .hmc_result import HMCResult
from .potentials import as_potential, check_weights
from .streams import chain_seeds

__all__ = ["HMCConfig", "HMCResult", "run_hmc", "sample_hmc"]


@register
@dataclass(frozen=True)
class HMCConfig:
    """Settings of :func:`sample_hmc` (validated; module docstring). ``step_size`` is the first
    guess of the step-size search."""

    num_warmup: int = 500
    num_samples: int = 500
    num_leapfrog: int = 32
    step_size: float = 1e-3
    target_accept: float = 0.8
    adapt_metric: bool = True
    jitter: float = 0.2
    temperature: float = 1.0
    weight_decay: float = 0.0
    max_energy_error: float = 1000.0
    seed: int = 0
    keep_samples: bool = True

    def __post_init__(self):
        object.__setattr__(self, "num_warmup", check_int("num_warmup", self.num_warmup, 0))
        object.__setattr__(self, "num_samples", check_int("num_samples", self.num_samples, 4))
        object.__setattr__(self, "num_leapfrog", check_int("num_leapfrog", self.num_leapfrog, 1))
        check_float("step_size", self.step_size, 0.0, strict_min=True)
        check_float("target_accept", self.target_accept, 0.0, 1.0, strict_min=True, strict_max=True)
        check_float("jitter", self.jitter, 0.0, 1.0, strict_max=True)
        check_float("temperature", self.temperature, 0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("max_energy_error", self.max_energy_error, 0.0, strict_min=True)
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))

    @classmethod
    def from_dict(cls, d) -> "HMCConfig":
        fields = d["fields"] if "fields" in d else d
        return cls(**{k: decode(v) for k, v in fields.items()})


def _windows(W: int) -> list[tuple[int, int]]:
    """The slow metric windows ``[(start, end), ...]`` (warm-up transition indices, end
    exclusive) of Stan's windowed adaptation: after a 15 % (at most 75) initial fast window,
    windows of 25, 50, 100, ... transitions, the last one extended to a 10 % (at most 50) final
    fast window. None with fewer than 20 warm-up transitions."""
    if W < 20:
        return []
    init, term, base = 75, 50, 25
    if init + term + base > W:
        init, term = int(0.15 * W), int(0.1 * W)
        base = W - init - term
    out, start, size = [], init, base
    while start + size <= W - term:
        end = start + size
        if end + 2 * size > W - term:  # the last window takes what is left
            end = W - term
        out.append((start, end))
        start, size = end, 2 * size
    return out


class _DualAveraging:
    """Hoffman & Gelman (2014) Alg. 5 for a vector of chains (float64 numpy)."""

    gamma, t0, kappa = 0.05, 10.0, 0.75

    def __init__(self, log_eps: np.ndarray, target: float):
        self.target = target
        self.restart(log_eps)

    def restart(self, log_eps: np.ndarray) -> None:
        self.mu = log_eps + math.log(10.0)
        self.hbar = np.zeros_like(log_eps)
        self.log_eps_bar = np.zeros_like(log_eps)
        self.t = 0
        self.log_eps = log_eps.copy()

    def update(self, accept: np.ndarray) -> np.ndarray:
        self.t += 1
        t = self.t
        w = 1.0 / (t + self.t0)
        self.hbar = (1 - w) * self.hbar + w * (self.target - np.nan_to_num(accept, nan=0.0))
        self.log_eps = self.mu - math.sqrt(t) / self.gamma * self.hbar
        eta = t ** (-self.kappa)
        self.log_eps_bar = eta * self.log_eps + (1 - eta) * self.log_eps_bar
        return self.log_eps


class _Rows:
    """The state of a block of chains: weights, energy and gradient, step sizes, metric, generators."""

    def __init__(self, pot, cfg: HMCConfig, w0: Tensor, seeds: Sequence[tuple[int, int]]):
        self.pot, self.cfg = pot, cfg
        self.nbeta = pot.n / cfg.temperature
        self.w = w0.detach().clone()
        self.M, self.P = self.w.shape
        self.gens = [torch.Generator(device=self.w.device if self.w.device.type != "meta" else "cpu").manual_seed(s[0])
                     for s in seeds]
        self.inv_metric = torch.ones_like(self.w)
        self.n_grad = 0
        self.loss, self.U, self.G = self.energy(self.w)

    def energy(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(L [M], U [M] float64, ∇U [M, P])``; one batched loss-and-gradient call."""
        loss, g = self.pot.loss_and_grad(w, None)
        self.n_grad += 1
        U = self.nbeta * loss.double()
        G = self.nbeta * g
        if self.cfg.weight_decay:
            U = U + 0.5 * self.cfg.weight_decay * w.double().square().sum(1)
            G = G + self.cfg.weight_decay * w
        return loss, U, G

    def draws(self) -> tuple[Tensor, np.ndarray]:
        """Per chain from its own generator: a standard normal ``[M, P]`` and two uniforms ``[M, 2]``."""
        xi = torch.empty_like(self.w)
        u = np.empty((self.M, 2))
        for r, g in enumerate(self.gens):
            torch.randn(self.P, generator=g, out=xi[r])
            u[r] = torch.rand(2, generator=g, dtype=torch.float64).numpy()
        return xi, u

    def transition(self, eps: np.ndarray, n_steps: int, jitter: float = 0.0) -> dict:
        """One HMC transition of every chain with step sizes ``eps [M]`` (each multiplied by
        ``1 + jitter (2u − 1)``, u uniform from the chain's generator); returns what happened."""
        xi, u = self.draws()
        eps = eps * (1.0 + jitter * (2.0 * u[:, 0] - 1.0))
        e = torch.as_tensor(eps, dtype=self.w.dtype, device=self.w.device).unsqueeze(1)
        p = xi / self.inv_metric.sqrt()
        k0 = 0.5 * (self.inv_metric * p.square()).double().sum(1)
        w, G = self.w, self.G
        p = p - 0.5 * e * G
        for s in range(n_steps):
            w = w + e * self.inv_metric * p
            loss, U, G = self.energy(w)
            p = p - (e if s < n_steps - 1 else 0.5 * e) * G
        k1 = 0.5 * (self.inv_metric * p.square()).double().sum(1)
        dH = (U + k1 - self.U - k0).cpu().numpy()
        dH = np.where(np.isfinite(dH), dH, np.inf)
        accept_prob = np.exp(np.minimum(0.0, -dH))
        divergent = dH > self.cfg.max_energy_error
        take = torch.as_tensor((np.log(u[:, 1]) < -dH) & ~divergent, device=self.w.device)
        self.w = torch.where(take.unsqueeze(1), w, self.w)
        self.G = torch.where(take.unsqueeze(1), G, self.G)
        self.U = torch.where(take, U, self.U)
        self.loss = torch.where(take, loss, self.loss)
        return {"accept": accept_prob, "divergent": divergent}

    def initial_step(self, eps0: float, max_iter: int = 40) -> np.ndarray:
        """Hoffman & Gelman (2014) Alg. 4 per chain: double or halve ε until the acceptance
        of one leapfrog step crosses 1/2."""
        eps = np.full(self.M, float(eps0))
        direction, done = None, np.zeros(self.M, bool)
        w0, U0, G0, loss0 = self.w, self.U, self.G, self.loss
        for _ in range(max_iter):
            out = self.transition(eps, 1)
            self.w, self.U, self.G, self.loss = w0, U0, G0, loss0  # a probe, never a move
            a = np.nan_to_num(out["accept"], nan=0.0)
            if direction is None:
                direction = np.where(a > 0.5, 1.0, -1.0)
            crossed = (direction > 0) & (a <= 0.5) | (direction < 0) & (a > 0.5)
            done |= crossed
            if done.all():
                break
            eps = np.where(done, eps, eps * 2.0 ** direction)
        return eps


class _Welford:
    """Per-chain running mean and variance of the weights ``[M, P]`` (float64)."""

    def __init__(self, like: Tensor):
        self.n, self.mean, self.m2 = 0, torch.zeros_like(like, dtype=torch.float64), torch.zeros_like(
            like, dtype=torch.float64)

    def add(self, w: Tensor) -> None:
        self.n += 1
        d = w.double() - self.mean
        self.mean += d / self.n
        self.m2 += d * (w.double() - self.mean)

    def regularized(self) -> Tensor:
        """Stan's ``n/(n+5) var + 1e-3 · 5/(n+5)``."""
        n = self.n
        return (n / (n + 5.0)) * self.m2 / max(1, n - 1) + 1e-3 * 5.0 / (n + 5.0)


def _warmup(rows: _Rows, cfg: HMCConfig, bar) -> tuple[np.ndarray, np.ndarray]:
    """Adapt every chain's step size (and metric); returns the sampling step sizes and the mean
    warm-up acceptance per chain."""
    W = cfg.num_warmup
    if W == 0:
        return np.full(rows.M, cfg.step_size), np.full(rows.M, np.nan)
    da = _DualAveraging(np.log(rows.initial_step(cfg.step_size)), cfg.target_accept)
    windows = _windows(W) if cfg.adapt_metric else []
    stats = None
    acc = np.zeros(rows.M)
    for i in range(W):
        out = rows.transition(np.exp(da.log_eps), cfg.num_leapfrog, cfg.jitter)
        da.update(out["accept"])
        acc += np.nan_to_num(out["accept"], nan=0.0)
        if windows and windows[0][0] <= i < windows[0][1]:
            stats = stats or _Welford(rows.w)
            stats.add(rows.w)
            if i + 1 == windows[0][1]:
                rows.inv_metric = stats.regularized().to(rows.w.dtype)
                windows.pop(0)
                stats = None
                da.restart(da.log_eps)
        if bar is not None:
            bar.update(1)
    return np.exp(da.log_eps_bar), acc / W


def _run_rows(pot, cfg: HMCConfig, w0: Tensor, seeds, bar) -> dict:
    """Warm-up and sampling of a block of chains (every quantity per chain)."""
    rows = _Rows(pot, cfg, w0, seeds)
    M, S = rows.M, cfg.num_samples
    eps, warm_acc = _warmup(rows, cfg, bar)
    n_warm = rows.n_grad
    losses, norms, acc, div = np.empty((M, S)), np.empty((M, S)), np.empty((M, S)), np.zeros((M, S), bool)
    samples = torch.empty(M, S, rows.P, dtype=rows.w.dtype, device=rows.w.device) if cfg.keep_samples else None
    for s in range(S):
        out = rows.transition(eps, cfg.num_leapfrog, cfg.jitter)
        losses[:, s] = rows.loss.double().cpu().numpy()
        norms[:, s] = rows.w.double().norm(dim=1).cpu().numpy()
        acc[:, s], div[:, s] = out["accept"], out["divergent"]
        if samples is not None:
            samples[:, s] = rows.w
        if bar is not None:
            bar.update(1)
    im = rows.inv_metric.double()
    return {"samples": samples, "losses": losses, "norms": norms, "accept": acc, "divergent": div, "step_size": eps,
            "warmup_accept": warm_acc, "n_grad_warmup": n_warm, "n_grad": rows.n_grad,
            "metric_range": torch.stack([im.min(1).values, im.median(1).values, im.max(1).values], 1).cpu().numpy()}


def run_hmc(potential, w0: Tensor, config: HMCConfig, start_ids: Sequence[int], *, workers: Optional[int] = None,
            progress: bool = False) -> dict:
    """HMC chains from the rows of ``w0 [M, P]`` (chain m's generator from ``(config.seed,
    start_ids[m])``); rows may be split over threads (``workers``, automatic by default: as the
    SGLD chain runner does), which changes nothing but round-off. Returns per-chain arrays."""
    pot = as_potential(potential)
    check_weights(w0, "w0")
    M = w0.shape[0]
    if len(start_ids) != M:
        raise ValueError(f"start_ids has {len(start_ids)} entries for {M} chains")
    seeds = chain_seeds(config.seed, [int(s) for s in start_ids], 1)
    workers = _auto_workers(pot, w0) if workers is None else max(1, min(int(workers), M))
    edges = np.linspace(0, M, workers + 1).round().astype(int)
    bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.num_warmup + config.num_samples, desc=f"HMC {M} chains", unit="transition",
                   delay=2.0, leave=False)
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), single_threaded_blas():
            if len(bounds) == 1:
                parts = [_run_rows(pot, config, w0, seeds, bar)]
            else:
                with ThreadPoolExecutor(max_workers=len(bounds)) as ex:
                    parts = list(ex.map(lambda j: _run_rows(pot, config, w0[bounds[j][0]:bounds[j][1]],
                                                            seeds[bounds[j][0]:bounds[j][1]], bar if j == 0 else None),
                                        range(len(bounds))))
    finally:
        if bar is not None:
            bar.close()
    out = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray) else None)
           for k in ("losses", "norms", "accept", "divergent", "step_size", "warmup_accept", "metric_range")}
    out["samples"] = None if parts[0]["samples"] is None else torch.cat([p["samples"] for p in parts])
    # gradient evaluations per chain (every chain of a shard takes the same number of calls)
    out["n_grad"] = np.concatenate([np.full(b - a, p["n_grad"]) for p, (a, b) in zip(parts, bounds)])
    out["n_grad_warmup"] = np.concatenate([np.full(b - a, p["n_grad_warmup"]) for p, (a, b) in zip(parts, bounds)])
    out["wall_s"] = time.perf_counter() - t0
    return out


def sample_hmc(w_start: Tensor, potential=None, *, spec=None, data=None, state=None,
               config: Optional[HMCConfig] = None, start_ids: Optional[Sequence[int]] = None,
               groups: Optional[Sequence] = None, workers: Optional[int] = None,
               progress: bool = True) -> HMCResult:
    """One HMC chain from each row of ``w_start [S, P]`` (module docstring), on ``potential`` or
    on ``spec`` + ``data`` (a model family and ``(x, y)`` / Dataset / DataLoader; full batch).
    ``start_ids`` (default 0..S-1) seed the chains; ``groups`` labels each start."""
    from .model_potential import starting_potential

    config = config if config is not None else HMCConfig()
    if not isinstance(config, HMCConfig):
        raise ValueError(f"config must be an HMCConfig, got {type(config).__name__}")
    pot = starting_potential(w_start, potential, spec, data, state)
    S = w_start.shape[0]
    start_ids = list(range(S)) if start_ids is None else [int(s) for s in start_ids]
    groups = np.asarray(list(groups) if groups is not None else [0] * S)
    if groups.shape != (S,):
        raise ValueError(f"groups must have one label per start ({S}), got shape {groups.shape}")
    out = run_hmc(pot, w_start, config, start_ids, workers=workers, progress=progress)
    return HMCResult.from_run(out, config=config, nbeta=pot.n / config.temperature, n_train=int(pot.n),
                              start_ids=np.asarray(start_ids), groups=groups, mode=pot.mode)
