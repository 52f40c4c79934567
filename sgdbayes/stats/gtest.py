"""G-test (log-likelihood ratio) of homogeneity between two count vectors (docs/methods.md, "G-test").

``scipy.stats.chi2_contingency(table, lambda_="log-likelihood", correction=False)`` on the 2×K
table of counts; all-zero categories are dropped first (and reported). It assumes independent
draws: for SGLD samples (autocorrelated within chains) it is anti-conservative unless the SGLD
counts are scaled to an effective sample size (:func:`sgdbayes.stats.concentration.g_test_ess`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .results import Result, estimate_row

__all__ = ["GTestResult", "g_test"]


@dataclass
class GTestResult(Result):
    """G-test (log-likelihood ratio) of homogeneity between two count vectors.

    ``statistic`` = G, ``pvalue`` its χ² p-value with ``dof`` degrees of freedom (H0 =
    homogeneity), over ``n_categories_used`` categories (``dropped_categories`` were zero in
    both rows). ``scale`` is the factor applied to the second count vector (1 = raw counts;
    < 1 when SGLD counts were scaled to their effective sample size).
    """

    statistic: float
    pvalue: float
    dof: int
    n_categories_used: int
    dropped_categories: list
    notes: list = field(default_factory=list)
    scale: float = 1.0

    def _estimate_rows(self, level: float) -> list[dict]:
        return [estimate_row("G", self.statistic, pvalue=self.pvalue)]

    def summary(self) -> str:
        s = (f"G-test of homogeneity: G = {self.statistic:.4g}, df = {self.dof}, "
             f"p = {self.pvalue:.4g} ({self.n_categories_used} categories)")
        if self.dropped_categories:
            s += f"; dropped all-zero categories {self.dropped_categories}"
        for n in self.notes:
            s += f"\n  note: {n}"
        return s

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "test": "G-test (homogeneity)", "statistic": self.statistic, "dof": self.dof,
            "pvalue": self.pvalue, "n_categories_used": self.n_categories_used,
            "dropped_categories": ",".join(map(str, self.dropped_categories)),
        }])


def g_test(counts_p, counts_q, categories: Optional[Sequence] = None, *,
           n_eff_p: Optional[float] = None, n_eff_q: Optional[float] = None) -> GTestResult:
    """G-test of homogeneity of two count vectors (2×K table).

    Uses ``scipy.stats.chi2_contingency(lambda_="log-likelihood",
    correction=False)``. Categories that are zero in both rows are dropped (the
    expected count would be 0) and listed in ``dropped_categories``. With fewer
    than two non-empty categories the test is degenerate: G = 0, p = 1, df = 0
    (noted). Assumes independent observations (see module docstring for SGLD);
    ``n_eff_p`` / ``n_eff_q`` rescale a count vector to that total (e.g. the
    SGLD effective sample size), keeping its proportions — stated in the notes.
    """
    a = np.asarray(counts_p, dtype=float)
    b = np.asarray(counts_q, dtype=float)
    scale_notes = []
    if n_eff_p is not None:
        a = a / a.sum() * float(n_eff_p)
        scale_notes.append(f"counts_p rescaled to effective size {float(n_eff_p):g}")
    if n_eff_q is not None:
        b = b / b.sum() * float(n_eff_q)
        scale_notes.append(f"counts_q rescaled to effective size {float(n_eff_q):g}")
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("count vectors must be 1-D and of equal length")
    for v, nm in ((a, "counts_p"), (b, "counts_q")):
        if (v < 0).any() or not np.isfinite(v).all():
            raise ValueError(f"{nm} must be finite and non-negative")
        if v.sum() <= 0:
            raise ValueError(f"{nm} has zero total count")
    cats = list(categories) if categories is not None else list(range(a.size))
    zero = (a + b) == 0
    dropped = [c for c, z in zip(cats, zero) if z]
    notes = list(scale_notes)
    if dropped:
        notes.append(f"dropped {len(dropped)} all-zero categor{'y' if len(dropped)==1 else 'ies'}: {dropped}")
    table = np.vstack([a[~zero], b[~zero]])
    if table.shape[1] < 2:
        notes.append("fewer than two non-empty categories: homogeneity holds trivially (G=0, p=1)")
        return GTestResult(0.0, 1.0, 0, int(table.shape[1]), dropped, notes)
    if not scale_notes and not (np.allclose(a, np.round(a)) and np.allclose(b, np.round(b))):
        notes.append("non-integer counts (e.g. ESS-scaled) used as given")
    g, p, dof, _ = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    return GTestResult(float(g), float(p), int(dof), int(table.shape[1]), dropped, notes)
