"""Local learning coefficient (LLC) estimation with batched localized SGLD (paper eq 25;
:mod:`sgdbayes.sampling.llc_types` states the estimator and the result).

``estimate_llc`` accepts an ensemble of any model family, stacked weights with a family or a
potential, or a list of ``nn.Module`` s; ``backend="devinterp"`` runs devinterp 1.3.2 model by
model with the same settings (the reference implementation).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .chains import run_chains
from .data_args import SamplingData, dataset_tensors, sampling_data
from .devinterp_backend import estimate_llc_devinterp
from .llc_types import LLCConfig, LLCResult, finalize, model_ids_of
from .mala import MALAAcceptance
from .model_potential import potential_for
from .module_potential import ModulePotential
from .potentials import as_potential, check_weights
from .streams import ChainStreams, chain_seeds

__all__ = ["LLCConfig", "LLCResult", "LLCWarning", "estimate_llc", "estimate_llc_potential", "dataset_tensors"]


def estimate_llc_potential(potential, w_star: Tensor, config: Optional[LLCConfig] = None,
                           model_ids: Optional[Sequence[int]] = None, *, progress: bool = False) -> LLCResult:
    """Batched LLC of K models ``w_star [K, P]`` under a potential (eq 25).

    Runs ``M = K * num_chains`` chains as one stacked computation; chain c of model k uses
    seeds from ``(config.seed, model_ids[k], c)``."""
    config = _config(config)
    pot = as_potential(potential)
    check_weights(w_star, "w_star")
    K, P = w_star.shape
    ids = model_ids_of(model_ids, K)
    n, C = int(pot.n), config.num_chains
    kernel = config.kernel(n)
    t0 = time.perf_counter()
    with torch.no_grad():
        init_loss = pot(w_star.detach(), None)
    if init_loss.shape != (K,):
        raise ValueError(f"potential returned shape {tuple(init_loss.shape)} for {K} models")
    if not bool(torch.isfinite(init_loss).all()):
        bad = torch.nonzero(~torch.isfinite(init_loss)).flatten().tolist()
        raise ValueError(f"L(w*) is not finite for models {bad[:10]}")
    w0 = w_star.detach().repeat_interleave(C, dim=0)
    streams = ChainStreams(chain_seeds(config.seed, ids, C), n=n, batch_size=config.batch_size, n_params=P,
                           device=w_star.device, dtype=w_star.dtype)
    obs = ([MALAAcceptance.for_draws(kernel, config.schedule, config.mala_transitions, config.mala_batch)]
           if config.mala_transitions else [])
    run = run_chains(pot, w0, kernel, config.schedule, streams, observers=obs, progress=progress,
                     desc=f"LLC K={K} x {C} chains")
    mala = run.observed["mala"].reshape(K, C, -1).cpu().numpy() if obs else None
    res = finalize(ids, run.losses.reshape(K, C, -1).cpu().numpy(), init_loss.cpu().numpy(),
                   run.diverged.reshape(K, C).cpu().numpy(), kernel.nbeta, n, config, "batched",
                   time.perf_counter() - t0, mode=pot.mode, mala=mala)
    for line in res.advice():
        warnings.warn(f"LLC: {line}", LLCWarning, stacklevel=2)
    return res


class LLCWarning(UserWarning):
    """An LLC estimate whose checks failed (drifting chains, MALA acceptance off target); the
    message names the setting to change."""


def _config(config) -> LLCConfig:
    config = config if config is not None else LLCConfig()
    if not isinstance(config, LLCConfig):
        raise ValueError(f"config must be an LLCConfig, got {type(config).__name__}")
    return config


def estimate_llc(target, data=None, *, spec=None, config: Optional[LLCConfig] = None, backend: str = "batched",
                 model_ids: Optional[Sequence[int]] = None, criterion: Optional[Callable] = None,
                 evaluate: Optional[Callable] = None, potential=None, state=None, skip_diverged: bool = True,
                 progress: bool = True) -> LLCResult:
    """Estimate λ̂ (eq 25) for several models at once.

    ``target`` may be

    * an engine ``EnsembleResult`` of any family (model ids = its seeds; ``data`` = its
      training data, rebuilt from ``result.data_source`` when omitted; its per-seed state, e.g.
      BatchNorm running statistics, is used in eval mode). Seeds whose training diverged are
      skipped with ``skip_diverged`` (NaN, ``excluded=True``), else an error;
    * a weights tensor ``[K, P]`` with ``spec`` (a model family, e.g. ``MLPSpec`` or
      ``ensemble.spec``; ``state`` its per-model state) and ``data``, or with ``potential``;
    * a list of ``nn.Module`` (one architecture, in eval mode when they hold BatchNorm or
      dropout) with ``data``: ``(x, y)``, a Dataset, a DataLoader (its batch size is the SGLD
      batch size) or dict batches with ``evaluate(model, batch) -> mean loss``; ``criterion``
      (a mean loss; cross-entropy by default, for integer labels only). Frozen parameters are
      held fixed.

    ``backend="devinterp"`` runs devinterp 1.3.2's ``estimate_learning_coeff_with_summary``
    model by model with the same settings (slow). ``progress``: a tqdm bar on long runs.
    """
    config = _config(config)
    if backend not in ("batched", "devinterp"):
        raise ValueError(f"backend must be 'batched' or 'devinterp', got {backend!r}")
    if isinstance(target, nn.Module):
        raise ValueError(f"estimate_llc got one {type(target).__name__}: pass a list of modules (e.g. [model]); "
                         f"several models of one architecture are estimated together")
    if isinstance(target, (list, tuple)) and target and all(isinstance(m, nn.Module) for m in target):
        return _modules(list(target), data, config, backend, model_ids, criterion, evaluate, progress)
    if isinstance(target, Tensor):
        return _weights(target, data, spec, state, potential, config, backend, model_ids, progress)
    return _ensemble(target, data, config, backend, model_ids, skip_diverged, progress)


def _with_loader_batch(config: LLCConfig, d: SamplingData) -> LLCConfig:
    """A DataLoader's batch size is the SGLD batch size (so nβ = B/log B follows it)."""
    return config if d.batch_size is None else dataclasses.replace(config, batch_size=int(d.batch_size))


def _modules(modules, data, config, backend, model_ids, criterion, evaluate, progress) -> LLCResult:
    if data is None:
        raise ValueError("data (a DataLoader, Dataset or (x, y)) is required with a list of modules")
    d = sampling_data(data)
    config = _with_loader_batch(config, d)
    pot = ModulePotential(modules, d, criterion, evaluate)
    if backend == "devinterp":
        if d.is_dict or evaluate is not None:
            raise ValueError("backend='devinterp' here takes (x, y) data with a criterion, not evaluate=")
        return estimate_llc_devinterp(modules, (d.x, d.y), config, criterion=criterion, model_ids=model_ids)
    return estimate_llc_potential(pot, pot.w_star, config, model_ids, progress=progress)


def _weights(w, data, spec, state, potential, config, backend, model_ids, progress) -> LLCResult:
    if potential is not None:
        pot = as_potential(potential)
    elif spec is None or data is None:
        raise ValueError("a weights tensor needs spec= and data=, or potential=")
    else:
        d = sampling_data(data)
        config = _with_loader_batch(config, d)
        pot = potential_for(spec, d.x, d.y, state)
    check_weights(w, "weights")
    if pot.n_params is not None and w.shape[1] != pot.n_params:
        raise ValueError(f"weights have P = {w.shape[1]} columns but the model has {pot.n_params} parameters")
    if backend == "batched":
        return estimate_llc_potential(pot, w, config, model_ids, progress=progress)
    if spec is None:
        raise ValueError("backend='devinterp' needs modules or a model family (a generic potential has no nn.Module)")
    mods = [spec.module(w[k], None if state is None else {n: v[k] for n, v in state.items()}).eval()
            for k in range(w.shape[0])]
    return estimate_llc_devinterp(mods, (pot.x, pot.y), config, model_ids=model_ids)


def _ensemble_data(target, data):
    """The training data of an ensemble: ``data`` when given, else rebuilt from its source."""
    if data is not None:
        return data
    src = target.data_source
    if src is None:
        raise ValueError("this ensemble was trained on data passed in as tensors: pass data= (the same data)")
    from ..data import load_dataset

    return load_dataset(src["name"], dtype=target.w_final.dtype, **dict(src["options"]))


def _ensemble(target, data, config, backend, model_ids, skip_diverged, progress) -> LLCResult:
    from ..engine import EnsembleResult

    if not isinstance(target, EnsembleResult):
        raise ValueError(f"estimate_llc takes an EnsembleResult, a weights tensor or a list of modules, "
                         f"got {type(target).__name__}")
    ids = [int(s) for s in target.seeds] if model_ids is None else model_ids_of(model_ids, target.K)
    div = target.diverged
    if div.any() and not skip_diverged:
        raise ValueError(f"seeds {np.asarray(ids)[div][:10].tolist()} diverged in training; skip_diverged=True "
                         f"estimates the others")
    keep = np.flatnonzero(~div)
    d = sampling_data(_ensemble_data(target, data))
    state = None if target.state is None else {k: v[torch.as_tensor(keep)] for k, v in target.state.items()}
    w = target.w_final[torch.as_tensor(keep)]
    if keep.size == 0:
        return _all_excluded(ids, config, d.n)
    x = d.x.to(w.dtype) if d.x.is_floating_point() else d.x
    res = _weights(w, (x, d.y), target.spec, state, None, config, backend, [ids[i] for i in keep], progress)
    return _scatter(res, keep, ids) if keep.size < len(ids) else res


def _scatter(res: LLCResult, keep: np.ndarray, ids: list) -> LLCResult:
    """Per-model arrays of the kept models placed back among all K (skipped: NaN, excluded)."""
    K = len(ids)

    def put(a, fill):
        out = np.full((K, *a.shape[1:]), fill, dtype=np.result_type(a.dtype, type(fill)))
        out[keep] = a
        return out

    excluded = np.ones(K, dtype=bool)
    excluded[keep] = False
    return dataclasses.replace(
        res, model_ids=np.asarray(ids), llc=put(res.llc, np.nan), llc_std=put(res.llc_std, np.nan),
        llc_per_chain=put(res.llc_per_chain, np.nan), loss_traces=put(res.loss_traces, np.nan),
        init_loss=put(res.init_loss, np.nan), diverged=put(res.diverged, True), trend_z=put(res.trend_z, np.nan),
        trend_rel=put(res.trend_rel, np.nan), excluded=excluded, trend_z_chain=put(res.trend_z_chain, np.nan),
        mala_chain=put(res.mala_chain, np.nan))


def _all_excluded(ids, config: LLCConfig, n: int) -> LLCResult:
    K, C, D = len(ids), config.num_chains, config.num_draws
    res = finalize(ids, np.full((K, C, D), np.nan), np.full(K, np.nan), np.ones((K, C), bool),
                   config.resolve_nbeta(n), n, config, "batched", 0.0)
    return dataclasses.replace(res, excluded=np.ones(K, dtype=bool))
