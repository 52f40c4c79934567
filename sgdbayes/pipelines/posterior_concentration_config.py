"""The typed configuration of the posterior_concentration study: its sections (one frozen
dataclass per TOML table of ``studies/posterior_concentration.toml``; field names = keys).

``[llc]`` and ``[sgld]`` are the library's :class:`sgdbayes.sampling.LLCConfig` and
:class:`sgdbayes.sampling.PosteriorConfig`; ``[data]``, ``[model]`` and ``[train]`` are shared
sections (:mod:`sgdbayes.pipelines.sections`); the rest are declared here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .._validation import check_float, check_int, check_level, check_seed
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig, PosteriorConfig
from .sections import ModelConfig, MoonsData, TrainConfig

__all__ = ["PosteriorConcentrationConfig", "ConvergenceConfig", "ClusterConfig", "SGLDStarts", "TemperingConfig",
           "AnalysisConfig", "ReferenceConfig", "ReportConfig"]


@dataclass(frozen=True)
class ConvergenceConfig:
    """``[convergence]``: relative loss plateau over the last ``window`` of the steps (ours)."""

    window: float = 0.1      # fraction of the steps
    rel_tol: float = 0.01    # pass if the OLS drop of the recorded training loss over the window is < rel_tol
    apply: bool = True       # drop failing runs from every later stage
    min_runs: int = 20       # if fewer runs pass, keep all non-diverged runs and say so

    def __post_init__(self):
        check_float("window", self.window, 0.0, 1.0, strict_min=True)
        check_float("rel_tol", self.rel_tol, 0.0, strict_min=True)
        check_int("min_runs", self.min_runs, 1)


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: function-space clustering (probe = training inputs + a ``grid`` x ``grid``
    box widened by ``grid_margin``; PCA to ``pca_dim``; HDBSCAN, GMM fallback up to ``gmm_max_k``)."""

    grid: int = 20
    grid_margin: float = 0.1
    pca_dim: int = 10
    min_cluster_size: int = 10
    gmm_max_k: int = 8
    seed: int = 0

    def __post_init__(self):
        check_int("grid", self.grid, 2)
        check_float("grid_margin", self.grid_margin, 0.0)
        check_int("pca_dim", self.pca_dim, 1)
        check_int("min_cluster_size", self.min_cluster_size, 2)
        check_int("gmm_max_k", self.gmm_max_k, 2)
        check_seed(self.seed, "seed")


@dataclass(frozen=True)
class SGLDStarts:
    """``[sgld_starts]``: which solutions seed the posterior SGLD chains (the sampler is ``[sgld]``).

    ``rule = "lowest"``: the ``n_chains`` kept runs with the smallest rank of loss + rank of λ̂;
    ``"per_cluster"``: one chain per cluster (``n_chains`` unused)."""

    rule: Literal["lowest", "per_cluster"] = "lowest"
    n_chains: int = 8

    def __post_init__(self):
        check_int("n_chains", self.n_chains, 1)


@dataclass(frozen=True)
class TemperingConfig:
    """``[tempering]``: p_theory ∝ exp(−γ L_c / D_ξ(c)) with γ = ``gamma`` (the SGD learning rate),
    tempering exponent ``m`` · D_ξ*(c) (0 = the training-set size), ξ on a log grid."""

    gamma: float = 0.01
    m: float = 0.0
    xi_min: float = 0.01
    xi_max: float = 100.0
    xi_points: int = 81
    split_seed: int = 3
    n_boot_xi: int = 200

    def __post_init__(self):
        check_float("gamma", self.gamma, 0.0, strict_min=True)
        check_float("m", self.m, 0.0)
        check_float("xi_min", self.xi_min, 0.0, strict_min=True)
        check_float("xi_max", self.xi_max, self.xi_min, strict_min=True)
        check_int("xi_points", self.xi_points, 2)
        check_seed(self.split_seed, "split_seed")
        check_int("n_boot_xi", self.n_boot_xi, 1)


@dataclass(frozen=True)
class AnalysisConfig:
    """``[analysis]``: Table 2 / H4 bootstrap, equivalence margin, smoothed-KL pseudocount,
    which window's α each run contributes, and when the SGLD reference counts as converged.

    H5 against SGLD is decided only against a converged reference: pooled split-R̂ of the
    chains' loss ≤ ``reference_max_rhat`` and pooled bulk ESS ≥ ``reference_min_ess`` (the
    usual targets; docs/methods.md#h5-tempered-sgd--the-bayesian-posterior); otherwise H5-sgld is
    *inconclusive: reference not converged*."""

    n_boot: int = 1000
    level: float = 0.95
    margin: float = 0.05
    pseudocount: float = 0.5
    seed: int = 4
    alpha_window: Literal["late", "whole"] = "late"
    reference_max_rhat: float = 1.01
    reference_min_ess: float = 400.0

    def __post_init__(self):
        check_int("n_boot", self.n_boot, 1)
        check_level(self.level, "level")
        check_float("margin", self.margin, 0.0, strict_min=True)
        check_float("pseudocount", self.pseudocount, 0.0, strict_min=True)
        check_seed(self.seed, "seed")
        check_float("reference_max_rhat", self.reference_max_rhat, 1.0)
        check_float("reference_min_ess", self.reference_min_ess, 0.0)


@dataclass(frozen=True)
class ReferenceConfig:
    """``[reference]``: the posterior references H5 is checked against besides the fixed-length SGLD
    stage (docs/estimates.md). ``sgld_target``: SGLD (the ``[sgld]`` kernel) run in blocks to a
    convergence target (:class:`sgdbayes.sampling.ConvergenceTarget`: ``max_rhat``, ``min_ess``,
    ``block_samples``, ``max_samples``, ``discard``); ``hmc``: Metropolis-adjusted HMC
    (:class:`sgdbayes.sampling.hmc.HMCConfig`, fields prefixed ``hmc_``). Both start from the sgld
    stage's starts, plus (``overdispersed``) the best run of every cluster; HMC runs
    ``hmc_chains_per_start`` chains per start. A reference is *converged* when its pooled split-R̂
    ≤ ``max_rhat`` and ESS ≥ ``min_ess`` (SGLD: also R̂ of the cluster assignment)."""

    sgld_target: bool = True
    max_rhat: float = 1.01
    min_ess: float = 400.0
    block_samples: int = 250
    max_samples: int = 1000
    discard: float = 0.5
    overdispersed: bool = True
    hmc: bool = False
    hmc_num_warmup: int = 200
    hmc_num_samples: int = 200
    hmc_num_leapfrog: int = 16
    hmc_step_size: float = 1e-3
    hmc_target_accept: float = 0.8
    hmc_chains_per_start: int = 1
    hmc_seed: int = 5

    def __post_init__(self):
        self.target()
        self.hmc_config()
        check_int("hmc_chains_per_start", self.hmc_chains_per_start, 1)

    def target(self):
        from ..sampling.converge import ConvergenceTarget

        return ConvergenceTarget(max_rhat=self.max_rhat, min_ess=self.min_ess, block_samples=self.block_samples,
                                 max_samples=self.max_samples, discard=self.discard)

    def hmc_config(self, posterior=None):
        """The :class:`~sgdbayes.sampling.hmc.HMCConfig`; its target (temperature, Gaussian prior
        precision ``weight_decay``) is that of ``posterior`` (the ``[sgld]`` section's
        :class:`~sgdbayes.sampling.PosteriorConfig`), so both references sample the posterior H5
        compares with."""
        from ..sampling.hmc import HMCConfig

        target = {} if posterior is None else {"temperature": posterior.temperature,
                                               "weight_decay": posterior.weight_decay}
        return HMCConfig(num_warmup=self.hmc_num_warmup, num_samples=self.hmc_num_samples,
                         num_leapfrog=self.hmc_num_leapfrog, step_size=self.hmc_step_size,
                         target_accept=self.hmc_target_accept, seed=self.hmc_seed, keep_samples=True, **target)


@dataclass(frozen=True)
class ReportConfig:
    """``[report]`` (presentational): figure resolution, SGLD traces drawn."""

    dpi: int = 110
    max_traces: int = 8

    def __post_init__(self):
        check_int("dpi", self.dpi, 10)
        check_int("max_traces", self.max_traces, 1)


@dataclass(frozen=True)
class PosteriorConcentrationConfig(StudyConfig):
    """The sections of ``studies/posterior_concentration.toml``."""

    data: MoonsData = field(default_factory=MoonsData)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sgld_starts: SGLDStarts = field(default_factory=SGLDStarts)
    sgld: PosteriorConfig = field(default_factory=PosteriorConfig)
    tempering: TemperingConfig = field(default_factory=TemperingConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self):
        self.train.check_data(self.data.n_train, "data.n")
        if not self.sgld.keep_samples:
            raise ValueError("sgld.keep_samples must be true in this study: every SGLD sample is assigned "
                             "to a cluster")
        if self.sgld.chains_per_start != 1:
            raise ValueError(f"sgld.chains_per_start must be 1 in this study (one chain per selected start; "
                             f"use sgld_starts.n_chains for more chains), got {self.sgld.chains_per_start}")
