"""Analyze external training runs: diffusion fits, H1-H3 tests and cross-run regressions.

``python -m sgdbayes.analyze RUNS [--out DIR] [--min-points N] [--late-window W]``

Per run: eq 17 ``log R(t) = alpha log t + c`` (alpha = d_s / (2 lambda)), fitted on
points evenly spaced in log t with AR(1)-error intervals (see
:mod:`sgdbayes.stats.diffusion`), ``d_walk = 1/alpha`` (eq 12) and
``d_s = 2 lambda alpha`` with a delta-method interval
``se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2``. Plus a
late-window fit after a crossover t_c (App B.3). Across runs: H1-H3
(:mod:`sgdbayes.stats.hypotheses`) and regressions against the numeric run
covariates (:mod:`sgdbayes.stats.regression`).

Outputs (each file written atomically; nothing else in DIR is touched):
``DIR/runs.csv``, ``DIR/report.md``, ``DIR/figures/*.png``. See docs/analyze_your_runs.md.
"""
from __future__ import annotations

import argparse
import math
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
    """Everything :func:`analyze_runs` computed: per-run table, skipped runs, tests, regressions."""

    runs: pd.DataFrame
    skipped: pd.DataFrame
    fits: dict
    hypotheses: list
    regressions: Optional["Regressions"]
    covariates: list[str]
    settings: dict
    warnings: list[str] = field(default_factory=list)


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
    from .stats.hypotheses import test_all
    from .stats.regression import cross_run_regressions

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
    regs = None
    warnings = list(data.warnings)
    if len(tab) >= 1:
        hyps = test_all(tab, level=level)
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
                          covariates=data.covariate_names, settings=settings, warnings=warnings)


# --------------------------------------------------------------------------- figures
def _figures(res: AnalysisResult, data: RunsData, figdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .reporting.markdown import atomic_savefig

    out = []
    runs = list(res.fits)
    show = runs[:16]
    ncol = min(4, len(show))
    nrow = math.ceil(len(show) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False,
                             constrained_layout=True)
    df = data.data
    for ax, run in zip(axes.flat, show):
        g = df[(df["run"] == run) & (df["displacement"] > 0)]
        f = res.fits[run]
        t = g["step"].to_numpy(float)
        ax.loglog(t, g["displacement"], ".", ms=2, color="0.5", label="R(t)")
        tt = np.geomspace(t.min(), t.max(), 50)
        ax.loglog(tt, np.exp(f.intercept) * tt ** f.alpha, "-", color="C0", lw=1.2,
                  label=f"whole a={f.alpha:.2f}")
        if f.late is not None:
            tl = np.geomspace(f.late.t_min, f.late.t_max, 30)
            ax.loglog(tl, np.exp(f.late.intercept) * tl ** f.late.alpha, "-", color="C3", lw=1.2,
                      label=f"late a={f.late.alpha:.2f}")
        if f.crossover is not None:
            ax.axvspan(*f.crossover.conf_int().loc["t_c"], color="C3", alpha=0.12)
            ax.axvline(f.crossover.t_c, color="C3", lw=0.6, ls="--")
        ax.set_title(str(run), fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
        ax.tick_params(labelsize=6)
        ax.minorticks_off()
    for ax in list(axes.flat)[len(show):]:
        ax.set_visible(False)
    fig.supxlabel("step t")
    fig.supylabel("displacement R(t)")
    title = "log-log displacement with eq-17 fits (shaded: t_c interval)"
    if len(runs) > len(show):
        title += f" - first {len(show)} of {len(runs)} runs"
    fig.suptitle(title, fontsize=9)
    atomic_savefig(fig, figdir / "curves_loglog.png", dpi=90, bbox_inches=None)
    out.append("curves_loglog.png")
    tab = res.runs
    if "llc" in tab and tab["llc"].notna().any():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        m = tab["llc"].notna()
        t = tab[m]
        for pre, color, lab in (("", "C0", "whole"), ("late_", "C3", "late")):
            if pre + "alpha" not in t or t[pre + "alpha"].isna().all():
                continue
            a = t[pre + "alpha"].astype(float)
            axes[0].errorbar(t["llc"], a, yerr=[a - t[pre + "alpha_lo"].astype(float),
                                                t[pre + "alpha_hi"].astype(float) - a],
                             xerr=t["llc_se"].astype(float), fmt="o", ms=3, color=color, label=lab, lw=0.7)
            d = t[pre + "d_s"].astype(float)
            axes[1].errorbar(t["llc"], d, yerr=[d - t[pre + "d_s_lo"].astype(float),
                                                t[pre + "d_s_hi"].astype(float) - d],
                             xerr=t["llc_se"].astype(float), fmt="o", ms=3, color=color, label=lab, lw=0.7)
        axes[0].axhline(0.5, color="k", ls="--", lw=0.8, label="alpha = 1/2")
        axes[0].set_xlabel("lambda (final LLC)")
        axes[0].set_ylabel("alpha (eq 17)")
        lim = np.array([min(0, t["llc"].min()), t["llc"].max()])
        axes[1].plot(lim, lim, "k--", lw=0.8, label="d_s = lambda")
        axes[1].set_xlabel("lambda (final LLC)")
        axes[1].set_ylabel("d_s = 2 lambda alpha")
        for ax in axes:
            ax.legend(fontsize=7)
        fig.suptitle("alpha and d_s vs lambda (95% CIs)", fontsize=9)
        atomic_savefig(fig, figdir / "alpha_ds_vs_llc.png")
        out.append("alpha_ds_vs_llc.png")
    return out


# --------------------------------------------------------------------------- report
def _report(res: AnalysisResult, runs_file: str, figures: list[str]) -> str:
    from .reporting.markdown import fmt_ci, fmt_num, fmt_p, md_table, versions_block

    s = res.settings
    tab = res.runs
    L = [f"# Diffusion analysis of `{runs_file}`", ""]
    n_unfit = int(res.skipped["reason"].str.startswith("could not be fitted").sum()) if len(res.skipped) else 0
    L += [f"- runs in file: {len(tab) + len(res.skipped)}; fitted: {len(tab)}; "
          f"skipped (fewer than {s['min_points']} points with R > 0): {len(res.skipped) - n_unfit}; "
          f"could not be fitted: {n_unfit}",
          f"- run covariates: {', '.join(res.covariates) if res.covariates else 'none'}",
          f"- late window: {s['late_window'] or 'none'}; grid: {s['n_grid']} points evenly spaced in log t; "
          f"interval method: {s['method']} ({s['n_boot']} bootstrap draws); level {s['level']}", ""]
    for w in res.warnings:
        L.append(f"- warning: {w}")
    L += ["## Methods", "",
          "- Eq 17: `log R(t) = alpha log t + c`, alpha = d_s / (2 lambda); d_walk = 1/alpha (eq 12); "
          "d_s = 2 lambda alpha. r2 is the OLS r2 of the log-log fit (the paper's r2).",
          "- Residuals of log R(t) are strongly autocorrelated, so OLS (and Newey-West) intervals undercover. "
          "Intervals here come from GLS with AR(1) errors (on a log-t or logging-index clock) whose t "
          "statistic is calibrated by simulation; coverage measured in docs/intervals.md "
          "(benchmarks/coverage.py). Column interval_flags names runs in conditions where it may undercover.",
          "- Crossover t_c: two-segment (hinge) fit in log-log space, posterior interval integrated over the "
          "error correlation; the late window is t >= t_c.",
          "- Final lambda = mean of the last 10 non-missing LLC estimates, se = std/sqrt(n) (the estimates are "
          "autocorrelated, so this se is optimistic); lambda_bar (H3) = mean of all estimates.",
          "- d_s interval by the delta method: se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2.",
          "- **Equivalence:** because d_s = 2 lambda alpha, H2 (d_s <= lambda, Lemma 3.4) is equivalent to "
          "alpha <= 1/2 whenever lambda > 0: as measured by eq 17 it is a test of sub-diffusion and lambda "
          "enters only through its sign. H3 (alpha <= lambda_bar / (2 lambda_final)) does depend on lambda. "
          "Runs with lambda <= 0 are excluded from H2/H3 tests and listed separately.",
          "- Per-run tests are one-sided with the claim as the alternative; Holm-adjusted across runs "
          "(`multipletests(method='holm')`). Across runs: Wilcoxon signed-rank, alternative='less'.", ""]
    L += ["## Hypotheses", ""]
    if res.hypotheses:
        rows = []
        for h in res.hypotheses:
            r = h.to_frame().iloc[0]
            rows.append({"hypothesis": r["id"], "claim": r["claim"], "window": r["window"],
                         "tested": r["n_tested"], "excluded": r["n_excluded"],
                         "supported (Holm)": r["n_support_holm"],
                         "share upper < threshold": fmt_num(r["share_upper_below"], 3),
                         "median diff": fmt_num(r["estimate"], 3),
                         "Wilcoxon p (less)": fmt_p(r["pvalue"])})
        L += [md_table(pd.DataFrame(rows)), ""]
        L += [f"- {h.summary()}" for h in res.hypotheses]
        L.append("")
        if "llc" in tab:
            neg = tab[tab["llc"].notna() & (tab["llc"] <= 0)]
            nol = tab[tab["llc"].isna()]
            L.append(f"Runs with lambda <= 0: {len(neg)}" + (f" ({', '.join(neg['run'])})" if len(neg) else "")
                     + f"; runs without LLC: {len(nol)}.")
            if len(neg):
                L += ["", md_table(neg[["run", "llc", "llc_se", "alpha", "d_s"]]), ""]
            L.append("")
    else:
        L += ["No run could be fitted, so no hypothesis was tested.", ""]
    L += ["## Per-run fits", ""]
    if len(tab):
        per = pd.DataFrame({
            "run": tab["run"], "n": tab["n_points"],
            "alpha [95% CI]": [fmt_ci(a, lo, hi) for a, lo, hi in zip(tab["alpha"], tab["alpha_lo"], tab["alpha_hi"])],
            "r2": [fmt_num(v, 3) for v in tab["r2"]],
            "p(alpha<1/2)": [fmt_p(v) for v in tab["p_subdiffusive"]],
            "t_c [CI]": [fmt_ci(a, lo, hi) for a, lo, hi in zip(tab["t_c"], tab["t_c_lo"], tab["t_c_hi"])],
            "late alpha [CI]": [fmt_ci(a, lo, hi) for a, lo, hi in
                                zip(tab["late_alpha"], tab["late_alpha_lo"], tab["late_alpha_hi"])],
            "lambda": [fmt_ci(v, v - 1.96 * s_ if s_ is not None and s_ == s_ else None,
                              v + 1.96 * s_ if s_ is not None and s_ == s_ else None)
                       for v, s_ in zip(tab["llc"], tab["llc_se"])],
            "d_s [CI]": [fmt_ci(a, lo, hi) for a, lo, hi in zip(tab["d_s"], tab["d_s_lo"], tab["d_s_hi"])],
        })
        L += [md_table(per), ""]
    if len(res.skipped):
        L += [f"Skipped and unfit runs ({len(res.skipped)}), with the reason:", "", md_table(res.skipped), ""]
    L += ["## Cross-run regressions", ""]
    if res.regressions is not None:
        rt = res.regressions.table.copy()
        show = pd.DataFrame({"y": rt["y"], "x": rt["x"], "kind": rt["kind"], "n": rt["n"],
                             "estimate [95% CI]": [fmt_ci(e, lo, hi) for e, lo, hi in
                                                   zip(rt["estimate"], rt["lo"], rt["hi"])],
                             "p": [fmt_p(v) for v in rt["p"]], "p (Holm)": [fmt_p(v) for v in rt["p_holm"]],
                             "note": rt["note"]})
        L += ["OLS slopes with HC3 intervals, Spearman rho with bootstrap intervals over runs, Deming "
              "(errors-in-variables) slope for d_s vs lambda with bootstrap interval; all p-values "
              f"Holm-adjusted across the {int(rt['p'].notna().sum())} tests of this table.", "",
              md_table(show), ""]
    else:
        L += ["Not computed (fewer than 4 fitted runs or no numeric covariate / LLC).", ""]
    L += ["## Figures", ""]
    for f in figures:
        L.append(f"![{f}](figures/{f})")
    L += ["", "## Versions", "", versions_block(), ""]
    return "\n".join(L)


OUTPUTS = ("runs.csv", "report.md", "figures/curves_loglog.png", "figures/alpha_ds_vs_llc.png")


def write_outputs(res: AnalysisResult, data: RunsData, out_dir: Path, runs_file: str, force: bool = False,
                  lock_timeout: float = -1) -> Path:
    """Write runs.csv, report.md and figures/ into ``out_dir``, each file atomically.

    Only these files are written; nothing else in ``out_dir`` is touched (see
    :mod:`sgdbayes.outdir`: a non-empty folder that is not an earlier analyze output needs
    ``force``). The folder is locked while it is written.
    """
    from ._io import atomic_write_text
    from .outdir import OutputDir

    out = OutputDir(out_dir, "analyze", force=force)
    if data.path is not None:
        out.refuse_overwriting([data.path], OUTPUTS)
    with out.claim(lock_timeout, log=lambda m: print(m, file=sys.stderr)):
        atomic_write_text(out.path / "runs.csv", res.runs.to_csv(index=False))
        figs = _figures(res, data, out.path / "figures") if len(res.runs) else []
        atomic_write_text(out.path / "report.md", _report(res, runs_file, figs))
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
