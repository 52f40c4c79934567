"""The long-format runs file that ``python -m sgdbayes.analyze`` reads, written by trackers.

One row per (run, step): ``run`` (text), ``step`` (optimizer step t >= 1),
``displacement`` (R(t) = ||w_t - w_0||_2), ``llc`` (the LLC estimate at that
step, empty where none), ``n_params`` (parameters tracked), ``diverged_step``
(the first recorded step at which R was not finite; empty when the run never
diverged) and the run's covariates (``lr``, ``batch_size``, ``optimizer``, ...,
constant within a run). The format is described for users in docs/track.md.

CSV (``.csv``, ``.csv.gz``, ``.tsv``) or parquet (``.parquet``, ``.pq``) by suffix.
A write replaces all rows of the runs it writes and keeps every other run's rows:
a resumed run rewrites its own rows (never duplicates them), and runs appended to one
file by several processes never lose each other's rows because every
read-modify-write holds an exclusive lock (``FILE.lock``, :mod:`filelock`) and the
new file is moved into place atomically (:mod:`sgdbayes._io`). The lock file is
left in place (removing it while another process waits on it would be a race).
Run ids are text: ``"007"`` stays ``"007"``.
"""
from __future__ import annotations

import io
import numbers
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .._io import atomic_write_bytes
from ..runs import CSV_EXT, PARQUET_EXT

__all__ = ["TRACK_COLUMNS", "RESERVED", "check_out_path", "check_covariates", "read_track_file",
           "write_runs", "runs_in_file", "column_order"]

TRACK_COLUMNS = ("run", "step", "displacement", "llc", "n_params", "diverged_step")
# columns a user's covariates may not use (n_params may be overridden, e.g. the whole model's size)
RESERVED = ("run", "step", "displacement", "llc", "diverged_step")
LOCK_TIMEOUT_S = 600.0
_NA_WORDS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in CSV_EXT + PARQUET_EXT:
        if name.endswith(ext):
            return ext
    return ""


def check_out_path(out) -> Path:
    """The tracker's output file as a Path; the suffix must be one analyze reads."""
    if not isinstance(out, (str, Path)) or str(out) == "":
        raise ValueError(f"out must be a file path ending in one of {', '.join(CSV_EXT + PARQUET_EXT)}, "
                         f"got {out!r}")
    path = Path(out)
    if not _suffix(path):
        raise ValueError(f"out={str(out)!r}: unknown suffix; use one of {', '.join(CSV_EXT + PARQUET_EXT)}")
    if path.is_dir():
        raise ValueError(f"out={str(out)!r} is a directory; expected a file path")
    return path


def check_covariates(covariates: Mapping | None) -> dict:
    """Run covariates: a mapping of column name -> scalar (str, int, float, bool or None)."""
    if covariates is None:
        return {}
    if not isinstance(covariates, Mapping):
        raise ValueError(f"covariates must be a dict of column -> value, got {type(covariates).__name__}")
    out = {}
    for k, v in covariates.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"covariates: column names must be non-empty strings, got {k!r}")
        if k in RESERVED:
            raise ValueError(f"covariates: {k!r} is a column the tracker writes itself; rename it")
        if isinstance(v, np.generic):
            v = v.item()
        if v is not None and not isinstance(v, (str, bool, numbers.Real)):
            raise ValueError(f"covariates[{k!r}] must be a str, number, bool or None, got {type(v).__name__}")
        out[k] = v
    return out


def read_track_file(path) -> pd.DataFrame:
    """Read a runs file written by a tracker, with ``run`` kept as text (``"007"``, ``"NA"``)."""
    path = Path(path)
    ext = _suffix(path)
    if ext in PARQUET_EXT:
        df = pd.read_parquet(path)
    else:
        sep = "\t" if ext == ".tsv" else ","
        cols = pd.read_csv(path, sep=sep, nrows=0).columns
        # pandas' missing-value words ("NA", "nan", ...) for every column but 'run'
        na = {c: list(_NA_WORDS) for c in cols if c != "run"}
        df = pd.read_csv(path, sep=sep, dtype={"run": str}, keep_default_na=False, na_values=na)
    if "run" not in df.columns:
        raise ValueError(f"{path}: not a runs file (no 'run' column; columns: {list(df.columns)})")
    df["run"] = df["run"].astype(str)
    return df


def runs_in_file(path) -> set[str]:
    """The run ids present in ``path`` (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return set()
    return set(read_track_file(path)["run"].unique())


def _encode(df: pd.DataFrame, path: Path) -> bytes:
    ext = _suffix(path)
    buf = io.BytesIO()
    if ext in PARQUET_EXT:
        _check_one_type_per_column(df, path)
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    text = df.to_csv(index=False, sep="\t" if ext == ".tsv" else ",")
    if ext == ".csv.gz":
        import gzip

        return gzip.compress(text.encode("utf-8"), mtime=0)
    return text.encode("utf-8")


def _check_one_type_per_column(df: pd.DataFrame, path: Path) -> None:
    """Parquet columns have one type: text in one run and numbers in another is refused."""
    for col in df.columns[df.dtypes == object]:
        vals = df[col].dropna()
        is_text = vals.map(lambda v: isinstance(v, str))
        if is_text.any() and not is_text.all():
            runs_text = sorted(set(df.loc[vals.index[is_text], "run"]))[:5]
            runs_num = sorted(set(df.loc[vals.index[~is_text], "run"]))[:5]
            raise ValueError(f"{path}: column {col!r} holds text in runs {runs_text} and numbers in runs "
                             f"{runs_num}; a parquet column has one type (give the covariate one type)")


def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def write_runs(path, frame: pd.DataFrame) -> Path:
    """Replace the rows of every run in ``frame`` in ``path`` (created if missing), keep all
    other runs' rows; under the file's lock, written atomically. Returns the path."""
    path = check_out_path(path)
    missing = [c for c in ("run", "step", "displacement") if c not in frame.columns]
    if missing:
        raise ValueError(f"write_runs: frame lacks column(s) {missing}")
    frame = frame.copy()
    frame["run"] = frame["run"].astype(str)
    if frame.duplicated(["run", "step"]).any():
        raise ValueError("write_runs: frame has duplicate (run, step) rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        parts = []
        if path.exists():
            old = read_track_file(path)
            parts.append(old[~old["run"].isin(set(frame["run"]))])
        parts.append(frame)
        parts = [p for p in parts if len(p)]
        out = pd.concat(parts, ignore_index=True, sort=False) if parts else frame
        out = out[column_order(out.columns)]
        atomic_write_bytes(path, _encode(out, path))
    return path


def column_order(cols: Iterable[str]) -> list[str]:
    cols = list(cols)
    first = [c for c in TRACK_COLUMNS if c in cols]
    return first + [c for c in cols if c not in first]
