"""Reading and validating external runs files (long format) for ``python -m sgdbayes.analyze``.

Format: CSV (``.csv``, ``.csv.gz``, ``.tsv``) or parquet (``.parquet``, ``.pq``),
one row per (run, step):

==============  ========  ==================================================
column          required  meaning
==============  ========  ==================================================
run             yes       run identifier, read as text exactly as written
                          ("007", "7", "NA" and "null" are four runs)
step            yes       optimizer step t, numeric, > 0
displacement    yes       R(t) = ||w_t - w_0||_2, numeric, >= 0
llc             no        LLC estimate at that step; may be missing on most
                          steps (e.g. estimated every 100 steps)
anything else   no        a run covariate if constant within every run
                          (lr, batch_size, optimizer, ...); otherwise ignored
                          and listed in the warnings
==============  ========  ==================================================

Final lambda of a run (App G.1) = mean of its last 10 non-missing ``llc``
values, se = std / sqrt(n_used) (estimates along training are autocorrelated,
so this se is optimistic); lambda_bar (eq 16, H3) = mean of all its estimates.

Every problem raises :class:`RunsFileError`, whose message names the file and
the column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["RunsFileError", "RunsData", "read_runs", "validate_runs", "run_llc_summary", "REQUIRED"]

REQUIRED = ("run", "step", "displacement")
CSV_EXT = (".csv", ".csv.gz", ".tsv")
PARQUET_EXT = (".parquet", ".pq")


class RunsFileError(ValueError):
    """A runs file that cannot be analyzed; the message names the file and the problem."""


@dataclass
class RunsData:
    """A validated runs table: ``data`` (long), ``covariates`` (one row per run), ``warnings``."""

    path: Optional[Path]
    data: pd.DataFrame
    covariates: pd.DataFrame
    covariate_names: list[str]
    has_llc: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[str]:
        return list(self.covariates["run"])


def _ext(path: Path) -> str:
    name = path.name.lower()
    for e in CSV_EXT + PARQUET_EXT:
        if name.endswith(e):
            return e
    return path.suffix.lower()


# pandas' default missing-value markers, used for every column except ``run``
_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
       "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    """A CSV with the ``run`` column read as text, verbatim ("007", "NA" and "null" stay as written)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:2] == b"\x1f\x8b" and not path.name.lower().endswith(".gz"):
        raise RunsFileError(f"{path}: the file is gzip-compressed but its name ends in {path.suffix!r}; "
                            f"rename it to {path.name}.gz (or decompress it)")
    cols = list(pd.read_csv(path, sep=sep, nrows=0).columns)
    run_cols = [c for c in cols if str(c).strip() == "run"]
    return pd.read_csv(path, sep=sep, dtype={c: str for c in run_cols}, keep_default_na=False,
                       na_values={c: _NA for c in cols if c not in run_cols})


def read_runs(path) -> RunsData:
    """Read and validate a runs file (see module docstring); raises :class:`RunsFileError`."""
    path = Path(path)
    if not path.exists():
        raise RunsFileError(f"{path}: file not found")
    if path.is_dir():
        raise RunsFileError(f"{path}: is a directory, expected a .csv or .parquet file")
    ext = _ext(path)
    try:
        if ext in CSV_EXT:
            df = _read_csv(path, "\t" if ext == ".tsv" else ",")
        elif ext in PARQUET_EXT:
            df = pd.read_parquet(path)
        else:
            raise RunsFileError(f"{path}: unknown extension {ext!r}; expected one of "
                                f"{', '.join(CSV_EXT + PARQUET_EXT)}")
    except RunsFileError:
        raise
    except pd.errors.EmptyDataError:
        raise RunsFileError(f"{path}: file is empty") from None
    except UnicodeDecodeError:
        raise RunsFileError(f"{path}: not a text file (is it compressed? a .csv.gz must be named so)") from None
    except Exception as exc:  # unreadable / corrupt file
        raise RunsFileError(f"{path}: cannot read file ({type(exc).__name__}: {exc})") from None
    if ext in CSV_EXT and "run" not in [str(c).strip() for c in df.columns]:
        semi = [str(c) for c in df.columns if ";" in str(c)]
        if semi:
            raise RunsFileError(f"{path}: the file looks semicolon-separated (header {semi[0]!r}); sgdbayes reads "
                                f"comma-separated .csv or tab-separated .tsv files: convert it, e.g. "
                                f"pandas.read_csv(path, sep=';').to_csv(new_path, index=False)")
    return validate_runs(df, path)


def validate_runs(df: pd.DataFrame, path=None) -> RunsData:
    """Validate a long-format runs DataFrame; ``path`` only labels error messages."""
    label = str(path) if path is not None else "<runs table>"
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise RunsFileError(f"{label}: no rows")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise RunsFileError(f"{label}: missing required column(s) {', '.join(map(repr, missing))} "
                            f"(found: {', '.join(map(repr, df.columns))})")
    if df["run"].isna().any():
        raise RunsFileError(f"{label}: column 'run' has {int(df['run'].isna().sum())} missing value(s)")
    empty = df["run"].astype(str) == ""
    if empty.any():
        raise RunsFileError(f"{label}: column 'run' has {int(empty.sum())} empty value(s) (rows "
                            f"{', '.join(str(i + 2) for i in np.flatnonzero(empty)[:5])} of the file)")
    for col in ("step", "displacement"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna()
        if bad.any():
            ex = df.loc[bad, col].iloc[0]
            raise RunsFileError(f"{label}: column {col!r} is not numeric ({int(bad.sum())} value(s) such "
                                f"as {ex!r})")
        if num.isna().any():
            raise RunsFileError(f"{label}: column {col!r} has {int(num.isna().sum())} missing value(s)")
        if not np.all(np.isfinite(num.to_numpy(float))):
            raise RunsFileError(f"{label}: column {col!r} has non-finite values")
        df[col] = num.astype(float)
    if (df["step"] <= 0).any():
        n = int((df["step"] <= 0).sum())
        raise RunsFileError(f"{label}: column 'step' must be > 0 (t >= 1; log t is undefined at 0); "
                            f"{n} row(s) have step <= 0")
    if (df["displacement"] < 0).any():
        n = int((df["displacement"] < 0).sum())
        raise RunsFileError(f"{label}: column 'displacement' must be >= 0 (a norm); {n} row(s) are negative")
    df["run"] = df["run"].astype(str)
    dup = df.duplicated(["run", "step"])
    if dup.any():
        raise RunsFileError(f"{label}: {int(dup.sum())} duplicate (run, step) row(s) in columns 'run', 'step'")
    has_llc = "llc" in df.columns
    if has_llc:
        num = pd.to_numeric(df["llc"], errors="coerce")
        bad = num.isna() & df["llc"].notna()
        if bad.any():
            raise RunsFileError(f"{label}: column 'llc' is not numeric (e.g. {df.loc[bad, 'llc'].iloc[0]!r})")
        if np.isinf(num).any():
            raise RunsFileError(f"{label}: column 'llc' has infinite values")
        df["llc"] = num.astype(float)
    df = df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    warnings: list[str] = []
    other = [c for c in df.columns if c not in REQUIRED + ("llc",)]
    covs = []
    g = df.groupby("run", sort=False)
    for c in other:
        nun = g[c].nunique(dropna=False)
        if (nun <= 1).all():
            covs.append(c)
        else:
            warnings.append(f"column {c!r} varies within runs: not a run covariate, ignored")
    cov = g[covs].first().reset_index() if covs else pd.DataFrame({"run": list(g.groups)})
    cov = cov.set_index("run").loc[df["run"].unique()].reset_index()
    return RunsData(path=Path(path) if path is not None else None, data=df, covariates=cov,
                    covariate_names=covs, has_llc=has_llc, warnings=warnings)


def run_llc_summary(llc: pd.Series, n_last: int = 10) -> dict:
    """Final lambda (mean of last ``n_last`` non-missing), its se, n_used, lambda_bar and its se.

    ``llc_se`` = std(ddof=1)/sqrt(n_used) of the last estimates (autocorrelated:
    optimistic); 0.0 with a single estimate (flagged by ``llc_n == 1``).
    lambda_bar (eq 16) = mean of all estimates, se = std/sqrt(n) (same caveat).
    All values None when the run has no estimate.
    """
    v = pd.to_numeric(llc, errors="coerce").dropna().to_numpy(float)
    if v.size == 0:
        return dict(llc=None, llc_se=None, llc_n=0, llc_mean=None, llc_mean_se=None, llc_n_all=0)
    last = v[-n_last:]
    se = float(np.std(last, ddof=1) / math.sqrt(last.size)) if last.size > 1 else 0.0
    se_all = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return dict(llc=float(last.mean()), llc_se=se, llc_n=int(last.size), llc_mean=float(v.mean()),
                llc_mean_se=se_all, llc_n_all=int(v.size))
