"""python -m sgdbayes.compare STUDY and the readable variant folder names."""
from __future__ import annotations

from pathlib import Path

import pytest

from sgdbayes.compare import compare_table, config_differences, find_variants, main, write_compare
from sgdbayes.reporting.toolkit import read_results_json, write_results_json
from sgdbayes.runner.config import load_study, resolve_config
from sgdbayes.runner.typed import config_to_dict
from sgdbayes.runner.variants import MAX_LABEL, variant_label
from sgdbayes.stats.results import HypothesisTest

STUDY = "cifar_conv"


def _test(hid, est, lo, hi):
    return HypothesisTest.decided(hid, "claim", "stat", est, lo, hi, None, "interval", 0.95)


def _write(folder, presets, sets=(), hyps=()):
    decl = load_study(STUDY)
    cfg = config_to_dict(resolve_config(decl, presets, list(sets)))
    write_results_json(folder / "results.json", {"study": STUDY, "presets": list(presets), "sets": list(sets),
                                                 "config_hash": "abc", "config": cfg, "wall_total_s": 1.5,
                                                 "hypotheses": list(hyps)})


def test_variant_labels_are_readable_and_unique():
    assert variant_label(["quick"]) == "quick"
    assert variant_label(["cpu"], ["train.lr=0.01"], config_hash="0123456789") == "cpu+train.lr=0.01"
    # sorted keys, parsed values: the same configuration gives the same name
    a = variant_label(["quick"], ["train.lr=1e-2", "arch.rows=[0, 1]"])
    assert a == variant_label(["quick"], ["arch.rows=[0,1]", "train.lr=0.01"]) == "quick+arch.rows=[0,1]+train.lr=0.01"
    assert variant_label(["quick"], seeds=8, seeds_key="train.seeds") == "quick+train.seeds=8"
    assert variant_label(["quick"], ["train.seeds=3"], seeds=8, seeds_key="train.seeds") == "quick+train.seeds=3"
    # unsafe characters are replaced, and the hash keeps such names apart
    p1 = variant_label(["paper"], ['data.path="/data/a b"'], config_hash="11111111ff")
    p2 = variant_label(["paper"], ['data.path="/data/a_b"'], config_hash="22222222ff")
    assert "/" not in p1 and " " not in p1 and p1.endswith("-11111111") and p1 != p2
    long = variant_label(["quick"], [f"arch.rows=[{','.join(['1'] * 60)}]"], config_hash="deadbeef00")
    assert len(long) == MAX_LABEL and long.endswith("-deadbeef")


def test_compare_table_across_variants(tmp_path):
    _write(tmp_path, ["cpu"], hyps=[_test("H2", -0.2, -0.3, -0.1), _test("H10x", 1, 0, 2), _test("H1", 0.1, 0.0, 0.2)])
    v = tmp_path / "variants" / "cpu+train.lr=0.01"
    _write(v, ["cpu"], ["train.lr=0.01"], hyps=[_test("H1", -0.2, -0.3, -0.1), _test("H1-whole", 0.3, 0.2, 0.4)])
    _write(tmp_path / "variants" / "other", ["quick"], hyps=[])
    (tmp_path / "variants" / "broken").mkdir()
    (tmp_path / "variants" / "broken" / "results.json").write_text("{not json")
    found = find_variants(STUDY, tmp_path)
    assert [x.label for x in found] == ["default (cpu)", "cpu+train.lr=0.01", "other"]
    head, rows = compare_table(found)
    assert head[1:] == ["`default (cpu)`", "`cpu+train.lr=0.01`", "`other`"]
    assert [r[0] for r in rows] == ["H1", "H1-whole", "H2", "H10x"]  # H ids in numeric order
    assert rows[0][1] == "0.1 [0, 0.2] **not supported**" and rows[0][2] == "-0.2 [-0.3, -0.1] **supported**"
    assert rows[1][1] == "—" and rows[2][3] == "—"
    out = write_compare(STUDY, tmp_path)
    text = out.read_text()
    assert out == tmp_path / "compare.md" and (tmp_path / "compare.png").is_file()
    assert "`train.lr`: 0.05 → 0.01" in text and "none (the default)" in text and "`arch.channel_divisor`: 2 → 8" in text
    assert not list(tmp_path.glob("*.tmp*"))


def test_config_differences():
    assert config_differences({"a": {"x": 1, "y": [1, 2]}}, {"a": {"x": 1, "y": [1, 3], "z": 0}}) == {
        "a.y": ([1, 2], [1, 3]), "a.z": (None, 0)}


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["no_such_study", "--root", str(tmp_path)]) == 2
    assert "unknown study 'no_such_study'" in capsys.readouterr().err
    assert main([STUDY, "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no computed variant of 'cifar_conv'" in err and "Traceback" not in err
    assert main([STUDY, "--root", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    _write(tmp_path, ["quick"], hyps=[_test("H1", 0.1, 0.0, 0.2)])
    assert main([STUDY, "--root", str(tmp_path)]) == 0
    assert read_results_json(tmp_path / "results.json")["study"] == STUDY


def test_study_variant_folders_have_readable_names_and_compare_finds_them(tmp_path, monkeypatch):
    from sgdbayes.runner.orchestrate import run_study

    monkeypatch.chdir(tmp_path)
    sets = ["arch.rows=[0]", "train.epochs=4", "llc_schedule.last=2"]
    r1 = run_study(STUDY, ["quick"], sets=sets, device="cpu", log=lambda m: None)
    more = [*sets, "llc.num_draws=5", "llc_schedule.every=10", "train.lr=0.02"]
    r2 = run_study(STUDY, ["quick"], sets=more, device="cpu", log=lambda m: None)
    base = Path("reports") / STUDY / "variants"  # relative to the working folder
    assert r1.report.parent == base / "quick+arch.rows=[0]+llc_schedule.last=2+train.epochs=4"
    d2 = r2.report.parent
    assert d2.parent == base and d2.name.startswith("quick+arch.rows=[0]+llc.num_draws=5") and d2 != r1.report.parent
    assert len(d2.name) == 80 and d2.name.endswith("-" + r2.config_hash[:8])  # long: cut, hash appended
    assert main([STUDY]) == 0
    text = (tmp_path / "reports" / STUDY / "compare.md").read_text()
    assert f"`{r1.report.parent.name}`" in text and f"`{r2.report.parent.name}`" in text and "`train.lr`: 0.05 → 0.02" in text
    assert f"`{d2.name}`" in text
