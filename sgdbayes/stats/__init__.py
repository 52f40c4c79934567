"""Statistics for sgdbayes: divergences, clustering, tempering, diffusion fits, hypothesis tests.

Pure numpy / scipy / statsmodels (no torch). Every public result derives from
:class:`~sgdbayes.stats.results.Result`; every hypothesis test returns a
:class:`~sgdbayes.stats.results.HypothesisTest` decided by :func:`~sgdbayes.stats.results.decide`.
See docs/methods.md and docs/api.md.
"""

# --- divergences, function-space clustering, tempering (posterior concentration, docs/methods.md)
from .bootstrap import percentile_interval, resample_groups, resample_runs, upper_bound  # noqa: F401
from .cluster import FunctionSpaceClusterer, StructureReport, cluster_table, probe_inputs  # noqa: F401
from .divergence import (  # noqa: F401
    BootstrapDivergenceResult,
    DivergenceResult,
    GTestResult,
    bootstrap_divergences,
    compare_distributions,
    g_test,
    js_divergence,
    kl_divergence,
    kl_smoothed,
    wasserstein1,
)
from .tempering import (  # noqa: F401
    TemperedResult,
    XiSweep,
    cluster_properties,
    free_energy_distribution,
    make_tempered_fn,
    sweep_xi,
    tempered_distribution,
    theoretical_distribution,
)

# --- diffusion fits, hypothesis tests H1-H3, cross-run regressions, simulated truth (docs/methods.md)
from .diffusion import (  # noqa: F401
    CrossoverFit,
    DiffusionFit,
    SlopeFit,
    UnfitRun,
    final_llc,
    fit_crossover,
    fit_diffusion,
    fit_loglog,
    log_grid,
    spectral_dimension,
)
from .hypotheses import (  # noqa: F401
    HypothesisResult,
    holm,
    median_interval,
    sign_test_less,
    test_all,
    test_h1,
    test_h2,
    test_h3,
    wilcoxon_less,
)
from .regression import Correlation, Regressions, cross_run_regressions, deming, spearman  # noqa: F401
from .simulate import simulate_curve, simulate_runs, simulate_two_segment  # noqa: F401

# --- the one result vocabulary; summaries across runs; H4-H7 and the across-run verdicts (docs/methods.md)
from .results import HypothesisTest, Result, Verdict, decide  # noqa: F401
from .summaries import LLCSummaries, RunSummary, bootstrap_ci, llc_summaries, mean_ci, summarize  # noqa: F401
from .verdicts import all_of, as_hypothesis_test, test_crossover  # noqa: F401
from .concentration import (  # noqa: F401
    PlateauFilter,
    convergence_filter,
    g_test_ess,
    paired_bootstrap_divergences,
    test_h4,
    test_h5,
)
from .ablation import SlopeContrast, h6_contrast, test_h6  # noqa: F401
from .prediction import DisplacementPrediction, predict_late_displacement, test_h7  # noqa: F401
