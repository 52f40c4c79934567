"""Local learning coefficient (LLC) estimation with batched localized SGLD.

Estimator (paper eq 25, devinterp 1.x convention, docs/methods.md#measured-quantities)::

    λ̂(w*) = nβ · ( mean over draws of L_B(w_draw) − L(w*) )

where the draws come from localized SGLD started at w*
(``Δw = −(ε/2)[nβ ∇L_B(w) + γ (w − w*)] + N(0, ε σ² I)``, see
:mod:`sgdbayes.sampling.sgld`), ``L_B`` is the minibatch mean loss at the
pre-update weights of each draw step (devinterp records exactly this), and
``L(w*)`` is the *full training-set* mean loss at w* (devinterp 1.x uses the
mean over ``num_chains`` minibatches instead, a noisier unbiased estimate of the
same number; we compute it exactly and pass the same value to the devinterp
backend so the two agree by construction on this term).

nβ: ``"batch"`` → B / log B (devinterp 1.x ``default_nbeta``, what the paper's
numbers used), ``"n"`` → n / log n (the WBIC temperature of eq 25), or a number.
It is always stored in the result.

Per model: λ̂ = mean over valid chains of the per-chain λ̂; chain std (ddof 1);
diverged chains (any non-finite loss/gradient/weight) are excluded and counted;
a model with every chain diverged gets NaN **and** ``all_diverged=True``.
Negative λ̂ are kept and flagged. Trend check: per chain z-test of the
second-half vs first-half mean draw loss (autocorrelation-aware, see
:func:`sgdbayes.sampling.diagnostics.trend_test`); per model the chain z's are
combined by Stouffer (Σz/√C); ``trend_flag`` when |z| > ``trend_z`` (default 3).
A flagged model's chains have not equilibrated: the paper's settings
(ε=1e-5, γ=100, 400 draws) have a localization relaxation time 2/(εγ) = 2000
steps, five times the draws, so flags are expected there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .diagnostics import trend_test
from .sgld import (
    ChainStreams,
    DrawSchedule,
    MLPPotential,
    ModulePotential,
    SGLDConfig,
    _check_int,
    _check_pos_float,
    chain_seeds,
    check_weights,
    default_nbeta,
    run_chains,
)

__all__ = [
    "LLCConfig",
    "LLCResult",
    "estimate_llc",
    "estimate_llc_potential",
    "LLCTrainingHook",
    "dataset_tensors",
]


@dataclass(frozen=True)
class LLCConfig:
    """Settings of an LLC estimate (all validated on construction).

    step_size ε, localization γ, nbeta ("batch" | "n" | number), noise_level σ,
    weight_decay ω, batch_size B of SGLD minibatches (None = full batch),
    num_chains, num_draws, num_burnin_steps, num_steps_bw_draws, seed (base of
    the per-chain seeds), trend_z (|z| threshold of the trend flag).

    Presets: :meth:`paper` (Table 3: ε 1e-5, γ 100, 1 chain, 400 draws, 0 burn-in,
    1 step between draws; Table 3 gives no SGLD batch size, we use the training
    batch size 128), :meth:`equilibrating` (ε 1e-4, γ 100 → relaxation time
    2/(εγ) = 200 steps; 1000 burn-in steps = 5 relaxation times; 4 chains).
    The default (``LLCConfig()``) is the paper's kernel with 4 chains, so a chain
    std exists.
    """

    step_size: float = 1e-5
    localization: float = 100.0
    nbeta: Union[float, str] = "batch"
    noise_level: float = 1.0
    weight_decay: float = 0.0
    batch_size: Optional[int] = 128
    num_chains: int = 4
    num_draws: int = 400
    num_burnin_steps: int = 0
    num_steps_bw_draws: int = 1
    seed: int = 0
    trend_z: float = 3.0

    def __post_init__(self):
        _check_pos_float("step_size (epsilon)", self.step_size)
        _check_pos_float("localization (gamma)", self.localization, allow_zero=True)
        _check_pos_float("noise_level", self.noise_level)
        _check_pos_float("weight_decay", self.weight_decay, allow_zero=True)
        _check_pos_float("trend_z", self.trend_z)
        if isinstance(self.nbeta, str):
            if self.nbeta not in ("batch", "n"):
                raise ValueError(f"nbeta must be 'batch' (B/log B), 'n' (n/log n) or a number > 0, got {self.nbeta!r}")
        else:
            _check_pos_float("nbeta", self.nbeta)
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, 1)
        _check_int("num_chains", self.num_chains, 1)
        _check_int("seed", self.seed, 0)
        DrawSchedule(self.num_draws, self.num_burnin_steps, self.num_steps_bw_draws)

    @classmethod
    def paper(cls, **overrides) -> "LLCConfig":
        base = dict(step_size=1e-5, localization=100.0, nbeta="batch", batch_size=128, num_chains=1,
                    num_draws=400, num_burnin_steps=0, num_steps_bw_draws=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def equilibrating(cls, **overrides) -> "LLCConfig":
        base = dict(step_size=1e-4, localization=100.0, nbeta="batch", batch_size=128, num_chains=4,
                    num_draws=400, num_burnin_steps=1000, num_steps_bw_draws=1)
        base.update(overrides)
        return cls(**base)

    def effective_batch(self, n: int) -> int:
        return n if self.batch_size is None else min(self.batch_size, n)

    def resolve_nbeta(self, n: int) -> float:
        """nβ as a number for training-set size n."""
        if self.nbeta == "batch":
            return default_nbeta(self.effective_batch(n))
        if self.nbeta == "n":
            return default_nbeta(n)
        return float(self.nbeta)

    def nbeta_rule(self) -> str:
        return {"batch": "B/log B", "n": "n/log n"}.get(self.nbeta, "fixed") if isinstance(self.nbeta, str) else "fixed"

    def kernel(self, n: int) -> SGLDConfig:
        return SGLDConfig(step_size=self.step_size, nbeta=self.resolve_nbeta(n), localization=self.localization,
                          weight_decay=self.weight_decay, noise_level=self.noise_level)

    @property
    def schedule(self) -> DrawSchedule:
        return DrawSchedule(self.num_draws, self.num_burnin_steps, self.num_steps_bw_draws)


@dataclass
class LLCResult:
    """LLC estimates of K models (eq 25), with everything needed to audit them.

    Arrays: ``llc [K]`` (mean over valid chains; NaN iff ``all_diverged``),
    ``llc_std [K]`` (chain std, ddof 1; NaN with < 2 valid chains),
    ``llc_per_chain [K, C]`` (NaN for diverged chains), ``loss_traces [K, C, D]``
    (minibatch loss at each draw), ``init_loss [K]`` (full-data L(w*)),
    ``diverged [K, C]``, ``trend_z [K]`` (Stouffer-combined chain z of
    second-half minus first-half mean loss), ``trend_rel [K]`` (the same drift
    in λ units, nβ·Δ, divided by |λ̂|).
    """

    model_ids: np.ndarray
    llc: np.ndarray
    llc_std: np.ndarray
    llc_per_chain: np.ndarray
    loss_traces: np.ndarray
    init_loss: np.ndarray
    diverged: np.ndarray
    trend_z: np.ndarray
    trend_rel: np.ndarray
    nbeta: float
    n_train: int
    config: LLCConfig
    backend: str = "batched"
    wall_s: float = float("nan")

    @property
    def n_models(self) -> int:
        return int(self.llc.shape[0])

    @property
    def n_valid_chains(self) -> np.ndarray:
        return (~self.diverged).sum(axis=1)

    @property
    def n_diverged(self) -> np.ndarray:
        return self.diverged.sum(axis=1)

    @property
    def all_diverged(self) -> np.ndarray:
        return self.n_valid_chains == 0

    @property
    def negative(self) -> np.ndarray:
        return np.isfinite(self.llc) & (self.llc < 0)

    @property
    def trend_flag(self) -> np.ndarray:
        return np.isfinite(self.trend_z) & (np.abs(self.trend_z) > self.config.trend_z)

    @property
    def llc_se(self) -> np.ndarray:
        """Monte-Carlo standard error over chains: chain std / sqrt(valid chains)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.llc_std / np.sqrt(self.n_valid_chains)

    @property
    def mean_draw_loss(self) -> np.ndarray:
        t = np.where(self.diverged[:, :, None], np.nan, self.loss_traces)
        with np.errstate(invalid="ignore"):
            out = np.full(self.n_models, np.nan)
            ok = ~self.all_diverged
            out[ok] = np.nanmean(t[ok].reshape(ok.sum(), -1), axis=1)
        return out

    def settings(self) -> dict:
        d = asdict(self.config)
        d.update(nbeta_value=self.nbeta, nbeta_rule=self.config.nbeta_rule(), n_train=self.n_train,
                 sgld_batch=self.config.effective_batch(self.n_train), backend=self.backend)
        return d

    def to_frame(self, per_chain: bool = False):
        """One row per model (or per model x chain with ``per_chain=True``)."""
        import pandas as pd

        if per_chain:
            K, C = self.llc_per_chain.shape
            return pd.DataFrame({
                "model_id": np.repeat(self.model_ids, C),
                "chain": np.tile(np.arange(C), K),
                "llc": self.llc_per_chain.ravel(),
                "diverged": self.diverged.ravel(),
                "mean_draw_loss": self.loss_traces.mean(axis=2).ravel(),
            })
        return pd.DataFrame({
            "model_id": self.model_ids,
            "llc": self.llc,
            "llc_std": self.llc_std,
            "llc_se": self.llc_se,
            "n_chains_valid": self.n_valid_chains,
            "n_diverged": self.n_diverged,
            "all_diverged": self.all_diverged,
            "negative": self.negative,
            "trend_z": self.trend_z,
            "trend_rel": self.trend_rel,
            "trend_flag": self.trend_flag,
            "init_loss": self.init_loss,
            "mean_draw_loss": self.mean_draw_loss,
            "nbeta": np.full(self.n_models, self.nbeta),
        })

    def summary(self, max_rows: int = 20) -> str:
        c = self.config
        K, C = self.llc_per_chain.shape
        lines = [
            f"LLC estimates (eq 25: llc = nbeta * (mean draw loss - L(w*))), backend={self.backend}",
            f"  eps={c.step_size:g} gamma={c.localization:g} nbeta={self.nbeta:.4g} ({c.nbeta_rule()}) "
            f"sigma={c.noise_level:g} weight_decay={c.weight_decay:g} batch={c.effective_batch(self.n_train)} "
            f"n={self.n_train}",
            f"  chains={C} draws={c.num_draws} burn-in={c.num_burnin_steps} steps/draw={c.num_steps_bw_draws} "
            f"seed={c.seed} wall={self.wall_s:.2f}s",
        ]
        fin = self.llc[np.isfinite(self.llc)]
        if fin.size:
            lines.append(f"  models={K}: llc mean={fin.mean():.4g} median={np.median(fin):.4g} "
                         f"min={fin.min():.4g} max={fin.max():.4g}")
        lines.append(f"  negative llc: {int(self.negative.sum())}/{K} models (kept, flagged)")
        lines.append(f"  trend flag (|z| > {c.trend_z:g}, draws not stationary): {int(self.trend_flag.sum())}/{K} models")
        lines.append(f"  diverged chains: {int(self.diverged.sum())}/{K * C} (excluded from means)")
        if self.all_diverged.any():
            lines.append(f"  WARNING: {int(self.all_diverged.sum())} model(s) had ALL chains diverge: llc = NaN "
                         f"(all_diverged=True): ids {self.model_ids[self.all_diverged][:10].tolist()}")
        if C == 1:
            lines.append("  note: 1 chain -> no Monte-Carlo error estimate (llc_std is NaN)")
        df = self.to_frame()
        cols = ["model_id", "llc", "llc_std", "n_chains_valid", "negative", "trend_z", "trend_flag", "all_diverged"]
        shown = df[cols].head(max_rows)
        lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if K > max_rows:
            lines.append(f"  ... {K - max_rows} more rows (to_frame() for all)")
        return "\n".join(lines)

    def __repr__(self) -> str:  # keep repr short; summary() is the table
        return (f"LLCResult(models={self.n_models}, chains={self.llc_per_chain.shape[1]}, "
                f"nbeta={self.nbeta:.4g}, backend={self.backend!r})")


def _finalize(model_ids, losses: np.ndarray, init_loss: np.ndarray, diverged: np.ndarray, nbeta: float,
              n_train: int, config: LLCConfig, backend: str, wall_s: float) -> LLCResult:
    """Turn draw-loss traces ``[K, C, D]`` into an :class:`LLCResult` (shared by both backends)."""
    losses = np.asarray(losses, dtype=np.float64)
    init_loss = np.asarray(init_loss, dtype=np.float64)
    diverged = np.asarray(diverged, dtype=bool) | ~np.isfinite(losses).all(axis=2)
    K, C, D = losses.shape
    per_chain = nbeta * (losses.mean(axis=2) - init_loss[:, None])
    per_chain = np.where(diverged, np.nan, per_chain)
    n_valid = (~diverged).sum(axis=1)
    llc = np.full(K, np.nan)
    std = np.full(K, np.nan)
    ok = n_valid > 0
    with np.errstate(invalid="ignore"):
        llc[ok] = np.nanmean(per_chain[ok], axis=1)
        ok2 = n_valid > 1
        std[ok2] = np.nanstd(per_chain[ok2], axis=1, ddof=1)
    trend_z = np.full(K, np.nan)
    trend_rel = np.full(K, np.nan)
    for k in range(K):
        zs, diffs = [], []
        for c in range(C):
            if diverged[k, c]:
                continue
            tr = trend_test(losses[k, c])
            if np.isfinite(tr.z):
                zs.append(tr.z)
                diffs.append(tr.diff)
        if zs:
            trend_z[k] = float(np.sum(zs) / np.sqrt(len(zs)))
            with np.errstate(divide="ignore", invalid="ignore"):
                trend_rel[k] = nbeta * float(np.mean(diffs)) / abs(llc[k]) if llc[k] != 0 else np.inf
    return LLCResult(model_ids=np.asarray(model_ids), llc=llc, llc_std=std, llc_per_chain=per_chain,
                     loss_traces=losses, init_loss=init_loss, diverged=diverged, trend_z=trend_z,
                     trend_rel=trend_rel, nbeta=float(nbeta), n_train=int(n_train), config=config,
                     backend=backend, wall_s=float(wall_s))


def _model_ids(model_ids, K: int) -> list[int]:
    if model_ids is None:
        return list(range(K))
    ids = [int(m) for m in model_ids]
    if len(ids) != K:
        raise ValueError(f"model_ids has {len(ids)} entries but there are {K} models")
    if any(m < 0 for m in ids):
        raise ValueError("model_ids must be non-negative integers")
    return ids


def estimate_llc_potential(potential, w_star: Tensor, config: Optional[LLCConfig] = None,
                           model_ids: Optional[Sequence[int]] = None) -> LLCResult:
    """Batched LLC of K models ``w_star [K, P]`` under a batched potential (eq 25).

    ``potential(w [M,P], idx [M,B] | None) -> [M]`` with attribute ``n``. Runs
    ``M = K * num_chains`` chains as one stacked computation; chain c of model k
    uses seeds from ``(config.seed, model_ids[k], c)``.
    """
    config = config if config is not None else LLCConfig()
    if not isinstance(config, LLCConfig):
        raise ValueError(f"config must be an LLCConfig, got {type(config).__name__}")
    check_weights(w_star, "w_star")
    K, P = w_star.shape
    ids = _model_ids(model_ids, K)
    n = int(potential.n)
    C = config.num_chains
    kernel = config.kernel(n)
    t0 = time.perf_counter()
    with torch.no_grad():
        init_loss = potential(w_star.detach(), None)
    if init_loss.shape != (K,):
        raise ValueError(f"potential returned shape {tuple(init_loss.shape)} for {K} models")
    if not bool(torch.isfinite(init_loss).all()):
        bad = torch.nonzero(~torch.isfinite(init_loss)).flatten().tolist()
        raise ValueError(f"L(w*) is not finite for models {bad[:10]}")
    w0 = w_star.detach().repeat_interleave(C, dim=0)
    streams = ChainStreams(chain_seeds(config.seed, ids, C), n=n, batch_size=config.batch_size, n_params=P,
                           device=w_star.device, dtype=w_star.dtype)
    run = run_chains(potential, w0, kernel, config.schedule, streams)
    losses = run.losses.reshape(K, C, -1).cpu().numpy()
    div = run.diverged.reshape(K, C).cpu().numpy()
    return _finalize(ids, losses, init_loss.cpu().numpy(), div, kernel.nbeta, n, config, "batched",
                     time.perf_counter() - t0)


def dataset_tensors(data) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the whole training set from a ``DataLoader``, a torch ``Dataset``, a
    :class:`sgdbayes.data.Dataset` (its train split) or an ``(x, y)`` pair.

    A DataLoader contributes only its dataset (all of it, in order); SGLD draws its
    own minibatches of ``LLCConfig.batch_size``.
    """
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    elif isinstance(getattr(data, "x_train", None), Tensor) and isinstance(getattr(data, "y_train", None), Tensor):
        x, y = data.x_train, data.y_train  # sgdbayes.data.Dataset: the training split
    else:
        ds = data.dataset if isinstance(data, DataLoader) else data
        if not isinstance(ds, Dataset):
            raise ValueError(f"data must be a DataLoader, Dataset or (x, y) tensors, got {type(data).__name__}")
        batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("the dataset must yield (x, y) pairs")
        x, y = batch
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different numbers of samples: {x.shape[0]} vs {y.shape[0]}")
    return x, y


def _unpack_ensemble(target, data):
    """(weights [K,P], spec, (x, y), seeds) of an engine ``EnsembleResult``.

    The result does not store its data: ``data`` (a :class:`sgdbayes.data.Dataset`,
    DataLoader or (x, y)) is used when given, else the data set is rebuilt
    deterministically from ``result.config.dataset`` / ``dataset_options``."""
    w = getattr(target, "w_final", None)
    spec = getattr(target, "spec", None)
    if not isinstance(w, Tensor) or spec is None:
        raise ValueError("expected an EnsembleResult-like object with .w_final [K,P] and .spec "
                         f"(got {type(target).__name__})")
    if data is None:
        cfg = getattr(target, "config", None)
        if cfg is None or not hasattr(cfg, "dataset"):
            raise ValueError("data= is required: the ensemble result has no dataset config")
        from ..data import load_dataset

        data = load_dataset(cfg.dataset, dtype=w.dtype, **dict(getattr(cfg, "dataset_options", {}) or {}))
    x, y = dataset_tensors(data)
    seeds = getattr(target, "seeds", None)
    return w, spec, (x, y), seeds


def estimate_llc(target, data=None, *, spec=None, config: Optional[LLCConfig] = None, backend: str = "batched",
                 model_ids: Optional[Sequence[int]] = None, criterion: Optional[Callable] = None,
                 potential=None) -> LLCResult:
    """Estimate λ̂ (eq 25) for several models at once.

    ``target`` may be

    * a weights tensor ``[K, P]`` with ``spec`` (an :class:`~sgdbayes.models.MLPSpec`)
      and ``data`` = ``(x, y)``, a Dataset or a DataLoader;
    * a weights tensor ``[K, P]`` with ``potential`` (any batched potential);
    * an engine ``EnsembleResult`` (``w_final``, ``spec``; model ids = its seeds;
      ``data`` = its :class:`sgdbayes.data.Dataset`, rebuilt from its config if omitted);
    * a list of ``nn.Module`` (one architecture) with ``data``; ``criterion``
      (mean loss, default cross-entropy).

    ``backend="batched"`` (default) runs all models x chains stacked;
    ``backend="devinterp"`` runs devinterp 1.3.2's
    ``estimate_learning_coeff_with_summary`` model by model with the same
    settings (reference implementation, slow).
    """
    config = config if config is not None else LLCConfig()
    if not isinstance(config, LLCConfig):
        raise ValueError(f"config must be an LLCConfig, got {type(config).__name__}")
    if backend not in ("batched", "devinterp"):
        raise ValueError(f"backend must be 'batched' or 'devinterp', got {backend!r}")
    modules = None
    if isinstance(target, (list, tuple)) and target and all(isinstance(m, torch.nn.Module) for m in target):
        modules = list(target)
        if data is None:
            raise ValueError("data (a DataLoader, Dataset or (x, y)) is required with a list of modules")
        x, y = dataset_tensors(data)
        pot = ModulePotential(modules, x, y, criterion)
        w = pot.w_star
    elif isinstance(target, Tensor):
        w = target
        if potential is not None:
            pot = potential
        else:
            if spec is None or data is None:
                raise ValueError("a weights tensor needs spec= and data=, or potential=")
            x, y = dataset_tensors(data)
            pot = MLPPotential(spec, x, y)
    else:
        w, spec, (x, y), seeds = _unpack_ensemble(target, data)
        if model_ids is None and seeds is not None:
            model_ids = [int(s) for s in seeds]
        pot = MLPPotential(spec, x, y)
    check_weights(w, "weights")
    if hasattr(pot, "n_params") and w.shape[1] != pot.n_params:
        raise ValueError(f"weights have P = {w.shape[1]} columns but the model has {pot.n_params} parameters")
    if backend == "batched":
        return estimate_llc_potential(pot, w, config, model_ids)
    from .devinterp_backend import estimate_llc_devinterp

    if modules is None:
        if spec is None:
            raise ValueError("backend='devinterp' needs modules or an MLPSpec (a generic potential has no nn.Module)")
        modules = [spec.to_module(w[k]) for k in range(w.shape[0])]
    return estimate_llc_devinterp(modules, (pot.x, pot.y), config, criterion=criterion, model_ids=model_ids)


# ----------------------------------------------------------------------------
# LLC along training
# ----------------------------------------------------------------------------

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

    ``hook(state)`` reads ``state.step``, ``state.w [k,P]``, ``state.spec``,
    ``state.seeds`` and ``state.data`` (an :class:`sgdbayes.data.Dataset`; its
    train split) and returns per-seed arrays, which the engine records. The
    engine may run seeds in chunks; records are kept per (step, seed). Without
    the engine call :meth:`record` with ``(step, w, spec, x, y, model_ids)``.
    Each estimate uses base seed ``config.seed + step`` so successive estimates
    get fresh SGLD noise; model ids are the run seeds (batching invariant).
    """

    def __init__(self, config: Optional[LLCConfig] = None, every: int = 100, x: Optional[Tensor] = None,
                 y: Optional[Tensor] = None, keep_results: bool = False, name: str = "llc"):
        self.config = config if config is not None else LLCConfig()
        if not isinstance(self.config, LLCConfig):
            raise ValueError(f"config must be an LLCConfig, got {type(self.config).__name__}")
        self.every = _check_int("every", every, 1)
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
        res = self.record(step, state.w, state.spec, x, y, model_ids=getattr(state, "seeds", None))
        return dict(llc=res.llc, llc_std=res.llc_std, negative=res.negative, trend_flag=res.trend_flag,
                    n_diverged=res.n_diverged, all_diverged=res.all_diverged)

    def record(self, step: int, w: Tensor, spec, x: Tensor, y: Tensor,
               model_ids: Optional[Sequence[int]] = None) -> LLCResult:
        cfg = replace(self.config, seed=self.config.seed + int(step))
        res = estimate_llc_potential(MLPPotential(spec, x, y), w.detach(), cfg,
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
        import pandas as pd

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
        last = _check_int("last", last, 1)
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
