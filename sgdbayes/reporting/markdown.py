"""Small, generic reporting helpers shared by every sgdbayes report.

* :func:`fmt_num` / :func:`fmt_ci`: numbers as text, ``"0.412 [0.371, 0.453]"``;
  missing values render as ``"n/a"`` (never ``"nan"``).
* :func:`md_table`: a pandas DataFrame (or list of dicts) as a GitHub markdown
  table via ``tabulate``.
* :func:`atomic_write_text`, :func:`atomic_savefig`: write to a temporary file
  in the target directory, then ``os.replace`` (no half-written files).
* :func:`atomic_directory` (from ``sgdbayes._io``): build a whole output
  directory in a temporary sibling and rename it into place only on success.
* :func:`versions_block`: a markdown block with Python/package versions.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .._io import atomic_directory, atomic_write_text, temp_sibling

__all__ = ["fmt_num", "fmt_ci", "fmt_p", "md_table", "atomic_write_text", "atomic_savefig",
           "atomic_directory", "versions_block"]

PathLike = Union[str, os.PathLike]


def _missing(x) -> bool:
    if x is None:
        return True
    try:
        return bool(math.isnan(float(x)))
    except (TypeError, ValueError):
        return False


def fmt_num(x, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits (general format); ``"n/a"`` when missing."""
    if _missing(x):
        return "n/a"
    if isinstance(x, (bool,)):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_ci(x, lo, hi, digits: int = 3) -> str:
    """``"x [lo, hi]"`` with ``digits`` significant digits each."""
    return f"{fmt_num(x, digits)} [{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"


def fmt_p(p, digits: int = 2) -> str:
    """A p-value: ``"<1e-10"`` below 1e-10, else ``digits`` significant digits."""
    if _missing(p):
        return "n/a"
    p = float(p)
    return "<1e-10" if p < 1e-10 else f"{p:.{digits}g}"


def md_table(data, headers: Union[str, Sequence[str]] = "keys", floatfmt: str = ".4g",
             index: bool = False) -> str:
    """Markdown (GitHub) table from a DataFrame / list of dicts; NaN/None print as ``n/a``."""
    from tabulate import tabulate

    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            data = data.astype(object).where(data.notna(), None)
    except ImportError:  # pragma: no cover
        pass
    return tabulate(data, headers=headers, tablefmt="github", floatfmt=floatfmt, showindex=index,
                    missingval="n/a")


def atomic_savefig(fig, path: PathLike, dpi: int = 120, close: bool = True, bbox_inches="tight",
                   **kwargs) -> Path:
    """``fig.savefig`` to a temp file next to ``path``, then rename; closes the figure by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, suffix=path.suffix or ".png")  # mode 0666 minus umask, not mkstemp's 0600
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path


def versions_block(packages: Iterable[str] = ("sgdbayes", "numpy", "scipy", "pandas", "statsmodels",
                                              "matplotlib", "torch", "devinterp"),
                   extra: Optional[dict] = None) -> str:
    """Markdown bullet list of Python, platform and package versions (absent packages say so)."""
    from importlib import metadata

    lines = [f"- python {platform.python_version()} ({sys.platform})"]
    for name in packages:
        try:
            lines.append(f"- {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"- {name}: not installed")
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)
