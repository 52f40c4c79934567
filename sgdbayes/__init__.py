"""sgdbayes: put the 'Almost Bayesian' theory of SGD on trial.

Batched seed ensembles, LLC estimation and SGLD posterior sampling, and the
statistics that turn the paper's claims (H1-H7, see docs/methods.md) into tests.
"""

__version__ = "0.1.0"
