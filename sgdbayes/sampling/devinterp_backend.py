"""Reference backend: the same LLC settings through devinterp 1.3.2, model by model.

Calls ``devinterp.slt.sampler.estimate_learning_coeff_with_summary`` with the
default ``sampling_method`` (``devinterp.optim.sgld.SGLD``) and

* ``optimizer_kwargs = dict(lr=ε, localization=γ, nbeta=nβ, noise_level=σ,
  weight_decay=ω)`` (devinterp 1.x names; nβ resolved by :class:`LLCConfig`
  exactly as the batched backend does, B/log B by default = devinterp's
  ``default_nbeta``),
* ``evaluate(model, (x, y)) = criterion(model(x), y)`` (devinterp's default
  evaluate would return the logits, not a loss),
* a ``DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True)``,
* ``init_loss`` = the full-training-set L(w*) (devinterp's own default is the
  mean over ``num_chains`` minibatches; passing the exact value makes both
  backends share that term. devinterp ignores an ``init_loss`` of exactly 0.0),
* ``seed`` = one seed per chain derived from ``(config.seed, model_id, chain)``;
* the modules in the train/eval mode they come in (stated in the result).

devinterp seeds the *global* torch RNG per chain (noise and DataLoader
shuffling); we wrap each call in ``torch.random.fork_rng`` so the caller's RNG
state is untouched. Its draws are therefore statistically equivalent to, but not
identical with, the batched backend's (different generators; devinterp's
DataLoader keeps an incomplete final batch when n % B != 0).
devinterp raises on a NaN loss; such a model is reported with every chain
diverged (``all_diverged``), never silently.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .data_args import dataset_tensors
from .llc_types import LLCConfig, LLCResult, finalize, model_ids_of
from .streams import chain_seeds

__all__ = ["estimate_llc_devinterp"]


def estimate_llc_devinterp(modules: Sequence[nn.Module], data, config: Optional[LLCConfig] = None, *,
                           criterion: Optional[Callable] = None,
                           model_ids: Optional[Sequence[int]] = None) -> LLCResult:
    """λ̂ (eq 25) of each module with devinterp 1.3.2 (one model, one chain at a time)."""
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    config = config if config is not None else LLCConfig()
    if not isinstance(config, LLCConfig):
        raise ValueError(f"config must be an LLCConfig, got {type(config).__name__}")
    modules = list(modules)
    if not modules:
        raise ValueError("modules must be a non-empty list of nn.Module")
    crit = criterion if criterion is not None else nn.functional.cross_entropy
    x, y = dataset_tensors(data)
    n = int(x.shape[0])
    B = config.effective_batch(n)
    nbeta = config.resolve_nbeta(n)
    ids = model_ids_of(model_ids, len(modules))
    C, D = config.num_chains, config.num_draws
    seeds = chain_seeds(config.seed, ids, C)

    def evaluate(model, batch):
        xb, yb = batch
        return crit(model(xb), yb)

    losses = np.full((len(modules), C, D), np.nan)
    init = np.full(len(modules), np.nan)
    diverged = np.zeros((len(modules), C), dtype=bool)
    t0 = time.perf_counter()
    for k, m in enumerate(modules):
        with torch.no_grad():
            init[k] = float(crit(m(x), y))
        if not np.isfinite(init[k]):
            raise ValueError(f"L(w*) is not finite for model {ids[k]}")
        loader = DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True)
        opt = dict(lr=config.step_size, localization=config.localization, nbeta=nbeta,
                   noise_level=config.noise_level, weight_decay=config.weight_decay)
        chain_seed_list = [int(seeds[k * C + c][0] >> 2) for c in range(C)]
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = estimate_learning_coeff_with_summary(
                    m, loader, evaluate=evaluate, optimizer_kwargs=opt, num_draws=D, num_chains=C,
                    num_burnin_steps=config.num_burnin_steps, num_steps_bw_draws=config.num_steps_bw_draws,
                    init_loss=init[k], seed=chain_seed_list, cores=1, verbose=False, device="cpu")
                losses[k] = np.asarray(res["loss/trace"], dtype=np.float64)
            except RuntimeError as e:  # devinterp: "NaN detected in loss ..."
                if "NaN" not in str(e):
                    raise
                diverged[k] = True
    return finalize(ids, losses, init, diverged, nbeta, n, config, "devinterp", time.perf_counter() - t0,
                    mode="train" if modules[0].training else "eval")
