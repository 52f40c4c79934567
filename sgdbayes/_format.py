"""The one number formatter of every sgdbayes report, CLI and result summary.

* :func:`fmt_num`: 4 significant digits; scientific notation below 1e-4 and from 1e5 on;
  ``0`` as "0"; integers in full; booleans as "yes" / "no"; ±inf as "∞" / "-∞"; a missing
  value (None, NaN) as :data:`MISSING`, the one missing-value glyph ("—"); text as given
  (a run id "007" stays "007"), except "inf" / "-inf", which is how results.json stores them.
* :func:`fmt_interval` / :func:`fmt_estimate`: ``"[lo, hi]"`` and ``"x [lo, hi]"``; an interval
  with a missing end is :data:`MISSING` as a whole.
* :func:`fmt_p`: a p-value (checked to lie in [0, 1]); :func:`fmt_pvalue` adds the test that
  produced it, :func:`p_header` labels a column of p-values with its null hypothesis, so that a
  p-value never reads as a probability of the claim (``"p-value (H0: α ≥ 1/2)"``, not
  ``"p(alpha<1/2)"``).
* :func:`fmt_level`: a coverage as a percentage, ``0.95 -> "95 %"``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

__all__ = ["MISSING", "DIGITS", "fmt_num", "fmt_interval", "fmt_estimate", "fmt_p", "fmt_pvalue", "p_header",
           "fmt_level", "is_missing"]

#: the one glyph for a missing value in every report and CLI
MISSING = "—"
#: significant digits of every number in a report
DIGITS = 4


def is_missing(x: Any) -> bool:
    """None, or a float NaN (numpy included)."""
    if x is None:
        return True
    if isinstance(x, numbers.Real) and not isinstance(x, (bool, numbers.Integral)):
        return math.isnan(float(x))
    return False


def fmt_num(x: Any, digits: int = DIGITS) -> str:
    """A number as every report shows it (module docstring); text is returned unchanged."""
    if is_missing(x):
        return MISSING
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if isinstance(x, str):  # text (run ids such as "007" included) is shown as given
        if x in ("inf", "-inf"):  # how results.json stores infinite floats
            return fmt_num(float(x), digits)
        return x
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_interval(lo: Any, hi: Any, digits: int = DIGITS) -> str:
    """``"[lo, hi]"``; :data:`MISSING` when either end is missing."""
    if is_missing(lo) or is_missing(hi):
        return MISSING
    return f"[{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"


def fmt_estimate(x: Any, lo: Any = None, hi: Any = None, digits: int = DIGITS) -> str:
    """``"x [lo, hi]"``, or ``"x"`` when there is no interval."""
    iv = fmt_interval(lo, hi, digits)
    return fmt_num(x, digits) if iv == MISSING else f"{fmt_num(x, digits)} {iv}"


def fmt_p(p: Any, digits: int = DIGITS) -> str:
    """A p-value (:data:`MISSING` when there is none); a value outside [0, 1] is an error."""
    if is_missing(p):
        return MISSING
    from ._validation import check_pvalue

    return fmt_num(check_pvalue(float(p)), digits)


def fmt_pvalue(p: Any, test: Optional[str] = None, digits: int = DIGITS) -> str:
    """A p-value with the test that produced it: ``"0.0123 (Wilcoxon signed-rank, one-sided)"``."""
    s = fmt_p(p, digits)
    return s if s == MISSING or not test else f"{s} ({test})"


def p_header(null: Optional[str] = None) -> str:
    """The header of a column of p-values: ``"p-value"`` or ``"p-value (H0: <null>)"``."""
    return "p-value" if not null else f"p-value (H0: {null})"


def fmt_level(level: float) -> str:
    """A coverage as a percentage: ``0.95 -> "95 %"``."""
    return f"{100 * float(level):g} %"
