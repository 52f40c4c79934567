"""`python -m sgdbayes.analyze` under the faults of issue 10: the output folder never loses what
sgdbayes did not write, run ids stay text, unfit runs do not abort, options and odd files get
clear errors, Ctrl-C exits 130, outputs are 0644, long inputs show progress."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sgdbayes import analyze
from sgdbayes.outdir import MANIFEST
from sgdbayes.runs import RunsFileError, read_runs


def _runs(ids, n=30, seed=0, llc=False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1, dtype=float)
    parts = []
    for i, r in enumerate(ids):
        d = t ** (0.3 + 0.02 * i) * np.exp(rng.normal(0, 0.02, n))
        df = pd.DataFrame({"run": r, "step": t, "displacement": d})
        if llc:
            df["llc"] = np.where(t % 5 == 0, 5.0 + i, np.nan)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def _main(args, capsys):
    rc = analyze.main([str(a) for a in args])
    return rc, capsys.readouterr().err


FAST = ["--method", "ols", "--n-boot", "5", "--late-window", "none"]


# --------------------------------------------------------------------------- item 1: nothing lost

def test_analyze_into_the_folder_that_holds_its_input_keeps_the_input(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    _runs(["a", "b", "c", "d"]).to_csv(d / "long.csv", index=False)
    (d / "notes.txt").write_text("my notes")
    rc, err = _main([d / "long.csv", "--out", d, *FAST], capsys)
    assert rc == 2 and "not empty" in err and "--force" in err and "Traceback" not in err
    assert sorted(p.name for p in d.iterdir()) == ["long.csv", "notes.txt"]  # nothing written
    rc, err = _main([d / "long.csv", "--out", d, "--force", *FAST], capsys)
    assert rc == 0, err
    assert (d / "notes.txt").read_text() == "my notes" and (d / "long.csv").is_file()
    assert (d / "runs.csv").is_file() and (d / "report.md").is_file()
    man = json.loads((d / MANIFEST).read_text())
    assert man["kind"] == "analyze" and "long.csv" not in man["files"] and "runs.csv" in man["files"]
    rc, err = _main([d / "long.csv", "--out", d, *FAST], capsys)  # now an earlier output: no --force needed
    assert rc == 0, err
    assert (d / "notes.txt").read_text() == "my notes" and (d / "long.csv").is_file()
    assert not [p for p in d.iterdir() if p.name.startswith(".") and p.name not in (MANIFEST, ".sgdbayes.lock")]


def test_input_named_like_an_output_is_never_replaced(tmp_path, capsys):
    _runs(["a", "b", "c", "d"]).to_csv(tmp_path / "runs.csv", index=False)
    before = (tmp_path / "runs.csv").read_bytes()
    rc, err = _main([tmp_path / "runs.csv", "--out", tmp_path, "--force", *FAST], capsys)
    assert rc == 2 and "would replace the input file" in err
    assert (tmp_path / "runs.csv").read_bytes() == before


def test_out_dot_works_and_leaves_no_hidden_temporaries(tmp_path, capsys, monkeypatch):
    _runs(["a", "b", "c", "d"]).to_csv(tmp_path / "in.csv", index=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, err = _main([tmp_path / "in.csv", "--out", ".", *FAST], capsys)
    assert rc == 0, err
    assert (work / "report.md").is_file() and (work / "runs.csv").is_file()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [MANIFEST, ".sgdbayes.lock"]


@pytest.mark.parametrize("kind", ["file", "under_file", "unwritable"])
def test_bad_out_is_a_clear_error_at_start_up(tmp_path, capsys, kind):
    _runs(["a", "b", "c", "d"]).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "sub"}.get(kind)
    if kind == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root can write everywhere")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
    rc, err = _main([tmp_path / "in.csv", "--out", out, *FAST], capsys)
    assert rc == 2 and "Traceback" not in err and "--out" in err
    assert (tmp_path / "afile").read_text() == "x"
    assert {"file": "is a file", "under_file": "is a file", "unwritable": "not writable"}[kind] in err


def test_a_figure_no_longer_drawn_is_removed_but_nothing_else(tmp_path, capsys):
    out = tmp_path / "out"
    _runs(["a", "b", "c", "d"], llc=True).to_csv(tmp_path / "with_llc.csv", index=False)
    assert _main([tmp_path / "with_llc.csv", "--out", out, *FAST], capsys)[0] == 0
    assert (out / "figures" / "alpha_ds_vs_llc.png").is_file()
    (out / "figures" / "mine.png").write_bytes(b"user file")
    _runs(["a", "b", "c", "d"]).to_csv(tmp_path / "no_llc.csv", index=False)
    assert _main([tmp_path / "no_llc.csv", "--out", out, *FAST], capsys)[0] == 0
    assert not (out / "figures" / "alpha_ds_vs_llc.png").exists()  # sgdbayes wrote it, and not this time
    assert (out / "figures" / "mine.png").read_bytes() == b"user file"


def test_outputs_are_written_with_the_umask_mode_not_0600(tmp_path, capsys):
    _runs(["a", "b", "c", "d"], llc=True).to_csv(tmp_path / "in.csv", index=False)
    old = os.umask(0o022)
    try:
        assert _main([tmp_path / "in.csv", "--out", tmp_path / "o", *FAST], capsys)[0] == 0
    finally:
        os.umask(old)
    for f in ["runs.csv", "report.md", "figures/curves_loglog.png", "figures/alpha_ds_vs_llc.png", MANIFEST]:
        assert (tmp_path / "o" / f).stat().st_mode & 0o777 == 0o644, f


# --------------------------------------------------------------------------- item 2: run ids are text

IDS = ["007", "7", "08", "NA", "null", "8.0"]


def test_run_ids_are_read_verbatim_from_csv_and_parquet(tmp_path):
    df = _runs(IDS)
    df.to_csv(tmp_path / "r.csv", index=False)
    df.to_parquet(tmp_path / "r.parquet")
    for p in (tmp_path / "r.csv", tmp_path / "r.parquet"):
        rd = read_runs(p)
        assert sorted(rd.runs) == sorted(IDS), p
        assert len(rd.data) == len(df)


def test_run_ids_stay_distinct_through_the_analysis(tmp_path, capsys):
    _runs(IDS).to_csv(tmp_path / "r.csv", index=False)
    rc, err = _main([tmp_path / "r.csv", "--out", tmp_path / "o", *FAST], capsys)
    assert rc == 0, err
    out = pd.read_csv(tmp_path / "o" / "runs.csv", dtype={"run": str}, keep_default_na=False)
    assert sorted(out["run"]) == sorted(IDS)


def test_empty_run_id_is_an_error_naming_the_column(tmp_path):
    p = tmp_path / "r.csv"
    _runs(["a", ""]).to_csv(p, index=False)
    with pytest.raises(RunsFileError, match="column 'run' has 30 empty value"):
        read_runs(p)


# --------------------------------------------------------------------------- item 3: unfit runs

def test_a_run_that_cannot_be_fitted_is_reported_and_the_rest_analysed(tmp_path, capsys, monkeypatch):
    """The diffusion fit raises a ValueError for a run with constant displacement (it has no exponent);
    analyze lists the run as unfit with the reason and analyses the others."""
    import sgdbayes.stats.diffusion as sd

    real = sd.fit_diffusion

    def fit(t, d, **kw):
        if np.ptp(np.asarray(d, float)) == 0:
            raise ValueError("displacement is constant: no diffusion exponent")
        return real(t, d, **kw)

    monkeypatch.setattr(sd, "fit_diffusion", fit)
    df = _runs(["a", "b", "c", "d"])
    for r, c in (("flat_tiny", 1e-9), ("flat_huge", 1e9)):
        df = pd.concat([df, pd.DataFrame({"run": r, "step": np.arange(1, 31.0), "displacement": c})])
    df.to_csv(tmp_path / "r.csv", index=False)
    rc, err = _main([tmp_path / "r.csv", "--out", tmp_path / "o", *FAST], capsys)
    assert rc == 0, err
    assert "2 run(s) could not be fitted" in err and "'flat_tiny'" in err
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    assert sorted(runs["run"]) == ["a", "b", "c", "d"]
    rep = (tmp_path / "o" / "report.md").read_text()
    assert "flat_huge" in rep and "could not be fitted: displacement is constant" in rep


def test_every_run_unfit_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import sgdbayes.stats.diffusion as sd

    def fit(t, d, **kw):
        raise ValueError("displacement is constant")

    monkeypatch.setattr(sd, "fit_diffusion", fit)
    _runs(["a", "b"]).to_csv(tmp_path / "r.csv", index=False)
    rc, err = _main([tmp_path / "r.csv", "--out", tmp_path / "o", *FAST], capsys)
    assert rc == 2 and "no run could be fitted" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- item 13: options and odd files

@pytest.mark.parametrize("opt, needle", [
    (["--n-boot", "0"], "--n-boot must be an integer >= 1"),
    (["--seed", "-3"], "--seed must be an integer >= 0"),
    (["--grid", "2"], "--grid must be an integer >= 5"),
    (["--min-points", "1"], "--min-points must be an integer >= 5"),
])
def test_bad_options_are_rejected_before_the_analysis(tmp_path, capsys, opt, needle, monkeypatch):
    _runs(["a", "b"]).to_csv(tmp_path / "r.csv", index=False)
    monkeypatch.setattr(analyze, "read_runs", lambda p: pytest.fail("the file was read before the options were checked"))
    rc, err = _main([tmp_path / "r.csv", "--out", tmp_path / "o", *opt], capsys)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_non_integer_grid_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sgdbayes.analyze", str(tmp_path / "x.csv"), "--grid", "many"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--grid" in r.stderr and "Traceback" not in r.stderr


def test_gzip_file_named_csv_says_so(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(gzip.compress(_runs(["a"]).to_csv(index=False).encode()))
    with pytest.raises(RunsFileError, match=r"gzip-compressed .* rename it to r.csv.gz"):
        read_runs(p)


def test_semicolon_separated_file_says_so(tmp_path):
    p = tmp_path / "r.csv"
    _runs(["a"]).to_csv(p, index=False, sep=";")
    with pytest.raises(RunsFileError, match="semicolon-separated"):
        read_runs(p)


# --------------------------------------------------------------------------- items 12, 19: Ctrl-C, progress

def test_keyboard_interrupt_exits_130_without_traceback(tmp_path, capsys, monkeypatch):
    _runs(["a", "b"]).to_csv(tmp_path / "r.csv", index=False)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze, "analyze_runs", interrupted)
    rc, err = _main([tmp_path / "r.csv", "--out", tmp_path / "o"], capsys)
    assert rc == 130 and "Traceback" not in err and not (tmp_path / "o").exists()


def test_long_input_shows_progress_and_ctrl_c_stops_it(tmp_path):
    """2000 runs: a progress bar on stderr; SIGINT in the middle exits 130, no traceback, no temporaries."""
    _runs([f"r{i:04d}" for i in range(2000)], n=40).to_csv(tmp_path / "big.csv", index=False)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sgdbayes.analyze", str(tmp_path / "big.csv"), "--out",
                             str(tmp_path / "o"), "--n-boot", "19"], stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    seen = ""
    t_end = time.monotonic() + 120
    while "fitting runs" not in seen and time.monotonic() < t_end:
        ch = proc.stderr.read(1)
        if not ch:
            break
        seen += ch
    assert "fitting runs" in seen, seen
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, seen + rest
    assert "Traceback" not in seen + rest
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
