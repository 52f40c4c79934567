"""Statistics for sgdbayes: divergences, clustering, tempering, diffusion fits, hypothesis tests."""

# --- divergences, function-space clustering, tempering (posterior concentration, SCIENCE.md §5)
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

# --- diffusion fits, hypothesis tests H1-H3, cross-run regressions, simulated truth (SCIENCE.md §2-4)
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
from .regression import Regressions, cross_run_regressions, deming  # noqa: F401
from .simulate import simulate_curve, simulate_runs, simulate_two_segment  # noqa: F401
