"""SGLD sampling for sgdbayes: batched localized SGLD, LLC estimation (paper eq 25),
temperature-1 posterior SGLD (docs/methods.md#posterior-concentration), MCMC diagnostics, and a devinterp
1.3.2 reference backend.

Main entry points::

    estimate_llc(ensemble_result_or_weights_or_modules, data, spec=..., config=LLCConfig(...))
    LLCTrainingHook(LLCConfig(...), every=100).as_engine_hook()
    sample_posterior(w_start, spec=spec, data=(x, y), config=PosteriorConfig(...))
"""

from .diagnostics import ess, ess_per_chain, split_rhat, trend_test
from .llc import LLCConfig, LLCResult, LLCTrainingHook, dataset_tensors, estimate_llc, estimate_llc_potential
from .posterior import PosteriorConfig, PosteriorResult, sample_posterior
from .sgld import (
    BatchedPotential,
    ChainStreams,
    DrawSchedule,
    FunctionPotential,
    MLPPotential,
    ModulePotential,
    SGLDConfig,
    SGLDState,
    build,
    chain_seeds,
    default_nbeta,
    run_chains,
)

__all__ = [
    "LLCConfig", "LLCResult", "LLCTrainingHook", "estimate_llc", "estimate_llc_potential", "dataset_tensors",
    "PosteriorConfig", "PosteriorResult", "sample_posterior",
    "SGLDConfig", "SGLDState", "DrawSchedule", "ChainStreams", "BatchedPotential", "FunctionPotential",
    "MLPPotential", "ModulePotential", "build", "run_chains", "chain_seeds", "default_nbeta",
    "split_rhat", "ess", "ess_per_chain", "trend_test",
]
