"""The three diffusion studies (anomalous_diffusion, spectral_dimension, ablations) under the runner:
declarations and presets, helpers on known truths, and the quick presets end to end with every
number in the verdict tables checked against the stored results.json."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from sgdbayes.pipelines._diffusion_common import parse_layers
from sgdbayes.pipelines.anomalous_diffusion import local_slopes
from sgdbayes.reporting.format import fmt_estimate, fmt_num
from sgdbayes.reporting.toolkit import read_results_json
from sgdbayes.runner.config import list_studies, load_study, resolve_config
from sgdbayes.runner.orchestrate import run_study
from sgdbayes.stats.ablation import h6_contrast
from sgdbayes.stats.prediction import predict_late_displacement
from sgdbayes.stats.results import HypothesisTest
from sgdbayes.stats.summaries import llc_summaries

STUDIES = ("anomalous_diffusion", "spectral_dimension", "ablations")


# --------------------------------------------------------------------------- declarations

def test_studies_are_declared_with_presets():
    names = list_studies()
    for s in STUDIES:
        assert s in names
        decl = load_study(s)
        assert {"paper", "quick"} <= set(decl.presets)
    assert load_study("anomalous_diffusion").default_preset == "paper"
    ad = resolve_config(load_study("anomalous_diffusion"), ["paper"])
    assert (ad.train.seeds, ad.train.steps, ad.train.lr, ad.train.batch_size) == (500, 800, 0.01, 128)
    assert ad.data.n == 512 and ad.data.noise == 0.2 and ad.model.hidden == (64, 64)
    for s in ("spectral_dimension", "ablations"):
        decl = load_study(s)
        assert decl.default_preset == "cpu"  # the paper preset is for a GPU
        cfg = resolve_config(decl, ["paper"])
        assert cfg.model.hidden == (128, 64, 32) and cfg.llc_schedule.every == 100
        assert cfg.llc.num_draws == 400 and cfg.llc.step_size == 1e-5 and cfg.llc.localization == 100.0
    sd = resolve_config(load_study("spectral_dimension"), ["paper"])
    assert sd.train.seeds == 50 and sd.train.lr == 0.001 and sd.train.epochs == 100
    assert sd.sweep.rows == () and sd.sweep.epochs == 250


def test_report_keys_not_in_cache_key():
    from sgdbayes.runner.config import config_hash

    decl = load_study("spectral_dimension")
    h = lambda c: config_hash(c, decl.presentational, study=decl.name)  # noqa: E731
    assert h(resolve_config(decl)) == h(resolve_config(decl, sets=["report.dpi=200"]))
    assert h(resolve_config(decl)) != h(resolve_config(decl, sets=["train.lr=0.1"]))


# --------------------------------------------------------------------------- helpers on known truths

def test_parse_layers_reads_table7_rows():
    assert parse_layers("784, 128, 64 1") == [784, 128, 64]
    assert parse_layers("784, 256, 128, 64") == [784, 256, 128, 64]
    with pytest.raises(ValueError):
        parse_layers("none")


def test_local_slope_of_power_laws():
    t = np.arange(1, 2001, dtype=float)
    R = np.stack([t ** 0.5, 3 * t ** 0.3])
    tg, s = local_slopes(t, R, halfwidth=0.35)
    fin = np.isfinite(s[0])
    assert fin.sum() > 40
    np.testing.assert_allclose(s[0][fin], 0.5, atol=1e-6)
    np.testing.assert_allclose(s[1][fin], 0.3, atol=1e-6)


def test_h7_prediction_exact_on_a_power_law():
    t = np.unique(np.r_[np.arange(10, 1001, 10), np.rint(np.geomspace(1, 1000, 60))])
    disp = np.stack([2.0 * t ** 0.4, 0.5 * t ** 0.25])
    p = predict_late_displacement(t, disp, 0.5)
    np.testing.assert_allclose(p.rel_err_final, 0, atol=1e-8)
    np.testing.assert_allclose(p.alpha_early, [0.4, 0.25], atol=1e-8)
    np.testing.assert_allclose(np.exp(p.intercept_early), [2.0, 0.5], rtol=1e-8)  # what the Fig-14 curves draw
    assert p.n_failed == 0


def test_llc_summaries_last_and_time_average():
    llc = np.array([[1.0, 2.0, 3.0, 4.0], [np.nan, 1.0, 1.0, 1.0]])
    s = llc_summaries(llc, last=2)
    np.testing.assert_allclose(s.llc_final, [3.5, 1.0])
    np.testing.assert_allclose(s.llc_mean, [2.5, 1.0])
    np.testing.assert_allclose(s.llc_final_se[0], np.std([3, 4], ddof=1) / math.sqrt(2))
    assert list(s.n_missing) == [0, 1]


def test_h6_contrast_detects_lr_tracking():
    rng = np.random.default_rng(0)
    n = 60
    lr = rng.choice([-3.0, -2.0, -1.0], n)
    b = rng.choice([6.0, 8.0], n)
    df = pd.DataFrame({"log10_lr": lr, "log2_batch": b, "d_s": 2 * lr + rng.normal(0, 0.3, n),
                       "llc": 0.1 * lr + rng.normal(0, 1.0, n)})
    out = h6_contrast(df, ["log10_lr", "log2_batch"], n_boot=300, level=0.95, seed=0)
    assert out.delta > 0.5 and out.conf_int().loc["delta", "ci_low"] > 0 and out.delta_pvalue < 0.05
    df2 = df.assign(d_s=df["llc"] + rng.normal(0, 0.01, n))  # both track lr the same way
    out2 = h6_contrast(df2, ["log10_lr", "log2_batch"], n_boot=300, level=0.95, seed=0)
    lo, hi = out2.conf_int().loc["delta"]
    assert lo < 0 < hi


# --------------------------------------------------------------------------- quick presets end to end

@pytest.fixture(scope="module")
def quick_reports(tmp_path_factory):
    out = {}
    for s in STUDIES:
        d = tmp_path_factory.mktemp(s)
        r = run_study(s, ["quick"], out=d, device="cpu", log=lambda m: None)
        out[s] = (r, d)
    return out


REQUIRED = {"anomalous_diffusion": {"H1", "H1-whole", "crossover"},
            "spectral_dimension": {"H1", "H2", "H3", "H2-late", "H3-late", "H7", "H7-prediction"},
            "ablations": {"H6", "H1-SGD", "H7-SGD", "H7-prediction-SGD"}}


def _verdict_section(text: str) -> str:
    return text.split("## Verdicts", 1)[1].split("\n\n", 2)[1]


def check_verdicts_shown(text: str, res: dict) -> None:
    """Every stored HypothesisTest is a row of the report's verdict table with its estimate,
    interval, p-value and verdict, formatted by the one formatter."""
    rows = {line.split("|")[1].strip(): line for line in _verdict_section(text).splitlines()[2:]}
    assert len(rows) == len(res["hypotheses"])
    for h in res["hypotheses"]:
        assert isinstance(h, HypothesisTest)
        row = rows[h.id]
        assert f"**{h.verdict}**" in row and fmt_estimate(h.estimate, h.ci_low, h.ci_high) in row
        if h.pvalue is not None:
            assert fmt_num(h.pvalue) in row
        assert "n/a" not in row and "nan" not in row


@pytest.mark.parametrize("study", STUDIES)
def test_quick_report_numbers_match_results_json(quick_reports, study):
    r, d = quick_reports[study]
    text = (d / "report.md").read_text()
    res = read_results_json(d / "results.json")
    assert res["study"] == study and res["presets"] == ["quick"]
    assert REQUIRED[study] <= {h.id for h in res["hypotheses"]}
    check_verdicts_shown(text, res)
    assert f"total wall time {fmt_num(res['wall_total_s'])} s" in text
    for f in res["figures"]:
        assert (d / f).is_file() and f in text
    assert "## Methods" in text and "## Diagnostics" in text and "SCIENCE" not in text


def test_quick_spectral_report_states_equivalence_and_nonpositive_runs(quick_reports):
    _, d = quick_reports["spectral_dimension"]
    text = (d / "report.md").read_text()
    res = read_results_json(d / "results.json")
    assert "d_s ≤ λ is α ≤ 1/2" in text and "Runs with λ ≤ 0" in text
    assert f"{res['summary']['n_llc_nonpositive']} of {res['summary']['n_fitted']} runs have λ ≤ 0" in text
    assert "MNIST-1D generated offline" in text
    for v in res["per_run"]["d_s"]:
        assert fmt_num(v) in text
    t7 = res["sweep"]["arch"]
    assert [a["row"] for a in t7] == [8, 12] and all(a["widths"][0] == 40 for a in t7)
    # with 2 sweep runs the medians have no bootstrap interval: untestable, and the reason says why
    sweep = [h for h in res["hypotheses"] if h.id.endswith("-sweep")]
    assert sweep and all(str(h.verdict) == "untestable" and "at least 3" in h.reason for h in sweep)


def test_quick_ablations_app_h_table(quick_reports):
    _, d = quick_reports["ablations"]
    text = (d / "report.md").read_text()
    res = read_results_json(d / "results.json")
    labs = [x["optimizer"] for x in res["app_h"]]
    assert labs == ["sgd", "sgd+momentum 0.9", "adam"]
    for x in res["app_h"]:
        for key in ("d_s", "llc"):
            s = x[key]
            assert f"{fmt_estimate(s.mean, *s.conf_int().loc['mean'])}" in text
    assert "7.816" in text and "0.4061" in text  # the paper's App-H values beside ours
    h6 = res["h6"]
    assert fmt_num(h6.delta) in text and r"Δ = \|β(d_s)\| − \|β(λ)\|" in text  # pipes escaped in the table


def test_quick_rerun_loads_from_cache(quick_reports, tmp_path):
    r, d = quick_reports["anomalous_diffusion"]
    r2 = run_study("anomalous_diffusion", ["quick"], out=d, device="cpu", log=lambda m: None)
    assert r2.computed == [] and r2.loaded == ["train", "analysis"]


def test_missing_mnist_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data.path"):
        run_study("spectral_dimension", ["quick"], sets=["data.name=mnist"], out=tmp_path, device="cpu",
                  log=lambda m: None)


def test_spectral_on_local_mnist_files(tmp_path):
    """`--set data.name=mnist --set data.path=...` reads local files (here a tiny synthetic .npz in the
    MNIST layout), takes the stated subset and split, and the report says which data it used."""
    rng = np.random.default_rng(0)
    z = {"x_train": rng.integers(0, 256, (300, 28, 28)).astype(np.uint8), "y_train": rng.integers(0, 10, 300),
         "x_test": rng.integers(0, 256, (100, 28, 28)).astype(np.uint8), "y_test": rng.integers(0, 10, 100)}
    np.savez(tmp_path / "mnist.npz", **z)
    out = tmp_path / "out"
    run_study("spectral_dimension", ["quick"], sets=["data.name=mnist", f"data.path=\"{tmp_path / 'mnist.npz'}\"",
                                                     "data.subset=400", "sweep.enabled=false", "train.epochs=10",
                                                     "llc_schedule.every=10"],
              out=out, device="cpu", log=lambda m: None)
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["name"] == "mnist" and res["data"]["n_features"] == 784
    assert res["data"]["n_train"] == 200 and res["data"]["n_test"] == 200
    text = (out / "report.md").read_text()
    assert "local files" in text and str(tmp_path / "mnist.npz") in text


@pytest.mark.parametrize("study", STUDIES)
def test_committed_default_report_matches_its_results_json(study):
    """The committed reports/NAME/report.md (default preset) shows exactly the numbers of its results.json."""
    from pathlib import Path

    d = Path(__file__).resolve().parents[1] / "reports" / study
    if not (d / "results.json").is_file():
        pytest.skip(f"no committed report for {study}")
    res = read_results_json(d / "results.json")
    text = (d / "report.md").read_text()
    assert res["presets"] == [load_study(study).default_preset]
    check_verdicts_shown(text, res)
    assert f"total wall time {fmt_num(res['wall_total_s'])} s" in text
    for f in res["figures"]:
        assert (d / f).is_file()
