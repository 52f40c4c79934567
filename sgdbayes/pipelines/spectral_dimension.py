"""spectral_dimension: paper §4.1, App G.1, App J (Tables 7-8), Figs 2a, 14-15, 18, 21
(docs/methods.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    the identical-architecture ensemble (App G.1: 50 seeds of 784-128-64-32-10, input
                width set by the data) with λ̂ every ``llc_schedule.every`` steps (LLC hook of the engine)
2. ``sweep``    the Table-7 architectures (input width replaced by the data's), same hook
3. ``analysis`` per run: final λ (mean of the last 10 estimates) and λ̄ (mean of all), eq-17 fits
                (whole range = the paper's d_s; late window after t_c), d_s = 2λα with delta-method
                intervals; H1 (late), H2/H3 (whole and late windows), H7 (displacement vs λ and
                held-out prediction of late displacement); cross-run regressions d_s ~ λ, d_s ~ λ̄

Report: :func:`sgdbayes.reporting.diffusion_reports.write_spectral_dimension`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_int
from ..runner.orchestrate import Stage, StageContext
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from ._diffusion_common import (
    bootstrap_ci,
    fit_runs,
    h7_prediction,
    hypothesis_rows,
    llc_summaries,
    parse_layers,
    stats_of,
    train_cell,
)
from ._ensemble_arrays import divergence_summary
from .sections import (
    BootstrapConfig,
    CurvesReport,
    FitConfig,
    H7Config,
    LLCSchedule,
    MNISTFamilyData,
    ModelConfig,
    TrainConfig,
    sgd_ensemble,
)

__all__ = ["CONFIG", "SpectralDimensionConfig", "SweepConfig", "STAGES", "write_report", "table7_architectures",
           "h7_rows", "diffusion_hypotheses"]


@dataclass(frozen=True)
class SweepConfig:
    """``[sweep]``: the Table-7 architectures (``rows``: 0-based rows to train, () = all 18),
    ``seeds`` per architecture, trained ``epochs`` with the ``[train]`` optimizer settings."""

    enabled: bool = True
    rows: tuple[int, ...] = ()
    seeds: int = 1
    epochs: int = 250

    def __post_init__(self):
        for i, r in enumerate(self.rows):
            check_int(f"rows[{i}]", r, 0)
        check_int("seeds", self.seeds, 1)
        check_int("epochs", self.epochs, 1)


@dataclass(frozen=True)
class SpectralDimensionConfig(StudyConfig):
    """The sections of ``studies/spectral_dimension.toml``."""

    data: MNISTFamilyData = field(default_factory=MNISTFamilyData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=(128, 64, 32)))
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    llc_schedule: LLCSchedule = field(default_factory=LLCSchedule)
    fit: FitConfig = field(default_factory=FitConfig)
    h7: H7Config = field(default_factory=H7Config)
    analysis: BootstrapConfig = field(default_factory=BootstrapConfig)
    report: CurvesReport = field(default_factory=lambda: CurvesReport(max_curves=8))

    def input_files(self):
        return self.data.input_files()

    def preflight(self) -> None:
        n = self.data.load().n_train
        self.train.check_data(n, f"data.name = {self.data.name!r}")
        steps = {"train": self.train.n_steps(n)}
        if self.sweep.enabled:
            steps["sweep"] = self.sweep.epochs * (n // self.train.batch_size)
        for what, k in steps.items():
            if k < self.llc_schedule.every:
                raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} exceeds the {k} steps of the "
                                 f"{what} runs: no λ̂ would be estimated; lower it or train longer")


CONFIG = SpectralDimensionConfig


def table7_architectures(rows: list[int]) -> pd.DataFrame:
    """The paper's Table 7 with ``hidden`` = its layer list minus the 784 input (output 10 implied)."""
    from ..paper import load_table

    t7 = load_table(7).reset_index(drop=True)
    t7["row"] = np.arange(len(t7))
    t7["hidden"] = [parse_layers(s)[1:] for s in t7["layers"]]
    if rows:
        bad = [r for r in rows if not 0 <= r < len(t7)]
        if bad:
            raise ValueError(f"sweep.rows {bad} outside the {len(t7)} rows (0..{len(t7) - 1}) of Table 7")
        t7 = t7.iloc[list(rows)].reset_index(drop=True)
    return t7


def stage_train(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    data = c.data.load()
    ecfg = sgd_ensemble(c.data, c.model, c.train, data.n_train, ctx.device)
    out = train_cell(data.to(ctx.device), ecfg, c.llc, c.llc_schedule.every)
    out["data_meta"] = {k: v for k, v in data.meta.items() if isinstance(v, (int, float, str, bool))}
    out["n_train"], out["n_test"], out["n_features"] = data.n_train, int(data.x_test.shape[0]), data.n_features
    out["total_steps"] = ecfg.steps
    out["divergence"] = divergence_summary(out["diverged"], out["diverged_step"], [f"seed {s}" for s in out["seeds"]])
    ctx.log(f"    {len(ecfg.seeds)} runs x {ecfg.steps} steps; test acc {np.nanmean(out['final_test_acc']):.3f}; "
            f"λ̂ estimates {out['llc'].shape[1]} per run; {out['wall_s']:.1f} s")
    return out


def stage_sweep(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    if not c.sweep.enabled:
        return {"enabled": False}
    data = c.data.load(ctx.device)
    t7 = table7_architectures(list(c.sweep.rows))
    sweep_train = replace(c.train, seeds=c.sweep.seeds, steps=0, epochs=c.sweep.epochs)
    base = sgd_ensemble(c.data, c.model, sweep_train, data.n_train, ctx.device)
    cells = []
    for i, r in t7.iterrows():
        res = train_cell(data, replace(base, widths=(None, *r["hidden"], None)), c.llc, c.llc_schedule.every)
        cells.append(res)
        ctx.log(f"    Table 7 row {int(r['row'])}: {res['widths']} ({res['n_params']} params) {res['wall_s']:.1f} s")
    G = min(c["displacement"].shape[1] for c in cells)
    return {
        "enabled": True, "rows": t7["row"].to_numpy(np.int64), "layers_paper": list(t7["layers"]),
        "paper_d_s": t7["d_s"].to_numpy(float), "paper_llc": t7["llc_final"].to_numpy(float),
        "paper_params": t7["num_params"].to_numpy(np.int64),
        "widths": [c["widths"] for c in cells], "n_params": np.asarray([c["n_params"] for c in cells], np.int64),
        "steps": cells[0]["steps"][:G], "displacement": np.stack([c["displacement"][:, :G] for c in cells]),
        "llc_steps": cells[0]["llc_steps"], "llc": np.stack([c["llc"] for c in cells]),
        "llc_std": np.stack([c["llc_std"] for c in cells]),
        "final_test_acc": np.stack([c["final_test_acc"] for c in cells]),
        "final_train_acc": np.stack([c["final_train_acc"] for c in cells]),
        "diverged": np.stack([c["diverged"] for c in cells]),
        "diverged_step": np.stack([c["diverged_step"] for c in cells]), "total_steps": base.steps,
        "wall_s_per_arch": np.asarray([c["wall_s"] for c in cells]),
    }


# --------------------------------------------------------------------------- analysis helpers

def diffusion_hypotheses(runs: pd.DataFrame, level: float, seed: int, label: str = "") -> tuple[list, dict]:
    """H1 (late), H2 and H3 (whole = the paper's d_s; late window) as verdict rows + per-run tables."""
    from ..stats.hypotheses import test_h1, test_h2, test_h3

    rows, per = [], {}
    sfx = f" [{label}]" if label else ""
    h = test_h1(runs, "late", level)
    rows.append(hypothesis_rows(h, "late SGD is sub-diffusive (α < 1/2)", "median α_late − 1/2",
                                runs["late_alpha"].to_numpy(float) - 0.5, level, seed, "H1" + sfx))
    per["H1_late"] = h.to_frame()
    for win in ("whole", "late"):
        pre = "" if win == "whole" else "late_"
        h2 = test_h2(runs, win, level)
        pos = runs["llc"].to_numpy(float) > 0
        rows.append(hypothesis_rows(h2, "d_s ≤ λ (Lemma 3.4) ⇔ α ≤ 1/2 for λ > 0", "median (d_s − λ), λ > 0",
                                    (runs[pre + "d_s"].to_numpy(float) - runs["llc"].to_numpy(float))[pos],
                                    level, seed + 1, "H2" + sfx))
        per[f"H2_{win}"] = h2.to_frame()
        if runs["llc_mean"].notna().any():
            h3 = test_h3(runs, win, level)
            rows.append(hypothesis_rows(h3, "d_s ≤ λ̄ (Cor 3.3) ⇔ α ≤ λ̄/(2λ)", "median (d_s − λ̄), λ > 0",
                                        (runs[pre + "d_s"].to_numpy(float) - runs["llc_mean"].to_numpy(float))[pos],
                                        level, seed + 2, "H3" + sfx))
            per[f"H3_{win}"] = h3.to_frame()
    return rows, per


def h7_rows(runs: pd.DataFrame, pred: dict, margin: float, level: float, n_boot: int, seed: int) -> tuple[list, dict]:
    """H7 (Figs 14-15, 17-18): (a) weights move further when λ is small: Spearman ρ(R_T, λ_final) < 0
    with a bootstrap interval; (b) late displacement is predictable from an early-window eq-17 fit:
    median |R̂_T/R_T − 1| with a bootstrap interval, 'predictable' when its upper bound < ``margin``."""
    from ..stats.regression import cross_run_regressions

    df = pd.DataFrame({"R_final": pred["R_true_final"], "llc": runs["llc"].to_numpy(float),
                       "R_pred": pred["R_pred_final"]})
    reg = cross_run_regressions(df, [("R_final", "llc"), ("R_final", "R_pred")], n_boot=n_boot, level=level, seed=seed)
    tab = reg.table
    sp = tab[(tab["kind"] == "spearman") & (tab["x"] == "llc")].iloc[0]
    rows = []
    if sp["estimate"] is None or not np.isfinite(sp["estimate"]):
        v1 = f"untestable: {sp['note']}"
    elif sp["hi"] < 0:
        v1 = "supported"
    elif sp["lo"] > 0:
        v1 = "contradicted (ρ > 0)"
    else:
        v1 = "not supported (interval includes 0)"
    rows.append({"id": "H7", "claim": "weights move further when λ is small", "window": "final R_T",
                 "statistic": "Spearman ρ(R_T, λ_final)", "value": sp["estimate"], "ci": [sp["lo"], sp["hi"]],
                 "pvalue": sp["p"], "p_label": "two-sided, Spearman", "n_tested": int(sp["n"]), "n_excluded": 0,
                 "n_support_holm": None, "share_support_holm": None, "share_upper_below": None,
                 "verdict": v1, "notes": []})
    err = np.abs(np.asarray(pred["rel_err_final"], float))
    fe = err[np.isfinite(err)]
    med = float(np.median(fe)) if fe.size else float("nan")
    lo, hi = bootstrap_ci(fe, np.median, n_boot=n_boot, level=level, seed=seed)
    if not fe.size:
        v2 = "untestable: no early-window fit"
    elif np.isfinite(hi) and hi < margin:
        v2 = f"supported (upper bound < margin {margin:g})"
    else:
        v2 = f"not supported (upper bound ≥ margin {margin:g})"
    rows.append({"id": "H7", "claim": "late displacement is predicted by an early-window eq-17 fit",
                 "window": "held-out late window", "statistic": "median |R̂_T/R_T − 1|", "value": med,
                 "ci": [lo, hi], "pvalue": None, "p_label": "—", "n_tested": int(fe.size),
                 "n_excluded": int(pred["n_failed"]), "n_support_holm": None, "share_support_holm": None,
                 "share_upper_below": None, "verdict": v2, "notes": []})
    return rows, {"regressions": tab.to_dict(orient="list")}


def _run_table(steps, disp, llc_arr, fs: FitConfig, ids, last: int, positions):
    summ = llc_summaries(llc_arr, last)
    runs = fit_runs(steps, disp, fs, ids, llc=summ["llc_final"], llc_se=summ["llc_final_se"],
                    llc_mean=summ["llc_mean"], llc_mean_se=summ["llc_mean_se"], positions=positions)
    runs["n_negative_estimates"] = summ["n_negative_estimates"]
    return runs


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    from ..paper import load_table
    from ..stats.regression import cross_run_regressions

    tr, sw = ctx["train"], ctx["sweep"]
    c = ctx.config
    fs = c.fit
    level, seed, n_boot = fs.level, c.analysis.seed, c.analysis.n_boot
    last = c.llc_schedule.last
    steps = np.asarray(tr["steps"], float)
    ok = ~np.asarray(tr["diverged"], bool)
    disp = np.asarray(tr["displacement"], float)[ok]
    ids = [int(s) for s in np.asarray(tr["seeds"])[ok]]
    runs = _run_table(steps, disp, np.asarray(tr["llc"], float)[ok], fs, ids, last, np.flatnonzero(ok))
    runs["test_acc"] = np.asarray(tr["final_test_acc"])[ok]
    runs["R_final"] = disp[:, -1]
    notes = []
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} diverged runs left out of every analysis")
    fitted = runs[runs["fit_error"] == ""].reset_index(drop=True)
    hyps, per = diffusion_hypotheses(fitted, level, seed)
    pred = h7_prediction(steps, disp[(runs["fit_error"] == "").to_numpy()], c.h7.split, fs)
    h7, h7extra = h7_rows(fitted, pred, c.h7.margin, level, n_boot, seed)
    hyps += h7
    reg = cross_run_regressions(fitted, [("d_s", "llc"), ("d_s", "llc_mean"), ("late_d_s", "llc")],
                                eiv=[("d_s", "llc")], eiv_se={"d_s": "d_s_se", "llc": "llc_se"},
                                n_boot=n_boot, level=level, seed=seed)
    nonpos = fitted[~(fitted["llc"] > 0)]
    t8 = load_table(8)
    out: dict[str, Any] = {
        "runs": fitted.to_dict(orient="list"), "hypotheses": hyps, "per_run_tests": {k: v.to_dict(orient="list") for k, v in per.items()},
        "h7_pred": {k: (v if np.isscalar(v) else np.asarray(v, float)) for k, v in pred.items()},
        "h7_regressions": h7extra["regressions"], "regressions": reg.table.to_dict(orient="list"),
        "llc_nonpositive": nonpos[["run", "llc", "llc_se", "alpha", "d_s", "late_alpha", "late_d_s"]].to_dict(orient="list"),
        "summary": {
            "llc_final": stats_of(fitted["llc"], level, seed), "llc_mean": stats_of(fitted["llc_mean"], level, seed),
            "llc_final_se": stats_of(fitted["llc_se"], level, seed),
            "alpha": stats_of(fitted["alpha"], level, seed), "late_alpha": stats_of(fitted["late_alpha"], level, seed),
            "d_s": stats_of(fitted["d_s"], level, seed), "late_d_s": stats_of(fitted["late_d_s"], level, seed),
            "r2": stats_of(fitted["r2"], level, seed), "r2_heldout": stats_of(pred["r2_heldout"], level, seed),
            "rel_err_final": stats_of(pred["rel_err_final"], level, seed),
            "t_c": stats_of(fitted["t_c"], level, seed), "test_acc": stats_of(fitted["test_acc"], level, seed),
            "R_final": stats_of(fitted["R_final"], level, seed),
            "n_runs": int(len(runs)), "n_fitted": int(len(fitted)), "n_llc_nonpositive": int(len(nonpos)),
            "n_negative_estimates": int(np.sum(fitted["n_negative_estimates"])),
            "n_estimates": int(np.size(tr["llc"])),
        },
        "paper_table8": {"d_s": stats_of(t8["d_s"].to_numpy(float), level, seed),
                         "llc": stats_of(t8["llc"].to_numpy(float), level, seed),
                         "share_d_s_le_llc": float(np.mean(t8["d_s"] <= t8["llc"])),
                         "alpha_implied": stats_of((t8["d_s"] / (2 * t8["llc"])).to_numpy(float), level, seed)},
        "notes": notes,
    }
    if sw.get("enabled"):
        A, S, G = np.asarray(sw["displacement"]).shape
        sruns_all = []
        for a in range(A):
            keep = ~np.asarray(sw["diverged"][a], bool)  # diverged sweep runs are left out like the others
            if not keep.any():
                continue
            r = _run_table(np.asarray(sw["steps"], float), np.asarray(sw["displacement"][a], float)[keep],
                           np.asarray(sw["llc"][a], float)[keep], fs,
                           [f"T7-{int(sw['rows'][a])}/s{s}" for s in np.flatnonzero(keep)], last, np.flatnonzero(keep))
            r["arch"] = a
            r["row"] = int(sw["rows"][a])
            r["test_acc"] = np.asarray(sw["final_test_acc"][a])[keep]
            sruns_all.append(r)
        n_sweep_diverged = int(np.asarray(sw["diverged"], bool).sum())
        if n_sweep_diverged:
            notes.append(f"{n_sweep_diverged} of {A * S} sweep runs diverged; left out of the sweep analysis")
        if not sruns_all:  # every sweep run diverged: nothing to analyse (the note says so)
            out["sweep"] = {"enabled": False, "all_diverged": True}
            return out
        sruns = pd.concat(sruns_all, ignore_index=True)
        sfit = sruns[sruns["fit_error"] == ""].reset_index(drop=True)
        arch = []
        for a in range(A):
            g = sfit[sfit["arch"] == a]
            arch.append({
                "row": int(sw["rows"][a]), "layers_paper": sw["layers_paper"][a], "widths": sw["widths"][a],
                "n_params": int(sw["n_params"][a]), "paper_params": int(sw["paper_params"][a]),
                "paper_d_s": float(sw["paper_d_s"][a]), "paper_llc": float(sw["paper_llc"][a]),
                "n_runs": int(len(g)), "d_s": float(g["d_s"].mean()) if len(g) else None,
                "d_s_lo": float(g["d_s_lo"].mean()) if len(g) == 1 else None,
                "d_s_hi": float(g["d_s_hi"].mean()) if len(g) == 1 else None,
                "llc": float(g["llc"].mean()) if len(g) else None, "llc_se": float(g["llc_se"].mean()) if len(g) else None,
                "llc_mean": float(g["llc_mean"].mean()) if len(g) else None,
                "alpha": float(g["alpha"].mean()) if len(g) else None,
                "alpha_lo": float(g["alpha_lo"].mean()) if len(g) == 1 else None,
                "alpha_hi": float(g["alpha_hi"].mean()) if len(g) == 1 else None,
                "late_alpha": float(g["late_alpha"].mean()) if len(g) and g["late_alpha"].notna().any() else None,
                "r2": float(g["r2"].mean()) if len(g) else None, "test_acc": float(g["test_acc"].mean()) if len(g) else None,
                "wall_s": float(sw["wall_s_per_arch"][a]),
            })
        shyps, _ = diffusion_hypotheses(sfit, level, seed + 10, "sweep")
        sreg = cross_run_regressions(sfit, [("d_s", "llc")], n_boot=n_boot, level=level, seed=seed)
        paper_vs = pd.DataFrame({"ours": [x["d_s"] for x in arch], "paper": [x["paper_d_s"] for x in arch]})
        preg = cross_run_regressions(paper_vs, [("ours", "paper")], n_boot=n_boot, level=level, seed=seed)
        out.update({"sweep": {"enabled": True, "arch": arch, "runs": sfit.to_dict(orient="list"),
                              "regressions": sreg.table.to_dict(orient="list"),
                              "ours_vs_paper": preg.table.to_dict(orient="list"),
                              "n_llc_nonpositive": int((~(sfit["llc"] > 0)).sum()),
                              "total_steps": int(sw["total_steps"])}})
        hyps += [h for h in shyps if h["id"].startswith("H2")]
    else:
        out["sweep"] = {"enabled": False}
    return out


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} seeds diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", stage_train, "train the identical-architecture ensemble with λ̂ along training"),
    Stage("sweep", stage_sweep, "train the Table-7 architectures with λ̂ along training", skip=_no_run_left),
    Stage("analysis", stage_analysis, "per-run d_s, λ, λ̄; H1-H3, H7; regressions", skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.diffusion_reports import write_spectral_dimension

    return write_spectral_dimension(ctx)
