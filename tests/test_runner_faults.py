"""The study runner under the faults of issue 10: interrupted --force, corrupt cache entries,
changed input files, concurrent writers, foreign output folders, malformed study TOMLs,
Ctrl-C, file modes. A stub pipeline (three cheap stages) runs under posterior_concentration's
typed configuration, so these tests take seconds."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from sgdbayes import study as cli
from sgdbayes.outdir import LOCK, MANIFEST, BusyError, OutputDirError, hold_lock
from sgdbayes.pipelines.posterior_concentration import PosteriorConcentrationConfig
from sgdbayes.runner import config as config_mod
from sgdbayes.runner.config import ConfigError, load_study
from sgdbayes.runner.orchestrate import Stage, run_study

PC = "posterior_concentration"
_COUNTER = {"n": 0}
DATA_FILE: list[Path] = []


@dataclasses.dataclass(frozen=True)
class _WithFile(PosteriorConcentrationConfig):
    """posterior_concentration's configuration plus one local input file (as data.path would be)."""

    def input_files(self):
        return tuple(DATA_FILE)


def _stub(monkeypatch, calls, fail_at=None, with_file=False):
    mod = types.ModuleType("sgdbayes_fault_stub")

    def make(name):
        def run(ctx):
            calls.append(name)
            if name == fail_at:
                raise RuntimeError(f"boom in {name}")
            _COUNTER["n"] += 1  # every computation gives a new value: mixing would show
            return {"value": float(_COUNTER["n"]), "inputs": {s: float(ctx[s]["value"]) for s in ctx.outputs},
                    "arr": np.arange(5.0) * _COUNTER["n"]}
        return run

    mod.STAGES = [Stage(n, make(n), n) for n in ("train", "llc", "cluster")]
    mod.CONFIG = _WithFile if with_file else PosteriorConcentrationConfig

    def write_report(ctx):
        from sgdbayes._io import atomic_write_text

        atomic_write_text(ctx.out_dir / "results.json", json.dumps({
            "figures": ["figures/f.png"], "values": {s: ctx[s]["value"] for s in ctx.outputs},
            "inputs": {s: ctx[s]["inputs"] for s in ctx.outputs}}))
        atomic_write_text(ctx.out_dir / "figures" / "f.png", "png")
        atomic_write_text(ctx.out_dir / "report.md", "report\n")
        return ctx.out_dir / "report.md"

    mod.write_report = write_report
    monkeypatch.setitem(sys.modules, "sgdbayes_fault_stub", mod)
    real = load_study
    monkeypatch.setattr("sgdbayes.runner.orchestrate.load_study",
                        lambda name: dataclasses.replace(real(name), pipeline="sgdbayes_fault_stub"))


def _run(out, logs=None, **kw):
    return run_study(PC, ["quick"], out=out, device="cpu", log=(logs.append if logs is not None else lambda m: None),
                     **kw)


def _consistent(out: Path) -> None:
    """Every stage in the report was computed from the stage values the report shows."""
    res = json.loads((out / "results.json").read_text())
    for stage, inputs in res["inputs"].items():
        for up, v in inputs.items():
            assert res["values"][up] == v, (stage, up)


# --------------------------------------------------------------------------- item 5: interrupted --force

def test_interrupted_force_then_plain_rerun_never_mixes_stages(tmp_path, monkeypatch):
    calls: list = []
    _stub(monkeypatch, calls)
    _run(tmp_path)
    calls.clear()
    _stub(monkeypatch, calls, fail_at="llc")  # --force recomputes train, then dies in llc
    with pytest.raises(RuntimeError, match="boom in llc"):
        _run(tmp_path, force=True)
    calls.clear()
    _stub(monkeypatch, calls)
    logs: list = []
    r = _run(tmp_path, logs)
    # the old llc/cluster were computed from the old train: both must be recomputed
    assert r.loaded == ["train"] and r.computed == ["llc", "cluster"] and calls == ["llc", "cluster"]
    assert any("recomputed since" in m for m in logs)
    _consistent(tmp_path)


def test_stage_of_another_sgdbayes_version_is_recomputed(tmp_path, monkeypatch):
    calls: list = []
    _stub(monkeypatch, calls)
    _run(tmp_path)
    calls.clear()
    monkeypatch.setattr("sgdbayes.__version__", "99.0")
    r = _run(tmp_path)
    assert r.computed == ["train", "llc", "cluster"]


# --------------------------------------------------------------------------- item 9: corrupt cache entries

@pytest.mark.parametrize("damage", ["truncate_npz", "garbage_json", "missing_data", "garbage_done"])
def test_corrupt_cache_entry_is_named_and_recomputed(tmp_path, monkeypatch, damage):
    calls: list = []
    _stub(monkeypatch, calls)
    r = _run(tmp_path)
    d = r.cache_dir / "llc"
    if damage == "truncate_npz":
        p = d / "arrays.npz"
        p.write_bytes(p.read_bytes()[:40])
    elif damage == "garbage_json":
        (d / "data.json").write_text("{not json")
    elif damage == "missing_data":
        (d / "data.json").unlink()
    else:
        (d / "_done.json").write_text("{")
    calls.clear()
    logs: list = []
    r2 = _run(tmp_path, logs)
    assert r2.loaded == ["train"] and r2.computed == ["llc", "cluster"]
    msg = next(m for m in logs if "cached result not used" in m)
    assert "[2/3 llc]" in msg and str(d) in msg
    _consistent(tmp_path)


# --------------------------------------------------------------------------- item 6: local data files

def test_changed_local_data_file_changes_the_cache_key(tmp_path, monkeypatch):
    f = tmp_path / "digits.npz"
    f.write_bytes(b"version one")
    DATA_FILE[:] = [f]
    try:
        calls: list = []
        _stub(monkeypatch, calls, with_file=True)
        r1 = _run(tmp_path / "out")
        assert calls == ["train", "llc", "cluster"]
        calls.clear()
        assert _run(tmp_path / "out").computed == [] and calls == []
        f.write_bytes(b"version two")  # same path, new content
        r3 = _run(tmp_path / "out")
        assert r3.computed == ["train", "llc", "cluster"] and r3.config_hash != r1.config_hash
        memo = json.loads((tmp_path / "out" / "cache" / "fingerprints.json").read_text())
        assert str(f.resolve()) in memo
    finally:
        DATA_FILE.clear()


def test_mnist_input_files_are_the_files_read(tmp_path):
    from sgdbayes.pipelines.sections import MNISTFamilyData

    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"x")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"y")
    (tmp_path / "README").write_text("z")
    files = MNISTFamilyData(name="mnist", path=str(tmp_path)).input_files()
    assert [p.name for p in files] == ["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte"]
    assert MNISTFamilyData(name="mnist", path=str(tmp_path / "d.npz")).input_files() == (tmp_path / "d.npz",)
    assert MNISTFamilyData().input_files() == ()


# --------------------------------------------------------------------------- item 4: two writers

def test_second_writer_waits_then_fails_with_a_clear_message(tmp_path, monkeypatch):
    calls: list = []
    _stub(monkeypatch, calls)
    out = tmp_path / "out"
    out.mkdir()
    logs: list = []
    with hold_lock(out / LOCK, "test"):
        with pytest.raises(BusyError, match="being written by another sgdbayes process"):
            _run(out, logs, lock_timeout=0.3)
    assert any("waiting for another sgdbayes process" in m for m in logs)
    assert calls == []


def test_second_writer_waits_for_the_first_and_then_runs(tmp_path, monkeypatch):
    calls: list = []
    _stub(monkeypatch, calls)
    out = tmp_path / "out"
    out.mkdir()
    logs: list = []
    held = threading.Event()

    def holder():
        with hold_lock(out / LOCK, "test"):
            held.set()
            time.sleep(1.0)

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    r = _run(out, logs)
    t.join()
    assert r.computed == ["train", "llc", "cluster"]
    assert any("waiting for another sgdbayes process" in m for m in logs)


def test_cache_entry_is_locked_too(tmp_path, monkeypatch):
    """Two output folders sharing one cache (the default layout of variants) serialize on the entry."""
    calls: list = []
    _stub(monkeypatch, calls)
    r = _run(tmp_path / "a", cache_root=tmp_path / "shared")
    with hold_lock(r.cache_dir / ".lock", "test"):
        with pytest.raises(BusyError, match="stage cache"):
            _run(tmp_path / "b", cache_root=tmp_path / "shared", lock_timeout=0.2)


def test_cli_busy_output_exits_1_with_a_message(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with hold_lock(out / LOCK, "test"):
        rc = cli.main([PC, "--preset", "quick", "--out", str(out), "--lock-timeout", "0.2"])
    err = capsys.readouterr().err
    assert rc == 1 and "another sgdbayes process" in err and "Traceback" not in err


# --------------------------------------------------------------------------- items 1, 12: output folder

def test_study_refuses_a_foreign_folder_unless_force_and_then_keeps_its_files(tmp_path, monkeypatch, capsys):
    calls: list = []
    _stub(monkeypatch, calls)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputDirError, match="not empty"):
        _run(out)
    assert calls == [] and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    _run(out, force=True)
    assert (out / "thesis.tex").read_text() == "precious" and (out / "report.md").is_file()
    man = json.loads((out / MANIFEST).read_text())
    assert man["kind"] == "study" and "thesis.tex" not in man["files"] and "cache/" in man["folders"]
    _run(out)  # an earlier output now: no --force needed
    assert (out / "thesis.tex").read_text() == "precious"


def test_study_out_dot(tmp_path, monkeypatch):
    calls: list = []
    _stub(monkeypatch, calls)
    monkeypatch.chdir(tmp_path)
    r = run_study(PC, ["quick"], out=".", device="cpu", log=lambda m: None)
    assert (tmp_path / "report.md").is_file() and r.cache_dir.is_relative_to(Path("cache"))


def test_study_refuses_an_analyze_output(tmp_path, monkeypatch):
    calls: list = []
    _stub(monkeypatch, calls)
    out = tmp_path / "o"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"written_by": "sgdbayes", "kind": "analyze", "files": ["runs.csv"]}))
    with pytest.raises(OutputDirError, match="sgdbayes.analyze"):
        _run(out)


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_cli_bad_out_exits_2_at_start_up(tmp_path, capsys, kind):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "sub"
    assert cli.main([PC, "--preset", "quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err and (tmp_path / "f").read_text() == "x"


def test_committed_report_folders_are_marked_as_sgdbayes_outputs():
    root = Path(__file__).resolve().parents[1] / "reports"
    for res in root.rglob("results.json"):
        man = json.loads((res.parent / MANIFEST).read_text())
        assert man["kind"] == "study" and "report.md" in man["files"], res.parent


def test_written_files_have_the_umask_mode(tmp_path):
    from sgdbayes._io import atomic_write_text
    from sgdbayes.reporting.toolkit import save_figure

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_figure(plt.figure(), tmp_path / "f.png")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "f.png").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- item 11: malformed TOML

def test_malformed_study_toml_names_file_and_line_and_spares_the_others(tmp_path, monkeypatch, capsys):
    src = Path(config_mod.__file__).resolve().parents[1] / "studies"
    shutil.copy(src / "anomalous_diffusion.toml", tmp_path / "anomalous_diffusion.toml")
    (tmp_path / "broken.toml").write_text('[study]\ntitle = "x"\n\n[base.train\nlr = 1\n')
    monkeypatch.setattr(config_mod, "_studies_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML: .*line 4"):
        load_study("broken")
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "broken: (invalid declaration:" in out and "line 4" in out
    assert "anomalous_diffusion: Anomalous diffusion" in out and "--preset quick" in out
    assert cli.main(["broken"]) == 2


def test_list_shows_full_descriptions(capsys):
    assert cli.main(["--list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    desc = load_study("spectral_dimension").presets["cpu"].description
    assert " ".join(desc.split()) in out


# --------------------------------------------------------------------------- item 12: Ctrl-C in study

def test_first_ctrl_c_stops_the_running_stage(tmp_path):
    """SIGINT while the engine's worker threads train: exit 130 promptly, no traceback, no report."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sgdbayes.study", "anomalous_diffusion", "--preset", "quick", "--set",
           "train.seeds=400", "--set", "train.steps=20000", "--device", "cpu", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = ""
    t_end = time.monotonic() + 120
    while "[1/2 train]" not in seen and time.monotonic() < t_end:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "[1/2 train]" in seen, seen
    time.sleep(5.0)  # inside the engine's thread pool (a plain KeyboardInterrupt waits for its workers)
    proc.send_signal(signal.SIGINT)
    try:
        rest = proc.communicate(timeout=60)[0]  # without the fix this waits for all 20000 steps (minutes)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, seen + rest
    assert "Traceback" not in rest and "interrupted" in rest
    assert not (tmp_path / "o" / "report.md").exists()
