"""SGLD sampling for sgdbayes over any model family (docs/methods.md, docs/models.md).

Layers (imports point down only):

* :mod:`~sgdbayes.sampling.integrator` -- the Langevin update, written once;
* :mod:`~sgdbayes.sampling.sgld` -- the kernel (``SGLDConfig``, ``build``, steppers);
* :mod:`~sgdbayes.sampling.streams` -- per-chain minibatch and noise streams;
* :mod:`~sgdbayes.sampling.potentials`, :mod:`~sgdbayes.sampling.mlp`,
  :mod:`~sgdbayes.sampling.model_potential`, :mod:`~sgdbayes.sampling.module_potential` --
  potentials behind one protocol (MLP fast path, any model family, users' own modules and a
  tracked run's weight snapshots);
* :mod:`~sgdbayes.sampling.chains` -- the chain runner with observers;
* LLC (:mod:`~sgdbayes.sampling.llc`, the training hook, a devinterp 1.3.2 reference backend,
  its checks :mod:`~sgdbayes.sampling.llc_checks`, MALA acceptance :mod:`~sgdbayes.sampling.mala`,
  calibration :mod:`~sgdbayes.sampling.calibrate`), posterior SGLD (:mod:`~sgdbayes.sampling.posterior`,
  run to a target: :mod:`~sgdbayes.sampling.converge`), Metropolis-adjusted HMC
  (:mod:`~sgdbayes.sampling.hmc`) and MCMC diagnostics.

Main entry points::

    estimate_llc(ensemble_or_weights_or_modules, data, config=LLCConfig(...))
    LLCTrainingHook(LLCConfig(...), every=100).as_engine_hook()
    sample_posterior(w_start, spec=family, data=(x, y), config=PosteriorConfig(...))
    sample_posterior_until(w_start, spec=family, data=(x, y), target=ConvergenceTarget(...))
    sample_hmc(w_start, spec=family, data=(x, y), config=HMCConfig(...))
    calibrate_llc(potential, w_star, CalibrationGrid(...))
"""

from .chains import ChainRun, Draw, DrawSchedule, FullLossTrace, LossTrace, Observer, WeightTrace, run_chains
from .calibrate import Calibration, CalibrationGrid, calibrate_llc
from .converge import ConvergenceTarget, sample_posterior_until
from .diagnostics import categorical_rhat, ess, ess_per_chain, split_rhat, trend_test
from .hmc import HMCConfig, HMCResult, sample_hmc
from .integrator import LangevinCoefficients, langevin_step
from .llc import LLCWarning, estimate_llc, estimate_llc_potential
from .data_args import SamplingData, dataset_tensors, sampling_data
from .llc_hook import LLCTrainingHook
from .llc_types import LLCConfig, LLCResult
from .mala import MALAAcceptance, mala_log_acceptance
from .mlp import MLPPotential
from .model_potential import ModelPotential, potential_for
from .module_potential import ModulePotential
from .posterior import PosteriorConfig, PosteriorResult, sample_posterior
from .potentials import (BasePotential, BatchedPotential, CallablePotential, FunctionPotential, Potential,
                         as_potential, check_weights)
from .sgld import KernelStepper, SGLDConfig, SGLDState, SGLDTransform, Stepper, build, default_nbeta
from .streams import ChainStreams, chain_seeds, noise_chunk_steps

__all__ = [
    "LLCConfig", "LLCResult", "LLCWarning", "LLCTrainingHook", "MALAAcceptance", "mala_log_acceptance", "estimate_llc", "estimate_llc_potential", "dataset_tensors",
    "SamplingData", "sampling_data",
    "PosteriorConfig", "PosteriorResult", "sample_posterior", "ConvergenceTarget", "sample_posterior_until",
    "HMCConfig", "HMCResult", "sample_hmc", "CalibrationGrid", "Calibration", "calibrate_llc",
    "SGLDConfig", "SGLDState", "SGLDTransform", "Stepper", "KernelStepper", "build", "default_nbeta",
    "LangevinCoefficients", "langevin_step",
    "DrawSchedule", "ChainRun", "Draw", "Observer", "LossTrace", "FullLossTrace", "WeightTrace", "run_chains",
    "ChainStreams", "chain_seeds", "noise_chunk_steps",
    "Potential", "BatchedPotential", "BasePotential", "FunctionPotential", "CallablePotential", "as_potential",
    "check_weights", "MLPPotential", "ModelPotential", "ModulePotential", "potential_for",
    "split_rhat", "ess", "ess_per_chain", "trend_test", "categorical_rhat",
]
