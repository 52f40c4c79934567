"""The one formatter and the report toolkit (issue 11 item 5; issue 10 items 17, 18)."""
from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from sgdbayes.reporting import format as F
from sgdbayes.reporting import toolkit as T
from sgdbayes.stats.results import HypothesisTest, Verdict


@pytest.mark.parametrize("x, text", [
    (None, "—"), (float("nan"), "—"), (np.float32("nan"), "—"),
    (float("inf"), "∞"), (-np.inf, "-∞"), ("inf", "∞"), ("-inf", "-∞"),
    (True, "yes"), (np.bool_(False), "no"),
    (0, "0"), (7, "7"), (np.int64(123456789), "123456789"), (0.0, "0"), (-0.0, "0"),
    (1e-12, "1.000e-12"), (-3.2e-5, "-3.200e-05"), (1.234567e7, "1.235e+07"), (99999.0, "1e+05"),
    (0.123456, "0.1235"), (2.5, "2.5"), (np.float64(1 / 3), "0.3333"), (12345.6, "1.235e+04"),
    ("007", "007"), ("C1", "C1"),
])
def test_fmt_num(x, text):
    assert F.fmt_num(x) == text


def test_one_missing_glyph_everywhere():
    assert F.MISSING == "—"
    assert F.fmt_interval(1.0, None) == F.fmt_interval(float("nan"), 2) == F.MISSING
    assert F.fmt_interval(0.1, 0.2) == "[0.1, 0.2]"
    assert F.fmt_estimate(0.5, 0.1, 0.9) == "0.5 [0.1, 0.9]" and F.fmt_estimate(0.5) == "0.5"
    assert F.fmt_p(None) == F.fmt_pvalue(float("nan"), "Wilcoxon") == F.MISSING


def test_pvalues_are_labelled_and_checked():
    assert F.fmt_pvalue(0.01234, "Wilcoxon signed-rank, one-sided") == "0.01234 (Wilcoxon signed-rank, one-sided)"
    assert F.fmt_p(1e-30) == "1.000e-30" and F.fmt_p(1) == "1"
    assert F.p_header("α ≥ 1/2") == "p-value (H0: α ≥ 1/2)" and F.p_header() == "p-value"
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="p-value"):
            F.fmt_p(bad)
    assert F.fmt_level(0.95) == "95 %" and F.fmt_level(0.9) == "90 %"


def _tests():
    def t(v, est=0.1, lo=-0.1, hi=0.3, p=0.2, reason="the 95 % interval contains 0"):
        return HypothesisTest(id=f"H{list(Verdict).index(v) + 1}", claim="a | b", statistic="median α − 1/2",
                              estimate=est, ci_low=lo, ci_high=hi, pvalue=p, test="Wilcoxon", verdict=v,
                              reason=reason)
    return [t(Verdict.SUPPORTED, -0.2, -0.3, -0.1, 1e-6, "the 95 % interval lies < 0 and p < 0.05"),
            t(Verdict.NOT_SUPPORTED), t(Verdict.CONTRADICTED, 0.2, 0.1, 0.3, 0.99),
            t(Verdict.INCONCLUSIVE, reason="reference not converged"),
            t(Verdict.UNTESTABLE, float("nan"), float("nan"), float("nan"), None, "no run could be tested")]


def test_verdict_table_renders_every_verdict():
    md = T.verdict_table(_tests())
    lines = md.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["hypothesis", "claim", "statistic", "estimate [interval]",
                                                              "p-value (test)", "verdict", "reason"]
    assert len(lines) == 2 + 5
    for v in Verdict:
        assert f"**{v}**" in md
    assert "-0.2 [-0.3, -0.1] (95 %)" in md and "1.000e-06 (Wilcoxon)" in md
    assert "a \\| b" in md  # a pipe inside a cell does not break the table
    assert "| — " in md and "nan" not in md and "None" not in md


def test_methods_section_lists_every_setting():
    settings = {"train": {"lr": 0.01, "seeds": 40, "hidden": [64, 64]}, "llc": {"nbeta": "batch/log(batch)",
                                                                               "epsilon": 1e-5}}
    md = T.methods_section(settings, seeds="0..39", device="cpu", executor="local (2 workers)",
                           versions={"python": "3.11", "numpy": "2.4"},
                           timings={"train": {"wall_s": 12.5, "device": "cpu", "cached": False},
                                    "llc": {"wall_s": 3.0, "device": "cpu", "cached": True}},
                           notes=["λ̂ by eq 25"])
    for s in ("`train.lr` = 0.01", "`train.seeds` = 40", "`train.hidden` = [64, 64]", "`llc.epsilon` = 1.000e-05",
              "`llc.nbeta` = batch/log(batch)", "0..39", "local (2 workers)", "λ̂ by eq 25", "| numpy ", "15.5",
              "computed now", "cache"):
        assert s in md, s


def test_header():
    h = T.header("Title", preset="Preset **quick**", device="cpu", config_hash="abc", generated="now",
                 seeds="40 seeds", wall_total_s=12.0)
    assert h.startswith("# Title\n") and "config hash `abc`" in h and "results.json" in h and "12 s" in h


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_respect_the_umask(tmp_path, umask, mode):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = os.umask(umask)
    try:
        assert T.file_mode() == mode
        a = T.write_text(tmp_path / "report.md", "x")
        b = T.write_results_json(tmp_path / "results.json", {"a": 1})
        fig = plt.figure()
        c = T.save_figure(fig, tmp_path / "figures" / "f.png")
    finally:
        os.umask(old)
    for p in (a, b, c):
        assert stat.S_IMODE(p.stat().st_mode) == mode
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["f.png", "figures", "report.md", "results.json"]
    assert (tmp_path / "figures" / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_failed_write_leaves_nothing(tmp_path):
    class Boom:
        def savefig(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        T.save_figure(Boom(), tmp_path / "f.png", close=False)
    assert list(tmp_path.iterdir()) == []


def test_results_json_round_trips_results(tmp_path):
    h = HypothesisTest.decided("H1", "α < 1/2", "median α − 1/2", -0.1, -0.2, -0.05, 0.001, "Wilcoxon", 0.95)
    res = {"hypotheses": [h], "arr": np.array([1.0, np.nan, np.inf]), "n": np.int64(3), "flag": np.bool_(True),
           "verdict": Verdict.SUPPORTED, "nested": {"x": float("nan")}}
    p = T.write_results_json(tmp_path / "results.json", res)
    raw = json.loads(p.read_text())
    assert raw["arr"] == [1.0, None, "inf"] and raw["n"] == 3 and raw["flag"] is True
    assert raw["verdict"] == "supported" and raw["nested"] == {"x": None}
    back = T.read_results_json(p)
    hb = back["hypotheses"][0]
    assert isinstance(hb, HypothesisTest) and hb.verdict is Verdict.SUPPORTED and hb.pvalue == 0.001
    assert math.isclose(hb.ci_high, -0.05)
    with pytest.raises(TypeError, match="cannot write"):
        T.jsonable({"x": object()})


def test_result_summaries_use_the_one_formatter():
    """HypothesisTest.summary() (stats) shows numbers as every report does, '—' for a missing value."""
    h = HypothesisTest.decided("H6", "claim", "Δ", None, None, None, None, "paired bootstrap", 0.95,
                               override=(Verdict.UNTESTABLE, "no runs"))
    s = h.summary()
    assert "Δ = — (95 %), p-value = —" in s and "n/a" not in s and "nan" not in s
    h2 = HypothesisTest.decided("H1", "claim", "median", -0.123456, -0.2, -0.05, 1e-7, "Wilcoxon", 0.95)
    assert "-0.1235 [-0.2, -0.05]" in h2.summary() and "1.000e-07 (Wilcoxon)" in h2.summary()
