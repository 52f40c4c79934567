"""Coverage of sgdbayes' 95 % intervals for alpha, d_s and t_c over a grid of simulated conditions.

    python benchmarks/coverage.py                 # the full grid (minutes)
    python benchmarks/coverage.py --curves 150    # faster, wider Monte-Carlo intervals
    python benchmarks/coverage.py --csv out.csv   # also write every cell

Each cell simulates ``--curves`` curves with a known truth (sgdbayes.stats.coverage)
and prints the share of intervals that hold it with its 95 % Wilson interval,
the share of runs whose fit carries an interval flag, and the coverage among the
unflagged runs. Goal for alpha and d_s: within [0.93, 0.97]. Cells outside are
listed at the end. The last line compares the previous default interval method
(``pw-boot``) with the current one on the cells both were run on:
``ratio: X`` = mean |coverage - 0.95| of pw-boot / that of ar1-boot.
Reasoning and the chosen method: docs/intervals.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgdbayes.stats.coverage import GOAL, null_size, run_condition, suite  # noqa: E402

def _f3(v) -> str:
    return f"{v:.3f}"


def _mark(row) -> str:
    if row["param"] == "t_c" or row["coverage"] != row["coverage"]:
        return ""
    if row["coverage"] < GOAL[0]:
        return "UNDER"
    return "over" if row["coverage"] > GOAL[1] else "ok"


def _print_block(name: str, df: pd.DataFrame) -> None:
    cols = ["grid", "n_points", "fit_points", "phi", "clock", "sigma", "alpha", "llc_noise", "method", "param",
            "coverage", "ci_low", "ci_high", "share_flagged", "coverage_unflagged", "mark"]
    show = df[cols].copy()
    for c in ("coverage", "ci_low", "ci_high", "share_flagged", "coverage_unflagged"):
        show[c] = show[c].map(lambda v: f"{v:.3f}")
    print(f"\n## {name}\n")
    print(show.to_string(index=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", type=int, default=400, help="simulated curves per cell (default 400)")
    ap.add_argument("--csv", type=Path, default=None, help="write every cell to this CSV file")
    ap.add_argument("--blocks", default="ABCDEF", help="which blocks to run (letters, default all)")
    args = ap.parse_args(argv)
    if args.curves < 10:
        ap.error("--curves must be >= 10")
    t0 = time.perf_counter()
    frames = []
    for name, conds in suite().items():
        if name[0] not in args.blocks:
            continue
        rows = [run_condition(c, args.curves, seed=1000 + i).to_frame().assign(block=name[0])
                for i, c in enumerate(conds)]
        df = pd.concat(rows, ignore_index=True)
        df["mark"] = df.apply(_mark, axis=1)
        _print_block(name, df)
        frames.append(df)
    if "F" in args.blocks:
        print("\n## F. size of the tests of H1 under H0 (alpha = 1/2 in every run; 12 runs per ensemble)\n")
        for phi in (0.5, 0.8, 0.95):
            ns = null_size(n_ensembles=max(args.curves, 100), phi=phi, seed=7)
            print(f"phi = {phi}:")
            print(ns.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not frames:
        return 0
    allc = pd.concat(frames, ignore_index=True)
    if args.csv:
        allc.to_csv(args.csv, index=False)
    cur = allc[(allc["method"] == "ar1-boot") & (allc["param"] != "t_c")]
    bad = cur[cur["mark"] != "ok"]
    print(f"\n## Summary ({len(cur)} alpha / d_s cells of ar1-boot, {args.curves} curves each)\n")
    print(f"within [{GOAL[0]}, {GOAL[1]}]: {int((cur['mark'] == 'ok').sum())}; "
          f"below: {int((cur['mark'] == 'UNDER').sum())}; above: {int((cur['mark'] == 'over').sum())}")
    if len(bad):
        print(bad[["block", "grid", "n_points", "phi", "clock", "sigma", "alpha", "llc_noise", "param", "coverage",
                   "ci_low", "ci_high", "share_flagged", "coverage_unflagged"]].to_string(index=False,
                                                                                         float_format=_f3))
    tc = allc[allc["param"] == "t_c"]
    if len(tc):
        print(f"\nt_c: coverage {tc['coverage'].min():.3f} - {tc['coverage'].max():.3f} over {len(tc)} cells, "
              f"median {tc['coverage'].median():.3f}")
    e = allc[allc["block"] == "E"]
    if len(e):
        err = e.assign(err=(e["coverage"] - 0.95).abs()).groupby("method")["err"].mean()
        print(f"\nmean |coverage - 0.95| on block E: pw-boot {err['pw-boot']:.4f}, ar1-boot {err['ar1-boot']:.4f}")
        print(f"ratio: {err['pw-boot'] / max(err['ar1-boot'], 1e-9):.2f}")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
