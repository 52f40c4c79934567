"""posterior_concentration end to end on the `quick` preset: interruption + resume, cache,
report contents, and every number of the report's main tables against results.json."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from sgdbayes.pipelines import posterior_concentration as pc
from sgdbayes.reporting.toolkit import read_results_json
from sgdbayes.runner.orchestrate import run_study
from sgdbayes.stats.concentration import convergence_filter
from sgdbayes.stats.results import HypothesisTest, Verdict

PC = "posterior_concentration"


class _Interrupt(RuntimeError):
    pass


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick computation, interrupted in the sgld stage, then resumed, then rerun from cache."""
    out = tmp_path_factory.mktemp("pc_quick")
    logs: list[str] = []
    mp = pytest.MonkeyPatch()

    def boom(ctx):
        raise _Interrupt("simulated kill during sgld")

    mp.setattr(pc, "STAGES", [dataclasses.replace(s, run=boom, shard=None) if s.name == "sgld" else s
                              for s in pc.STAGES])
    with pytest.raises(_Interrupt):
        run_study(PC, ["quick"], out=out, device="cpu", log=logs.append)
    mp.undo()
    first_logs = list(logs)
    logs.clear()
    resumed = run_study(PC, ["quick"], out=out, device="cpu", log=logs.append)
    resumed_logs = list(logs)
    logs.clear()
    cached = run_study(PC, ["quick"], out=out, device="cpu", log=logs.append)
    results = read_results_json(out / "results.json")
    report = (out / "report.md").read_text()
    return dict(out=out, first_logs=first_logs, resumed=resumed, resumed_logs=resumed_logs, cached=cached,
                cached_logs=list(logs), results=results, report=report)


# --------------------------------------------------------------------------- resume / cache

def test_interrupted_run_resumes_from_last_finished_stage(quick_run):
    r = quick_run["resumed"]
    assert r.loaded == ["train", "llc", "cluster"]  # finished before the interruption: loaded
    assert r.computed == ["sgld", "reference", "analysis"]  # the interrupted stage and everything after it
    assert any("FAILED" in line for line in quick_run["first_logs"])
    assert any("[1/6 train] loaded from cache" in line for line in quick_run["resumed_logs"])


def test_rerun_loads_everything_and_prints_report_path(quick_run):
    c = quick_run["cached"]
    assert c.computed == [] and c.loaded == ["train", "llc", "cluster", "sgld", "reference", "analysis"]
    assert c.cache_dir == quick_run["resumed"].cache_dir
    assert any(str(quick_run["out"] / "report.md") in line for line in quick_run["cached_logs"])


# --------------------------------------------------------------------------- content

def test_results_have_everything_the_report_needs(quick_run):
    res = quick_run["results"]
    cfg = res["config"]
    assert cfg["train"]["seeds"] == 40 and res["ensemble"]["n_runs"] == 40
    assert 0 <= res["ensemble"]["n_pass"] <= 40
    # LLC: nβ = B / log B for B = 128, negatives counted
    assert res["llc"]["nbeta"] == pytest.approx(128 / math.log(128))
    assert res["llc"]["n_negative"] == int(res["llc"]["n_negative"]) >= 0
    assert res["llc"]["used"].n == res["ensemble"]["n_used"]  # summaries are RunSummary results
    # Table 2: both references, against tempered and raw SGD, four metrics, intervals bracket estimates
    keys = {(t["reference"], t["target"], t["metric"]) for t in res["table2"]}
    for ref in ("SGLD", "free energy"):
        for tgt in ("tempered SGD", "raw SGD"):
            for m in ("kl", "kl_smoothed", "js", "w1"):
                assert (ref, tgt, m) in keys
    for t in res["table2"]:
        lo, hi = t["ci"]
        if t["metric"] == "js":
            assert 0 <= t["estimate"] <= math.log(2) + 1e-9
            assert 0 <= lo <= hi <= math.log(2) + 1e-9
        assert t["equivalent"] == (t["upper"] is not None and float(t["upper"]) < cfg["analysis"]["margin"])
    # paper Table 2 values sit beside the SGLD-vs-tempered rows only
    paper_rows = [t for t in res["table2"] if t["paper"] is not None]
    assert {(t["reference"], t["target"]) for t in paper_rows} == {("SGLD", "tempered SGD")}
    assert {t["metric"]: t["paper"] for t in paper_rows} == {"kl": 0.009, "js": 0.003, "w1": 0.002}
    # distributions are distributions
    d = res["distributions"]
    for key in ("P_sgd", "P_sgld", "P_F", "P_temp"):
        assert sum(d[key]) == pytest.approx(1.0, abs=1e-9)
    assert sum(d["counts_sgd"]) == res["ensemble"]["n_used"]
    # ξ sweep, SGLD diagnostics, verdicts
    assert res["xi"]["grid_points"] == cfg["tempering"]["xi_points"] == 25
    assert res["xi"]["grid_min"] <= res["xi"]["xi_star"] <= res["xi"]["grid_max"]
    sg = res["sgld"]
    assert sg["n_chains"] == 3 and sg["samples_per_chain"] == 60
    assert len(sg["rhat_chain"]) == 3 and len(sg["ess_chain"]) == 3
    assert sg["samples_left_seed_cluster"] == sum(sg["left_seed_cluster"])
    assert sg["restates_seeding"] == (sg["samples_left_seed_cluster"] == 0)
    hyps = res["hypotheses"]
    assert all(isinstance(h, HypothesisTest) for h in hyps)
    assert [h.id for h in hyps] == ["H4", "H4-kruskal", "H5-sgld", "H5-free-energy", "H5-sgld-to-target", "H5-hmc"]
    # H5 against SGLD is decided only against a converged reference (pooled split-R̂ <= 1.01, ESS >= 400)
    ref = sg["reference"]
    assert ref["converged"] == (sg["rhat_all"] <= 1.01 and sg["ess_all"] >= 400)
    h5s = hyps[2]
    if not ref["converged"]:
        assert h5s.verdict is Verdict.INCONCLUSIVE and h5s.reason.startswith("reference not converged (R̂ ")
        assert "ESS" in h5s.reason
    # the structure test is reported and the fallback is labelled
    st = res["structure"]
    assert st.partition_kind in ("hdbscan", "gmm_fallback")
    if st.partition_kind == "gmm_fallback":
        assert st.partition_label == "partition without separated basins"
        assert "partition without separated basins" in quick_run["report"]


def test_figures_exist(quick_run):
    out = quick_run["out"]
    figs = quick_run["results"]["figures"]
    assert len(figs) == 7
    for f in figs:
        p = out / f
        assert p.is_file() and p.stat().st_size > 5000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({f})" in quick_run["report"]  # every figure is shown in the report


# --------------------------------------------------------------------------- numbers in the text

def _num(s: str):
    s = s.strip()
    if s in ("—", "n/a", ""):
        return None
    if s == "∞":
        return math.inf
    return float(s)


def _ci(s: str):
    s = s.strip()
    if s in ("—", "n/a"):
        return None
    m = re.fullmatch(r"\[(.+), (.+)\]", s)
    assert m, s
    return [_num(m.group(1)), _num(m.group(2))]


def _section_table(report: str, heading: str) -> list[list[str]]:
    lines = report[report.index(heading):].splitlines()[1:]
    rows, started = [], False
    for line in lines:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif started:
            break
    assert rows, heading
    return rows[2:]  # drop header + separator


def _close(shown, stored, rel=1e-3):
    if isinstance(stored, str):  # "inf" / "-inf" in results.json
        stored = float(stored)
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        return shown is None
    if shown is None:
        return False
    return shown == pytest.approx(stored, rel=rel, abs=1e-12)


def test_report_numbers_match_results_json(quick_run):
    res, rep = quick_run["results"], quick_run["report"]
    # verdict table
    rows = _section_table(rep, "## Verdicts")
    assert len(rows) == len(res["hypotheses"])
    for row, h in zip(rows, res["hypotheses"]):
        assert row[0] == h.id and row[5] == f"**{h.verdict}**"
        est, _, iv = row[3].partition(" [")
        assert _close(_num(est), h.estimate)
        if math.isnan(h.ci_low):
            assert not iv
        else:
            lo, hi = _ci("[" + iv.split("]")[0] + "]")
            assert _close(lo, h.ci_low) and _close(hi, h.ci_high)
        p = row[4].split(" (")[0]
        assert _close(_num(p), h.pvalue)
    # Table 2
    rows = _section_table(rep, "### Table 2")
    assert len(rows) == len(res["table2"])
    for row, t in zip(rows, res["table2"]):
        assert (row[0], row[1]) == (t["reference"], t["target"])
        assert _close(_num(row[3]), t["estimate"])
        ci = _ci(row[4])
        if ci is None:  # an undefined (NaN) endpoint shows the interval as "—"
            assert None in t["ci"]
        else:
            assert _close(ci[0], t["ci"][0]) and _close(ci[1], t["ci"][1])
        assert _close(_num(row[5]), t["upper"])
        assert row[6] == ("yes" if t["equivalent"] else "no")
        assert _close(_num(row[7]), t["paper"])
    # cluster table
    rows = _section_table(rep, "### Clusters")
    assert len(rows) == len(res["clusters"])
    for row, c in zip(rows, res["clusters"].to_dict(orient="records")):
        assert row[0] == c["name"] and int(row[1]) == c["n"]
        for col, key in ((2, "P_sgd"), (5, "llc_c"), (11, "P_temp"), (12, "P_sgld"), (13, "P_F")):
            assert _close(_num(row[col]), c[key]), (key, row[col], c[key])
    # ξ* and the negative-λ̂ count in the prose
    rows = _section_table(rep, "### ξ sweep")
    assert _close(_num(rows[0][1]), res["xi"]["xi_star"])
    m = re.search(r"Negative λ̂: (\d+) of (\d+)", rep)
    assert m and int(m.group(1)) == res["llc"]["n_negative"] and int(m.group(2)) == res["ensemble"]["n_runs"]
    # nβ is stated
    assert f"nβ = {res['llc']['nbeta']:.4g}" in rep
    assert "n/a" not in rep and "SCIENCE" not in rep


# --------------------------------------------------------------------------- pure helpers

def test_convergence_filter_relative_plateau():
    steps = np.arange(1, 101)
    flat = np.full(100, 0.3)
    falling = 1.0 - 0.005 * steps  # drop over last 10 steps = 0.05 around 0.5 level -> ~10 %
    f = convergence_filter(steps, np.stack([flat, falling, flat * np.nan]), 0.1, 0.01)
    rel, passed = f.rel_drop, f.passed
    assert rel[0] == pytest.approx(0.0, abs=1e-12) and passed[0]
    assert rel[1] == pytest.approx(0.005 * 10 / np.mean(falling[steps >= 90]), rel=1e-6) and not passed[1]
    assert not passed[2]


def test_sgld_seeding_ranks_loss_and_llc_and_skips_negative_llc():
    loss = np.array([0.1, 0.2, 0.3, 0.05, 0.4])
    llc = np.array([0.5, 0.1, 0.2, -1.0, 0.3])
    labels = np.array([0, 0, 1, 1, 1])
    pick, how = pc.select_sgld_starts(loss, llc, labels, 2, "lowest", [0, 1])
    # ranks (eligible: 0,1,2,4): loss 1,2,3,4; llc 4,1,2,3 -> scores 5,3,5,7 -> 1, then 0 (tie with 2, lower loss)
    assert pick.tolist() == [1, 0] and "λ̂ ≤ 0 excluded" in how
    pick, how = pc.select_sgld_starts(loss, llc, labels, 2, "per_cluster", [0, 1, -1])
    assert pick.tolist() == [1, 2] and "one chain per cluster" in how


def test_sgld_reference_convergence_criterion_is_the_analysis_config():
    """H5-sgld is conditioned on split-R̂ ≤ analysis.reference_max_rhat and ESS ≥ reference_min_ess
    (issue 16's targets by default); an unconverged reference yields 'inconclusive', never 'not supported'."""
    from sgdbayes.pipelines.posterior_concentration_analysis import _reference_converged
    from sgdbayes.pipelines.posterior_concentration_config import AnalysisConfig
    from sgdbayes.stats.concentration import test_h5
    from sgdbayes.stats.divergence import bootstrap_divergences

    ac = AnalysisConfig()
    assert (ac.reference_max_rhat, ac.reference_min_ess) == (1.01, 400.0)
    ok, why = _reference_converged({"rhat_all": 1.005, "ess_all": 512.0}, ac)
    assert ok and "R̂ 1.005" in why
    for rhat, ess in ((1.73, 23.1), (1.005, 23.1), (1.73, 900.0), (float("nan"), 900.0)):
        ok, why = _reference_converged({"rhat_all": rhat, "ess_all": ess}, ac)
        assert not ok
    ok, why = _reference_converged({"rhat_all": 1.73, "ess_all": 23.1}, ac)
    assert why == "R̂ 1.73 (needs ≤ 1.01), ESS 23.1 (needs ≥ 400)"
    g = np.random.default_rng(0)
    far = bootstrap_divergences(g.choice(3, 300, p=[0.8, 0.1, 0.1]), g.choice(3, 300, p=[0.1, 0.1, 0.8]), [0, 1, 2],
                                centroids=np.eye(3), n_boot=50, seed=1)
    assert test_h5(far, "SGLD").verdict is Verdict.CONTRADICTED
    h = test_h5(far, "SGLD", reference_converged=False, convergence_note=why)
    assert h.verdict is Verdict.INCONCLUSIVE and h.reason.startswith(f"reference not converged ({why})")
    with pytest.raises(ValueError, match="reference_max_rhat"):
        AnalysisConfig(reference_max_rhat=0.5)


# --------------------------------------------------------------------------- posterior references (issue 16 item 3)

def test_results_and_report_carry_the_posterior_references(quick_run):
    """quick runs SGLD to a (tiny) target and HMC; results.json has one entry per reference, the
    report's "Posterior references" table shows them, and H5 against each is inconclusive unless it
    converged."""
    res, rep = quick_run["results"], quick_run["report"]
    refs = res["references"]
    assert [r["name"] for r in refs] == ["SGLD to target", "HMC"]
    sgld_t, hmc = refs
    n_starts = res["sgld"]["n_chains"]  # the sgld starts plus (overdispersed) one per cluster not among them
    assert sgld_t["n_chains"] >= n_starts and hmc["n_chains"] == sgld_t["n_chains"]
    assert sgld_t["samples_per_chain"] == 20 and hmc["samples_per_chain"] == 20  # 40 drawn, half discarded; 20 HMC
    assert sgld_t["stop_reason"].startswith("converged" if sgld_t["converged"] else "budget spent")
    assert sgld_t["gradient_evaluations"] > 0 and hmc["gradient_evaluations"] > 0
    assert 0.0 <= hmc["acceptance"] <= 1.0 and sgld_t["acceptance"] is None  # NaN is null in results.json
    assert sgld_t["rhat_labels"] is not None and hmc["rhat_norm"] is not None and hmc["rhat_norm"] > 0
    assert hmc["weight_decay"] == sgld_t["weight_decay"] == 0.0 and hmc["nbeta"] == sgld_t["nbeta"] == 512
    for r in refs:  # both criteria include the cluster assignment's R̂ (null: undefined, never converged)
        on_target = r["rhat_labels"] is not None and r["rhat_labels"] <= 1.01
        assert r["converged"] == (r["rhat"] <= 1.01 and r["ess"] >= 400 and on_target)
    rows = _section_table(rep, "## Posterior references")
    assert [row[0] for row in rows] == ["SGLD to target", "HMC"]
    for row, r in zip(rows, refs):
        assert row[2] == ("yes" if r["converged"] else "**no**")
        assert _close(_num(row[4]), r["rhat"]) and _close(_num(row[5]), r["ess"])
        assert _close(_num(row[11]), r["wall_s"]) and row[12].startswith(str(r["gradient_evaluations"]))
    assert _close(_num(rows[1][7]), hmc["rhat_norm"]) and rows[0][7] in ("—", "nan", "")
    assert "prior precision ω = 0 (a flat prior" in rep
    hyps = {h.id: h for h in res["hypotheses"]}
    for r, id_ in zip(refs, ("H5-sgld-to-target", "H5-hmc")):
        if not r["converged"]:
            assert hyps[id_].verdict is Verdict.INCONCLUSIVE
            assert hyps[id_].reason.startswith("reference not converged (R̂ ") and "ESS" in hyps[id_].reason
    assert {t["reference"] for t in res["table2"]} >= {"SGLD to target", "HMC"}


def test_unconverged_reference_yields_inconclusive_and_converged_one_is_decided():
    from types import SimpleNamespace

    from sgdbayes.pipelines.posterior_concentration_analysis import _reference_h5
    from sgdbayes.pipelines.posterior_concentration_config import AnalysisConfig

    g = np.random.default_rng(0)
    N, cats = 120, [0, 1, 2]
    sgd = g.choice(3, N, p=[0.8, 0.1, 0.1])
    inp = {"labels": sgd, "cats": cats, "m": 512.0, "alpha": np.full(N, 0.9), "centroids": np.eye(3), "N": N}
    far = np.full((4, 50), 2, dtype=np.int64)  # every reference sample in the cluster SGD rarely visits
    base = {"labels": far, "left_seed_cluster": np.zeros(4, np.int64), "rhat": 1.5, "ess": 12.0}
    refs = [{**base, "name": "A", "converged": True}, {**base, "name": "B", "converged": False}]
    rows, tests = _reference_h5(inp, refs, SimpleNamespace(xi=1.0), AnalysisConfig(n_boot=50))
    assert [t.id for t in tests] == ["H5-a", "H5-b"] and [r["reference"] for r in rows] == ["A", "B"]
    assert tests[0].verdict is Verdict.CONTRADICTED
    assert tests[1].verdict is Verdict.INCONCLUSIVE
    assert tests[1].reason.startswith("reference not converged (R̂ 1.5, ESS 12)")
    rows, tests = _reference_h5(inp, refs[:1], None, AnalysisConfig(n_boot=50))  # no tempered distribution
    assert rows == [] and tests[0].verdict is Verdict.UNTESTABLE


def test_reference_section_validates_and_reference_preset_resolves():
    from sgdbayes.pipelines.posterior_concentration_config import ReferenceConfig

    r = ReferenceConfig()
    assert r.sgld_target and not r.hmc and r.target().max_samples == 1000
    assert r.hmc_config().keep_samples
    with pytest.raises(ValueError, match="max_samples"):
        ReferenceConfig(block_samples=250, max_samples=50)
    with pytest.raises(ValueError, match="hmc_chains_per_start"):
        ReferenceConfig(hmc_chains_per_start=0)
    from sgdbayes.runner.config import load_study, resolve_config

    cfg = resolve_config(load_study("posterior_concentration"), ["reference"], [])
    h = cfg.reference.hmc_config(cfg.sgld)  # HMC samples the [sgld] posterior: N(0, 0.1 I) prior, nβ = n
    assert cfg.sgld.weight_decay == 10.0 and h.weight_decay == 10.0 and h.temperature == cfg.sgld.temperature
    assert cfg.reference.hmc and h.num_leapfrog == 32 and h.num_samples == 1000
