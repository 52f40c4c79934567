"""The one number formatter of every report and CLI (re-exported from :mod:`sgdbayes._format`,
where it lives so that ``stats`` result summaries use it too without importing ``reporting``).

See :mod:`sgdbayes._format` for the rules: 4 significant digits, the one missing-value glyph
:data:`MISSING` ("—"), p-values checked and labelled with their null hypothesis.
"""
from .._format import (  # noqa: F401
    DIGITS,
    MISSING,
    fmt_estimate,
    fmt_interval,
    fmt_level,
    fmt_num,
    fmt_p,
    fmt_pvalue,
    is_missing,
    p_header,
)

__all__ = ["MISSING", "DIGITS", "fmt_num", "fmt_interval", "fmt_estimate", "fmt_p", "fmt_pvalue", "p_header",
           "fmt_level", "is_missing"]
