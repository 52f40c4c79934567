"""The external-runs CLI: outputs on the example file, and clean failures on bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sgdbayes.runs import RunsFileError, read_runs, run_llc_summary

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "examples" / "example_runs.csv"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sgdbayes.analyze", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def example_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    df = pd.read_csv(EXAMPLE)
    # one extra run with too few points, to be skipped and counted
    short = df[df["run"] == "run00"].head(6).assign(run="tiny")
    pd.concat([df, short]).to_csv(d / "runs.csv", index=False)
    res = _cli(d / "runs.csv", "--out", d / "out", "--n-boot", "99", cwd=d)
    return d, res


def test_cli_example_outputs(example_out):
    d, res = example_out
    assert res.returncode == 0, res.stderr
    out = d / "out"
    runs = pd.read_csv(out / "runs.csv")
    need = ["run", "n_points", "alpha", "alpha_lo", "alpha_hi", "r2", "llc", "llc_se", "d_s", "d_s_lo",
            "d_s_hi", "d_walk", "p_subdiffusive", "t_c", "t_c_lo", "t_c_hi", "late_alpha", "late_alpha_lo",
            "late_alpha_hi", "late_d_s", "lr", "batch_size"]
    assert [c for c in need if c not in runs] == []
    assert len(runs) == 12 and "tiny" not in set(runs["run"])
    assert (runs["alpha_lo"] < runs["alpha"]).all() and (runs["alpha"] < runs["alpha_hi"]).all()
    np.testing.assert_allclose(runs["d_s"], 2 * runs["llc"] * runs["alpha"])
    truth = pd.read_csv(ROOT / "data" / "examples" / "example_runs_truth.csv")
    m = runs.merge(truth, on="run")
    assert np.mean((m.late_alpha_lo <= m.alpha_late) & (m.alpha_late <= m.late_alpha_hi)) >= 0.75
    rep = (out / "report.md").read_text()
    for s in ("H1", "H2", "H3", "Holm", "Wilcoxon", "Cross-run regressions", "equivalent", "lr"):
        assert s in rep
    assert "skipped" in rep and "tiny" in rep
    assert "skipped 1 run" in res.stderr
    assert (out / "figures" / "curves_loglog.png").stat().st_size > 1000
    assert (out / "figures" / "alpha_ds_vs_llc.png").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".out")]  # no temp dirs left


def test_cli_help():
    res = subprocess.run([sys.executable, "-m", "sgdbayes.analyze", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for s in ("displacement", "llc", "step", "_analysis", "--late-window", "--min-points"):
        assert s in res.stdout


def _bad_cases(d: Path):
    good = pd.DataFrame({"run": ["a"] * 20, "step": np.arange(1, 21), "displacement": np.arange(1, 21) ** 0.4})
    cases = {}
    p = d / "missing_col.csv"
    good.drop(columns="displacement").to_csv(p, index=False)
    cases["missing"] = (p, "displacement")
    p = d / "nonnumeric.csv"
    good.assign(step=["x"] + list(range(2, 21))).to_csv(p, index=False)
    cases["nonnumeric"] = (p, "step")
    p = d / "step_zero.csv"
    good.assign(step=np.arange(0, 20)).to_csv(p, index=False)
    cases["step0"] = (p, "step")
    p = d / "negdisp.csv"
    good.assign(displacement=-good["displacement"]).to_csv(p, index=False)
    cases["negative"] = (p, "displacement")
    p = d / "empty.csv"
    p.write_text("")
    cases["empty"] = (p, "empty")
    p = d / "header_only.csv"
    p.write_text("run,step,displacement\n")
    cases["norows"] = (p, "no rows")
    p = d / "garbage.parquet"
    p.write_bytes(b"not a parquet file at all")
    cases["unreadable"] = (p, "cannot read")
    p = d / "runs.xlsx"
    good.to_csv(p, index=False)
    cases["extension"] = (p, "extension")
    cases["notfound"] = (d / "nope.csv", "not found")
    p = d / "bad_llc.csv"
    good.assign(llc="abc").to_csv(p, index=False)
    cases["llc"] = (p, "llc")
    return cases


@pytest.mark.parametrize("case", ["missing", "nonnumeric", "step0", "negative", "empty", "norows",
                                  "unreadable", "extension", "notfound", "llc"])
def test_cli_bad_input(tmp_path, case):
    path, needle = _bad_cases(tmp_path)[case]
    out = tmp_path / "out_dir"
    res = _cli(path, "--out", out, cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert str(path) in res.stderr and needle in res.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out_dir")]


def test_cli_all_runs_too_short(tmp_path):
    p = tmp_path / "short.csv"
    pd.DataFrame({"run": ["a"] * 5, "step": np.arange(1, 6), "displacement": np.ones(5)}).to_csv(p, index=False)
    res = _cli(p, cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "skipped" in res.stderr
    assert not (tmp_path / "short_analysis").exists()


def test_default_out_dir_and_parquet(tmp_path):
    df = pd.read_csv(EXAMPLE)
    df = df[df["run"].isin(["run00", "run01", "run02", "run03"])]
    p = tmp_path / "four.parquet"
    df.to_parquet(p)
    res = _cli(p, "--n-boot", "49", "--late-window", "0.5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "four_analysis" / "runs.csv").exists()
    assert (tmp_path / "four_analysis" / "report.md").exists()


def test_read_runs_covariates_and_llc_summary(tmp_path):
    df = pd.read_csv(EXAMPLE)
    df["varying"] = np.arange(len(df))
    p = tmp_path / "x.csv"
    df.to_csv(p, index=False)
    rd = read_runs(p)
    assert rd.covariate_names == ["lr", "batch_size", "optimizer"]
    assert any("varying" in w for w in rd.warnings)
    g = rd.data[rd.data["run"] == "run00"]["llc"]
    s = run_llc_summary(g)
    last = g.dropna().to_numpy()[-10:]
    assert s["llc"] == pytest.approx(last.mean()) and s["llc_n"] == 10
    assert s["llc_se"] == pytest.approx(last.std(ddof=1) / np.sqrt(10))
    dup = pd.concat([df.head(3), df.head(3)])
    dup.to_csv(p, index=False)
    with pytest.raises(RunsFileError, match="duplicate"):
        read_runs(p)
