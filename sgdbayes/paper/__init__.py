"""The paper's published tables (Tables 1, 2, 4, 5, 6, 7, 8) as package data.

Hennick & De Baerdemacker, "Almost Bayesian: Dynamics of SGD through Singular
Learning Theory". See ``data/paper/README.md`` for captions and columns.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["TABLES", "load_table"]

TABLES = (1, 2, 4, 5, 6, 7, 8)


def load_table(n: int) -> pd.DataFrame:
    """Table ``n`` of the paper as a DataFrame (numbers at printed precision)."""
    if n not in TABLES:
        raise ValueError(f"no table {n}; available: {TABLES}")
    with resources.files(__name__).joinpath(f"table{n}.csv").open("r") as fh:
        return pd.read_csv(fh)
