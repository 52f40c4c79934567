"""Runner: study/preset/key validation, CLI exit codes, cache key, stage caching."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from sgdbayes import study as cli
from sgdbayes.runner import cache as cache_mod
from sgdbayes.runner.config import (
    ConfigError,
    config_hash,
    list_studies,
    load_study,
    parse_set,
    resolve_config,
)
from sgdbayes.runner.orchestrate import Stage, run_study

PC = "posterior_concentration"


# --------------------------------------------------------------------------- config

def test_study_is_shipped_and_paper_is_default():
    from sgdbayes.sampling import LLCConfig, PosteriorConfig

    assert PC in list_studies()
    decl = load_study(PC)
    assert decl.default_preset == "paper"
    assert {"paper", "quick", "converged", "chains4"} <= set(decl.presets)
    cfg = resolve_config(decl)  # paper preset == the paper's hyperparameters
    assert cfg.train.seeds == 500 and cfg.train.steps == 800
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 128
    assert cfg.data.n == 512 and cfg.data.noise == 0.2
    assert cfg.model.kind == "mlp" and cfg.model.hidden == (64, 64)
    # the sections ARE the library's dataclasses, with the library's field names
    assert isinstance(cfg.llc, LLCConfig) and isinstance(cfg.sgld, PosteriorConfig)
    assert cfg.llc == LLCConfig.paper(seed=1)
    assert (cfg.sgld.num_samples, cfg.sgld.num_burnin_steps, cfg.sgld.num_steps_bw_samples, cfg.sgld.step_size) == \
        (1000, 200, 10, 1e-5)


def test_presets_stack_and_set_overrides_in_order():
    decl = load_study(PC)
    cfg = resolve_config(decl, ["paper", "chains4"], ["llc.num_chains=2", "train.lr=0.1",
                                                     "model.hidden=[8, 8]", "sgld_starts.rule=per_cluster"],
                         seeds=7)
    assert cfg.llc.num_chains == 2
    assert cfg.train.lr == 0.1 and isinstance(cfg.train.lr, float)
    assert cfg.model.hidden == (8, 8)
    assert cfg.sgld_starts.rule == "per_cluster"
    assert cfg.train.seeds == 7
    # integer accepted for a float key, coerced
    assert resolve_config(decl, sets=["train.lr=1"]).train.lr == 1.0


def test_every_shipped_toml_key_is_a_dataclass_field():
    """Each [base.SECTION] table holds exactly the fields of its section's dataclass."""
    import dataclasses

    from sgdbayes.runner.config import study_schema
    from sgdbayes.runner.typed import field_types

    for name in list_studies():
        decl = load_study(name)
        sections = field_types(study_schema(decl))
        assert set(decl.base) == set(sections), name
        for sec, table in decl.base.items():
            assert set(table) == {f.name for f in dataclasses.fields(sections[sec])}, (name, sec)
        for p in decl.presets:
            resolve_config(decl, [p])


def test_parse_set_uses_toml_syntax():
    assert parse_set("a.b=0.5") == ("a.b", 0.5)
    assert parse_set("a.b=true") == ("a.b", True)
    assert parse_set('a.b="x y"') == ("a.b", "x y")
    assert parse_set("a.b=[1,2]") == ("a.b", [1, 2])
    assert parse_set("a.b=word") == ("a.b", "word")
    with pytest.raises(ConfigError):
        parse_set("novalue")


@pytest.mark.parametrize("kwargs, expected", [
    (dict(presets=["nope"]), ["unknown preset 'nope'", "quick", "paper", "chains4"]),
    (dict(sets=["train.lrr=1"]), ["unknown configuration key train.lrr", "train.lr", "--set train.lrr=1"]),
    (dict(sets=["llc.epsilon=1e-4"]), ["unknown configuration key llc.epsilon", "llc.step_size", "LLCConfig"]),
    (dict(sets=["lcl.num_draws=3"]), ["unknown configuration section [lcl]", "llc.num_draws"]),
    (dict(sets=["train.lr=fast"]), ["train.lr expects a number"]),
    (dict(sets=["train.seeds=1.5"]), ["train.seeds expects an integer"]),
    (dict(sets=["sgld_starts.rule=random"]), ["must be one of", "lowest", "per_cluster"]),
])
def test_invalid_choices_list_valid_ones(kwargs, expected):
    decl = load_study(PC)
    with pytest.raises(ConfigError) as exc:
        resolve_config(decl, **kwargs)
    for e in expected:
        assert e in str(exc.value)


@pytest.mark.parametrize("study, key_value, needle", [
    (PC, "train.seeds=0", "train.seeds must be an integer >= 1"),
    (PC, "train.steps=0", "train.steps"),
    (PC, "train.batch_size=0", "train.batch_size must be an integer >= 1"),
    (PC, "train.batch_size=1000", "train.batch_size = 1000 exceeds the 512 training examples (data.n)"),
    (PC, "train.lr=-0.1", "train.lr must be > 0"),
    (PC, "model.hidden=[0,16]", "model.hidden[0] must be an integer >= 1"),
    (PC, "model.kind=cnn", "model.kind must be one of ['mlp']"),
    (PC, "data.n=3", "exceeds the 3 training examples (data.n)"),
    (PC, "llc.num_draws=0", "llc.num_draws must be an integer >= 1"),
    (PC, "llc.step_size=-1", "llc.step_size"),
    (PC, "sgld_starts.n_chains=0", "sgld_starts.n_chains must be an integer >= 1"),
    (PC, "sgld.keep_samples=false", "sgld.keep_samples must be true"),
    (PC, "analysis.level=2", "analysis.level must be > 0 and < 1"),
    ("anomalous_diffusion", "fit.n_boot=0", "fit.n_boot must be an integer >= 1"),
    ("spectral_dimension", "llc_schedule.every=0", "llc_schedule.every must be an integer >= 1"),
    ("spectral_dimension", "data.train_fraction=1.5", "data.train_fraction must be"),
    ("ablations", "grid.lrs_sgd=[0.1,-1]", "grid.lrs_sgd[1] must be > 0"),
    ("ablations", "grid.batch_sizes=[0]", "grid.batch_sizes[0] must be an integer >= 1"),
])
def test_out_of_range_values_name_the_key_before_any_stage(study, key_value, needle):
    with pytest.raises(ConfigError) as exc:
        resolve_config(load_study(study), ["quick"], [key_value])
    assert needle in str(exc.value)


def test_cli_out_of_range_value_exits_2_before_any_stage(tmp_path, capsys):
    assert cli.main([PC, "--preset", "quick", "--set", "train.seeds=0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train.seeds must be an integer >= 1, got 0 (set by --set train.seeds=0)" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("study, sets, needle", [
    ("spectral_dimension", ["train.epochs=1"], "llc_schedule.every = 20 exceeds the 7 steps of the train runs"),
    ("spectral_dimension", ["train.batch_size=600"], "train.batch_size = 600 exceeds the 500 training examples"),
    ("ablations", ["grid.steps=5"], "llc_schedule.every = 10 exceeds the 5 steps of a grid cell"),
])
def test_checks_that_need_the_data_run_before_the_first_stage(tmp_path, study, sets, needle):
    logs = []
    with pytest.raises(ConfigError) as exc:
        run_study(study, ["quick"], sets=sets, out=tmp_path, device="cpu", log=logs.append)
    assert needle in str(exc.value) and not any("] done in" in m for m in logs)


def test_batch_size_larger_than_generated_data_is_caught_before_the_first_stage(tmp_path):
    calls = []
    with pytest.raises(ConfigError, match=r"grid.batch_sizes \[4096\] exceed the 500 training examples"):
        run_study("ablations", ["quick"], sets=["grid.batch_sizes=[32, 4096]"], out=tmp_path, device="cpu",
                  log=calls.append)
    assert not any("] done in" in c for c in calls)


def test_unknown_study_lists_studies():
    with pytest.raises(ConfigError, match=f"valid studies: .*{PC}"):
        load_study("posterior_concentrashun")


def test_hash_ignores_presentational_keys_but_not_seeds():
    decl = load_study(PC)
    h = lambda cfg: config_hash(cfg, decl.presentational, study=PC)  # noqa: E731
    base = resolve_config(decl)
    assert h(base) == h(resolve_config(decl, sets=["report.dpi=300"]))
    assert h(base) != h(resolve_config(decl, seeds=499))
    assert h(base) != h(resolve_config(decl, sets=["llc.num_draws=401"]))
    assert h(base) == h(resolve_config(decl, ["paper"]))  # the paper preset is the base


# --------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("argv, needle", [
    (["nope"], "valid studies: "),
    ([PC, "--preset", "fast"], "valid presets: chains4, converged"),
    ([PC, "--set", "llc.draws=10"], "valid keys of [llc]"),
    ([PC, "--set", "llc.num_draws"], "expects key=value"),
    ([PC, "--threads", "-1"], "--threads must be >= 0"),
])
def test_cli_errors_exit_2_without_traceback(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    if "studies" in needle:
        assert PC in err
    assert "Traceback" not in err


def test_cli_subprocess_error_and_list():
    r = subprocess.run([sys.executable, "-m", "sgdbayes.study", PC, "--preset", "bogus"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "valid presets" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "sgdbayes.study", "--list"], capture_output=True, text=True)
    assert r.returncode == 0
    assert f"{PC}:" in r.stdout and "--preset paper (default)" in r.stdout and "--preset quick" in r.stdout


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ["--preset", "--set", "--seeds", "--device", "--threads", "--out", "--force", "--list", "cache"]:
        assert opt in out


def test_explicit_threads_are_set_and_returned():
    import torch

    from sgdbayes.runner.orchestrate import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads("cpu", 1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- cache + stages (stub pipeline)

def _stub_pipeline(monkeypatch, calls, fail_at=None):
    mod = types.ModuleType("sgdbayes_stub_pipeline")

    def make(name):
        def run(ctx):
            calls.append(name)
            if name == fail_at:
                raise RuntimeError(f"boom in {name}")
            prev = sum(float(ctx[s]["value"]) for s in ctx.outputs)
            return {"value": prev + 1.0, "arr": np.arange(3) * (len(ctx.outputs) + 1)}
        return run

    mod.STAGES = [Stage(n, make(n), n) for n in ("train", "llc", "cluster")]
    from sgdbayes.pipelines.posterior_concentration import CONFIG

    mod.CONFIG = CONFIG  # the stub runs under posterior_concentration's typed configuration

    def write_report(ctx):
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        p = ctx.out_dir / "report.md"
        p.write_text(f"value={ctx['cluster']['value']}\n")
        return p

    mod.write_report = write_report
    monkeypatch.setitem(sys.modules, "sgdbayes_stub_pipeline", mod)
    real = load_study

    def fake_load(name):
        import dataclasses
        return dataclasses.replace(real(name), pipeline="sgdbayes_stub_pipeline")

    monkeypatch.setattr("sgdbayes.runner.orchestrate.load_study", fake_load)


def test_cache_resume_and_force(tmp_path, monkeypatch):
    calls: list = []
    _stub_pipeline(monkeypatch, calls, fail_at="cluster")
    with pytest.raises(RuntimeError, match="boom in cluster"):
        run_study(PC, ["quick"], out=tmp_path, log=lambda s: None)
    assert calls == ["train", "llc", "cluster"]
    calls.clear()
    _stub_pipeline(monkeypatch, calls)  # the failure is fixed: resume
    r = run_study(PC, ["quick"], out=tmp_path, log=lambda s: None)
    assert calls == ["cluster"] and r.loaded == ["train", "llc"] and r.computed == ["cluster"]
    assert (tmp_path / "report.md").read_text() == "value=4.0\n"  # 1 + 2 + ... cumulative values
    np.testing.assert_array_equal(cache_mod.StageCache(r.cache_dir).load("llc")["arr"], [0, 2, 4])
    calls.clear()
    r2 = run_study(PC, ["quick"], out=tmp_path, log=lambda s: None)
    assert calls == [] and r2.loaded == ["train", "llc", "cluster"] and r2.cache_dir == r.cache_dir
    calls.clear()
    run_study(PC, ["quick"], out=tmp_path, force=True, log=lambda s: None)
    assert calls == ["train", "llc", "cluster"]
    # a different configuration gets its own cache directory
    calls.clear()
    r3 = run_study(PC, ["quick"], sets=["llc.num_draws=7"], out=tmp_path, log=lambda s: None)
    assert calls == ["train", "llc", "cluster"] and r3.cache_dir != r.cache_dir
    cfg = json.loads((r3.cache_dir / "config.json").read_text())
    assert cfg["config"]["llc"]["num_draws"] == 7 and "report.dpi" not in cfg["hashed"]
    assert "llc.num_draws" in cfg["hashed"]
    # no temporaries left behind
    assert not list(r.cache_dir.glob(".*tmp*"))


def test_interrupted_stage_leaves_no_partial_output(tmp_path):
    c = cache_mod.StageCache(tmp_path / "h")
    c.prepare({}, {})
    c.save("a", {"x": np.ones(2), "meta": {"k": 1}}, {"wall_s": 0.1})
    assert c.is_done("a") and c.load("a")["meta"] == {"k": 1}
    (tmp_path / "h" / ".b.tmp-123").mkdir()  # what a killed save leaves
    assert not c.is_done("b")
    c.prepare({}, {})
    assert not (tmp_path / "h" / ".b.tmp-123").exists()


def test_jsonable_handles_numpy_and_nan():
    from sgdbayes.stats.results import jsonable

    out = jsonable({"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"),
                    "d": (np.int64(3), np.bool_(True)), "e": [np.inf, -np.inf]})
    assert out == {"a": 1.5, "b": [1, 2], "c": None, "d": [3, True], "e": ["inf", "-inf"]}


def test_stage_cache_stores_results_not_flattened_dicts(tmp_path):
    """A stage's Results (and DataFrames) come back from the cache as the same classes with the same
    numbers (arrays keep dtype, NaN and inf survive); one that cannot be rebuilt is a CacheEntryError."""
    import json

    import pandas as pd

    from sgdbayes.stats.results import HypothesisTest, Verdict
    from sgdbayes.stats.summaries import summarize

    h = HypothesisTest.decided("H1", "claim", "stat", -0.2, -0.3, -0.1, 0.001, "Wilcoxon", 0.95)
    s = summarize([1.0, 2.0, np.nan, 4.0], seed=0)
    frame = pd.DataFrame({"run": ["007", "7"], "x": [np.inf, np.nan]})
    c = cache_mod.StageCache(tmp_path / "h")
    c.save("analysis", {"tests": [h], "summary": {"x": s}, "runs": frame, "arr": np.arange(3, dtype=np.int32)},
           {"wall_s": 0.0})
    out = c.load("analysis")
    hb = out["tests"][0]
    assert isinstance(hb, HypothesisTest) and hb.verdict is Verdict.SUPPORTED and hb == h
    assert out["summary"]["x"] == s and out["arr"].dtype == np.int32
    pd.testing.assert_frame_equal(out["runs"], frame)
    data = tmp_path / "h" / "analysis" / "data.json"
    raw = json.loads(data.read_text())
    raw["tests"][0]["fields"]["no_such_field"] = 1
    data.write_text(json.dumps(raw))
    info = json.loads((tmp_path / "h" / "analysis" / "_done.json").read_text())
    info["files"]["data.json"] = {"size": data.stat().st_size, "sha256": cache_mod.sha256_file(data)}
    (tmp_path / "h" / "analysis" / "_done.json").write_text(json.dumps(info))
    with pytest.raises(cache_mod.CacheEntryError, match="data.json"):
        c.load("analysis")


# --------------------------------------------------------------------------- typed config reaches the library

def test_no_string_config_lookup_is_left_in_pipelines_or_reports():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "sgdbayes"
    hits = [f"{p.relative_to(root)}:{i}" for d in ("pipelines", "reporting", "runner") for p in (root / d).glob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bcfg\(\s*[\"']", line)]
    assert hits == []


@pytest.mark.parametrize("study", ["posterior_concentration", "anomalous_diffusion", "spectral_dimension"])
def test_ensemble_config_describes_the_data_it_was_trained_on(study):
    """EnsembleConfig(dataset, dataset_options) rebuilds exactly the study's data, so that
    estimate_llc(result) without data= sees the training set (issue 11 item 7)."""
    import torch

    from sgdbayes.data import load_dataset
    from sgdbayes.pipelines.sections import sgd_ensemble

    cfg = resolve_config(load_study(study), ["quick"])
    data = cfg.data.load()
    ecfg = sgd_ensemble(cfg.data, cfg.model, cfg.train, data.n_train, "cpu")
    again = load_dataset(ecfg.dataset, **ecfg.dataset_options)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_train, data.y_train)
    assert ecfg.widths == (None, *cfg.model.hidden, None) and ecfg.seeds == cfg.train.seed_list()


def test_mnist_subset_options_are_recorded_and_fail_loudly_when_rebuilt():
    from sgdbayes.data import load_dataset
    from sgdbayes.pipelines.sections import MNISTFamilyData

    d = MNISTFamilyData(name="mnist", path="/nonexistent.npz", subset=400, seed=3)
    assert d.dataset_options() == {"path": "/nonexistent.npz", "subset": 400, "train_fraction": 0.5, "subset_seed": 3}
    with pytest.raises((ValueError, FileNotFoundError)):
        load_dataset(d.name, **d.dataset_options())


def test_hash_is_the_canonical_dict_of_the_typed_config():
    decl = load_study(PC)
    a = resolve_config(decl, sets=["train.lr=0.01"])
    b = resolve_config(decl, sets=["train.lr=1e-2"])
    assert config_hash(a, decl.presentational, PC) == config_hash(b, decl.presentational, PC)
    assert config_hash(a, decl.presentational, PC, inputs={"/x": "aa"}) != config_hash(a, decl.presentational, PC)
