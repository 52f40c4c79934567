"""Analyze external training runs: diffusion fits, H1-H3 tests and cross-run regressions.

``python -m sgdbayes.analyze RUNS [--out DIR] [--min-points N] [--late-window W]``

Per run: eq 17 ``log R(t) = alpha log t + c`` (alpha = d_s / (2 lambda)), fitted on
points evenly spaced in log t with AR(1)-error intervals (see
:mod:`sgdbayes.stats.diffusion`), ``d_walk = 1/alpha`` (eq 12) and
``d_s = 2 lambda alpha`` with a delta-method interval
``se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2``. Plus a
late-window fit after a crossover t_c (App B.3). Across runs: H1-H3 as
:class:`~sgdbayes.stats.results.HypothesisTest` verdicts (:func:`sgdbayes.stats.verdicts.test_h1_h3`,
the rule of docs/methods.md#verdicts) and regressions against the numeric run covariates
(:mod:`sgdbayes.stats.regression`). The report is :mod:`sgdbayes.reporting.analyze`.

Outputs (each file written atomically; nothing else in DIR is touched):
``DIR/runs.csv``, ``DIR/report.md``, ``DIR/figures/*.png``. See docs/analyze_your_runs.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .runs import RunsData, RunsFileError, read_runs, run_llc_summary, validate_runs

if TYPE_CHECKING:
    from .stats.regression import Regressions

# the statistics modules (scipy, statsmodels) are imported inside analyze_runs so that
# a bad input file fails fast, before those imports

__all__ = ["AnalysisResult", "analyze_runs", "write_outputs", "main", "default_out_dir", "build_parser", "OUTPUTS"]

RUNS_COLUMNS = ["run", "n_points", "alpha", "alpha_lo", "alpha_hi", "r2", "llc", "llc_se", "d_s",
                "d_s_lo", "d_s_hi", "d_walk", "p_subdiffusive"]


@dataclass
class AnalysisResult:
    """Everything :func:`analyze_runs` computed: per-run table, skipped runs, tests, regressions.

    ``hypotheses``: the across-run verdicts, one :class:`~sgdbayes.stats.results.HypothesisTest`
    each (H1, H1-whole, H2, H3, H2-late, H3-late where the columns allow), decided by the one
    rule of every sgdbayes report; ``per_run_tests``: the per-run results behind them
    (:class:`~sgdbayes.stats.hypotheses.HypothesisResult`, keyed ``H1_late``, ``H2_whole``, ...).
    """

    runs: pd.DataFrame
    skipped: pd.DataFrame
    fits: dict
    hypotheses: list
    regressions: Optional["Regressions"]
    covariates: list[str]
    settings: dict
    warnings: list[str] = field(default_factory=list)
    per_run_tests: dict = field(default_factory=dict)


def _parse_late_window(v: Union[str, float, None]):
    if v is None or isinstance(v, float):
        return v
    s = str(v).strip().lower()
    if s in ("crossover", "none"):
        return None if s == "none" else "crossover"
    try:
        f = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--late-window must be 'crossover', 'none' or a fraction in (0, 1), got {v!r}")
    if not 0 < f < 1:
        raise argparse.ArgumentTypeError(f"--late-window fraction must be in (0, 1), got {f}")
    return f


def analyze_runs(
    runs: Union[RunsData, pd.DataFrame],
    *,
    min_points: int = 10,
    late_window: Union[str, float, None] = "crossover",
    n_grid: int = 64,
    method: str = "ar1-boot",
    n_boot: int = 199,
    n_last_llc: int = 10,
    level: float = 0.95,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> AnalysisResult:
    """Fit every run, test H1-H3 across runs and regress on the numeric covariates.

    Runs with fewer than ``min_points`` positive-displacement points, and runs
    whose curve cannot be fitted (e.g. a constant displacement, which has no
    diffusion exponent), are skipped and listed in ``result.skipped`` with the
    reason. Each run's fit uses the seed ``seed + i`` (i = run position) so
    results are reproducible. ``progress`` (default: with 20 runs or more)
    shows a progress bar on stderr.
    """
    from .stats.diffusion import fit_diffusion
    from .stats.regression import cross_run_regressions
    from .stats.verdicts import test_h1_h3

    data = runs if isinstance(runs, RunsData) else validate_runs(runs)
    late_window = _parse_late_window(late_window)
    df = data.data
    rows, skipped, fits = [], [], {}
    groups = list(df.groupby("run", sort=False))
    if progress is None:
        progress = len(groups) >= 20
    it = groups
    if progress:
        from tqdm import tqdm

        it = tqdm(groups, desc="fitting runs", unit="run", file=sys.stderr, mininterval=1.0)
    for i, (run, g) in enumerate(it):
        n_pos = int((g["displacement"] > 0).sum())
        if n_pos < min_points:
            skipped.append({"run": run, "n_points": n_pos,
                            "reason": f"{n_pos} < {min_points} points with displacement > 0"})
            continue
        llc = run_llc_summary(g["llc"], n_last_llc) if data.has_llc else run_llc_summary(pd.Series([], dtype=float))
        try:
            fit = fit_diffusion(g["step"].to_numpy(float), g["displacement"].to_numpy(float),
                                llc=llc["llc"], llc_se=llc["llc_se"],
                                llc_df=llc["llc_n"] - 1 if llc["llc_n"] > 1 else None, n_grid=n_grid, method=method,
                                late_window=late_window, n_boot=n_boot, level=level, seed=seed + i)
        except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. a constant displacement has no exponent
            skipped.append({"run": run, "n_points": n_pos, "reason": f"could not be fitted: {exc}"})
            continue
        except Exception as exc:
            raise RuntimeError(f"run {run!r}: the diffusion fit failed ({type(exc).__name__}: {exc})") from exc
        fits[run] = fit
        row = {"run": run, **fit.to_row()}
        row.update({k: v for k, v in llc.items() if k not in ("llc", "llc_se")})
        rows.append(row)
    tab = pd.DataFrame(rows)
    if len(tab):
        tab = tab.merge(data.covariates, on="run", how="left")
        first = RUNS_COLUMNS + [c for c in tab.columns if c not in RUNS_COLUMNS]
        tab = tab[first]
    skipped_df = pd.DataFrame(skipped, columns=["run", "n_points", "reason"])
    hyps: list = []
    per_run: dict = {}
    regs = None
    warnings = list(data.warnings)
    if len(tab) >= 1:
        late = "late_alpha" in tab and tab["late_alpha"].notna().any()
        hyps, per_run = test_h1_h3(tab, level, seed, h1_windows=("late", "whole") if late else ("whole",),
                                   windows=("whole", "late") if late else ("whole",))
    numeric_covs = [c for c in data.covariate_names
                    if c in tab and pd.api.types.is_numeric_dtype(tab[c]) and tab[c].nunique() > 1]
    if len(tab) >= 4:
        ycols = ["alpha"] + (["late_alpha"] if "late_alpha" in tab and tab["late_alpha"].notna().any() else [])
        if data.has_llc and tab["d_s"].notna().any():
            ycols += ["d_s"]
        pairs = [(y, x) for x in numeric_covs for y in ycols]
        eiv = []
        if data.has_llc and tab["llc"].notna().sum() >= 4:
            pairs += [("d_s", "llc"), ("alpha", "llc")]
            eiv = [("d_s", "llc")]
        if pairs:
            regs = cross_run_regressions(tab, pairs, eiv=eiv, eiv_se={"d_s": "d_s_se", "llc": "llc_se"},
                                         level=level, seed=seed)
    elif len(tab):
        warnings.append(f"only {len(tab)} run(s) fitted: cross-run regressions need >= 4")
    settings = dict(min_points=min_points, late_window=late_window, n_grid=n_grid, method=method,
                    n_boot=n_boot, n_last_llc=n_last_llc, level=level, seed=seed)
    return AnalysisResult(runs=tab, skipped=skipped_df, fits=fits, hypotheses=hyps, regressions=regs,
                          covariates=data.covariate_names, settings=settings, warnings=warnings,
                          per_run_tests=per_run)


OUTPUTS = ("runs.csv", "report.md", "figures/curves_loglog.png", "figures/alpha_ds_vs_llc.png")  # see reporting.analyze


def write_outputs(res: AnalysisResult, data: RunsData, out_dir: Path, runs_file: str, force: bool = False,
                  lock_timeout: float = -1) -> Path:
    """Write runs.csv, report.md and figures/ into ``out_dir``, each file atomically.

    Only these files are written; nothing else in ``out_dir`` is touched (see
    :mod:`sgdbayes.outdir`: a non-empty folder that is not an earlier analyze output needs
    ``force``). The folder is locked while it is written.
    """
    from ._io import atomic_write_text
    from .outdir import OutputDir
    from .reporting.analyze import figures, render

    out = OutputDir(out_dir, "analyze", force=force)
    if data.path is not None:
        out.refuse_overwriting([data.path], OUTPUTS)
    with out.claim(lock_timeout, log=lambda m: print(m, file=sys.stderr)):
        atomic_write_text(out.path / "runs.csv", res.runs.to_csv(index=False))
        figs = figures(res, data, out.path / "figures") if len(res.runs) else []
        atomic_write_text(out.path / "report.md", render(res, runs_file, figs))
        out.commit(["runs.csv", "report.md", *(f"figures/{f}" for f in figs)])
    return Path(out_dir)


def default_out_dir(runs_path: Path) -> Path:
    """``./<runs file stem>_analysis`` in the current directory."""
    name = runs_path.name
    for ext in (".csv.gz", ".parquet", ".csv", ".tsv", ".pq"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return Path.cwd() / f"{name}_analysis"


HELP = """\
Analyze the displacement curves of external training runs (eq 17 of "Almost
Bayesian": log R(t) = alpha log t + c, d_s = 2 lambda alpha, d_walk = 1/alpha)
and test H1-H3 across runs.

RUNS file format: CSV (.csv, .csv.gz, .tsv) or parquet (.parquet, .pq) in long
format, one row per (run, step):
  run           run id (required)
  step          optimizer step t > 0 (required, numeric)
  displacement  R(t) = ||w_t - w_0||_2 >= 0 (required, numeric)
  llc           LLC estimate at that step (optional; may be present on some steps
                only, e.g. every 100 steps). Final lambda = mean of the last 10
                non-missing estimates, se = std/sqrt(n) (autocorrelated: optimistic).
  other columns constant within each run are run covariates (lr, batch_size,
                optimizer, ...); numeric ones are regressed on.

  The run column is read as text exactly as written: "007", "7", "NA" and
  "null" are four different runs.

Outputs: DIR/runs.csv (one row per run), DIR/report.md, DIR/figures/*.png,
each written atomically. Default DIR: ./<RUNS stem>_analysis. DIR must be new,
empty, or an earlier analyze output; any other folder needs --force, and even
then only the files above are written (nothing in DIR is ever removed except
figures an earlier analyze wrote and this one no longer draws). Nothing is
written when the input or an option is invalid (exit status 2). Ctrl-C exits
with status 130. Details: docs/analyze_your_runs.md.
"""


def _check_options(args) -> None:
    """Every option checked before anything is read (RunsFileError names the option)."""
    from ._validation import check_int

    try:
        check_int("--min-points", args.min_points, 5)
        check_int("--grid", args.grid, 5)
        check_int("--n-boot", args.n_boot, 1)
        check_int("--seed", args.seed, 0)
        if args.lock_timeout < 0 and args.lock_timeout != -1:
            raise ValueError(f"--lock-timeout must be >= 0 seconds (or -1: wait), got {args.lock_timeout}")
    except ValueError as exc:
        raise RunsFileError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgdbayes.analyze", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", metavar="RUNS", help="runs file (.csv/.csv.gz/.tsv/.parquet/.pq), long format")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: ./<RUNS stem>_analysis); new, empty or an earlier analyze output")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out folder that is not an earlier analyze output "
                        "(only runs.csv, report.md and figures/ are written; nothing else is touched)")
    p.add_argument("--min-points", type=int, default=10, metavar="N",
                   help="skip runs with fewer than N points with displacement > 0 (default 10, at least 5)")
    p.add_argument("--late-window", type=_parse_late_window, default="crossover", metavar="W",
                   help="'crossover' (default: fit t >= t_c of a two-segment fit), a fraction f in (0,1) "
                        "(last f of the log-t range) or 'none'")
    p.add_argument("--grid", type=int, default=64, metavar="K",
                   help="points evenly spaced in log t used per fit (default 64, at least 5)")
    p.add_argument("--method", default="ar1-boot", choices=["ar1-boot", "ar1", "hac", "ols"],
                   help="interval method for alpha (default ar1-boot; the others undercover, see "
                        "docs/analyze_your_runs.md)")
    p.add_argument("--n-boot", type=int, default=199, help="bootstrap draws per fit (default 199, at least 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed, an integer >= 0 (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown on stderr with >= 20 runs)")
    p.add_argument("--lock-timeout", type=float, default=-1, metavar="S",
                   help="if another sgdbayes process is writing --out, wait at most S seconds (default: wait)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .outdir import BusyError, OutputDir, OutputDirError

    args = build_parser().parse_args(argv)
    path = Path(args.runs)
    out = Path(args.out) if args.out else default_out_dir(path)
    t0 = time.time()
    try:
        _check_options(args)
        OutputDir(out, "analyze", force=args.force)  # a bad --out fails here, before any work
        data = read_runs(path)
        for w in data.warnings:
            print(f"warning: {path}: {w}", file=sys.stderr)
        res = analyze_runs(data, min_points=args.min_points, late_window=args.late_window, n_grid=args.grid,
                           method=args.method, n_boot=args.n_boot, seed=args.seed,
                           progress=False if args.no_progress else None)
        if len(res.skipped):
            n_unfit = int(res.skipped["reason"].str.startswith("could not be fitted").sum())
            print(f"{path}: skipped {len(res.skipped) - n_unfit} run(s) with fewer than {args.min_points} points"
                  + (f"; {n_unfit} run(s) could not be fitted (see report.md)" if n_unfit else ""), file=sys.stderr)
            for _, row in res.skipped[res.skipped["reason"].str.startswith("could not")].head(5).iterrows():
                print(f"  run {row['run']!r}: {row['reason']}", file=sys.stderr)
        if not len(res.runs):
            raise RunsFileError(f"{path}: no run could be fitted: {len(res.skipped)} run(s) skipped "
                                f"(fewer than {args.min_points} points with displacement > 0, or no fit)")
        write_outputs(res, data, out, str(path), force=args.force, lock_timeout=args.lock_timeout)
    except (RunsFileError, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left in the output folder", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: short message, traceback only with --debug
        if args.debug:
            raise
        print(f"error: {path}: analysis failed ({type(exc).__name__}: {exc}); rerun with --debug for details",
              file=sys.stderr)
        return 1
    print(f"{path}: {len(res.runs)} run(s) analyzed in {time.time() - t0:.1f} s -> {out}/report.md, "
          f"{out}/runs.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
