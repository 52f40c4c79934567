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

Report: :mod:`sgdbayes.reporting.spectral_dimension`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_int
from ..runner.orchestrate import Stage, StageContext
from ..runner.shards import Partial, Sharding, ShardTask
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from ..stats.summaries import llc_summaries, summarize
from ..stats.verdicts import test_h1_h3
from ._diffusion_common import cell_partial, fit_runs, h7_tests, parse_layers, train_cell
from ._ensemble_arrays import divergence_summary, single_cell
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

__all__ = ["CONFIG", "SpectralDimensionConfig", "SweepConfig", "STAGES", "write_report", "table7_architectures"]


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


def _data_facts(data) -> dict[str, Any]:
    return {"data_meta": {k: v for k, v in data.meta.items() if isinstance(v, (int, float, str, bool))},
            "n_train": data.n_train, "n_test": int(data.x_test.shape[0]), "n_features": data.n_features}


def train_shard(task: ShardTask) -> Partial:
    """Some seeds of the ensemble with λ̂ along training, as one batched computation."""
    c = task.config
    data = c.data.load()
    ecfg = replace(sgd_ensemble(c.data, c.model, c.train, data.n_train, task.device), seeds=task.seeds,
                   workers=task.engine_workers(hooks=True))
    out = train_cell(data.to(task.device), ecfg, c.llc, c.llc_schedule.every)
    return cell_partial(out, {**_data_facts(data), "total_steps": ecfg.steps})


def train_merge(ctx: StageContext, cells: list[Partial]) -> dict[str, Any]:
    out = cells[0].flat()
    out["divergence"] = divergence_summary(out["diverged"], out["diverged_step"], [f"seed {s}" for s in out["seeds"]])
    ctx.log(f"    {np.size(out['seeds'])} runs x {out['total_steps']} steps; test acc "
            f"{np.nanmean(out['final_test_acc']):.3f}; λ̂ estimates {out['llc'].shape[1]} per run; {out['wall_s']:.1f} s")
    return out


def _sweep_train(c) -> TrainConfig:
    return replace(c.train, seeds=c.sweep.seeds, steps=0, epochs=c.sweep.epochs)


def sweep_cells(ctx: StageContext):
    """One cell per Table-7 architecture, ``sweep.seeds`` seeds each (none when the sweep is off)."""
    c = ctx.config
    if not c.sweep.enabled:
        return []
    seeds = _sweep_train(c).seed_list()
    return [(a, seeds) for a in range(len(table7_architectures(list(c.sweep.rows))))]


def sweep_shard(task: ShardTask) -> Partial:
    """Some seeds of one Table-7 architecture with λ̂ along training, as one batched computation."""
    c = task.config
    data = c.data.load(task.device)
    hidden = table7_architectures(list(c.sweep.rows))["hidden"].iloc[task.cell]
    base = sgd_ensemble(c.data, c.model, _sweep_train(c), data.n_train, task.device)
    ecfg = replace(base, widths=(None, *hidden, None), seeds=task.seeds, workers=task.engine_workers(hooks=True))
    return cell_partial(train_cell(data, ecfg, c.llc, c.llc_schedule.every), {"total_steps": base.steps})


def sweep_merge(ctx: StageContext, parts: list[Partial]) -> dict[str, Any]:
    c = ctx.config
    if not c.sweep.enabled:
        return {"enabled": False}
    t7 = table7_architectures(list(c.sweep.rows))
    cells = [p.flat() for p in parts]
    for row, res in zip(t7["row"], cells):
        ctx.log(f"    Table 7 row {int(row)}: {res['widths']} ({res['n_params']} params) {res['wall_s']:.1f} s")
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
        "diverged_step": np.stack([c["diverged_step"] for c in cells]), "total_steps": cells[0]["total_steps"],
        "wall_s_per_arch": np.asarray([c["wall_s"] for c in cells]),
    }


# --------------------------------------------------------------------------- analysis

def _run_table(steps, disp, llc_arr, fs: FitConfig, ids, last: int, positions) -> pd.DataFrame:
    """Per-run eq-17 fits with final λ and λ̄ (:func:`~sgdbayes.stats.summaries.llc_summaries`)."""
    summ = llc_summaries(llc_arr, last)
    runs = fit_runs(steps, disp, fs, ids, llc=summ.llc_final, llc_se=summ.llc_final_se, llc_df=summ.llc_final_df,
                    llc_mean=summ.llc_mean, llc_mean_se=summ.llc_mean_se, positions=positions)
    runs["n_negative_estimates"] = summ.n_negative_estimates
    return runs


def _summary(fitted: pd.DataFrame, pred, runs, nonpos, n_estimates: int, level: float, seed: int, n_boot: int):
    def summ(v):
        return summarize(np.asarray(v, float), level, seed, n_boot=n_boot)

    cols = {"llc_final": "llc", "llc_mean": "llc_mean", "llc_final_se": "llc_se", "alpha": "alpha",
            "late_alpha": "late_alpha", "d_s": "d_s", "late_d_s": "late_d_s", "r2": "r2", "t_c": "t_c",
            "test_acc": "test_acc", "R_final": "R_final"}
    out = {k: summ(fitted[c]) for k, c in cols.items()}
    out.update(r2_heldout=summ(pred.r2_heldout), rel_err_final=summ(pred.rel_err_final), n_runs=int(len(runs)),
               n_fitted=int(len(fitted)), n_llc_nonpositive=int(len(nonpos)),
               n_negative_estimates=int(np.sum(fitted["n_negative_estimates"])), n_estimates=int(n_estimates),
               share_d_s_le_llc=float(np.mean(fitted["d_s"].to_numpy(float) <= fitted["llc"].to_numpy(float)))
               if len(fitted) else None)
    return out


def _paper_table8(level: float, seed: int, n_boot: int) -> dict:
    from ..paper import load_table

    t8 = load_table(8)
    d_s, lam = t8["d_s"].to_numpy(float), t8["llc"].to_numpy(float)
    return {"d_s": summarize(d_s, level, seed, n_boot=n_boot), "llc": summarize(lam, level, seed, n_boot=n_boot),
            "share_d_s_le_llc": float(np.mean(d_s <= lam)),
            "alpha_implied": summarize(d_s / (2 * lam), level, seed, n_boot=n_boot)}


def _arch_row(sw: dict, a: int, g: pd.DataFrame) -> dict:
    """One Table-7 architecture: its runs' mean d_s, λ, λ̄, α (intervals when it has one run)."""
    def mean(c):
        return float(g[c].mean()) if len(g) and g[c].notna().any() else None

    one = len(g) == 1
    return {"row": int(sw["rows"][a]), "layers_paper": sw["layers_paper"][a], "widths": sw["widths"][a],
            "n_params": int(sw["n_params"][a]), "paper_params": int(sw["paper_params"][a]),
            "paper_d_s": float(sw["paper_d_s"][a]), "paper_llc": float(sw["paper_llc"][a]), "n_runs": int(len(g)),
            "d_s": mean("d_s"), "d_s_lo": mean("d_s_lo") if one else None, "d_s_hi": mean("d_s_hi") if one else None,
            "llc": mean("llc"), "llc_se": mean("llc_se"), "llc_mean": mean("llc_mean"), "alpha": mean("alpha"),
            "alpha_lo": mean("alpha_lo") if one else None, "alpha_hi": mean("alpha_hi") if one else None,
            "late_alpha": mean("late_alpha"), "r2": mean("r2"), "test_acc": mean("test_acc"),
            "wall_s": float(sw["wall_s_per_arch"][a])}


def _sweep_analysis(sw: dict, c, notes: list) -> tuple[dict, list]:
    """The Table-7 sweep: per-run fits, per-architecture rows, H2 (both windows) over the sweep runs,
    d_s ~ λ and ours ~ the paper's d_s across architectures."""
    from ..stats.regression import cross_run_regressions

    fs, level, seed, n_boot = c.fit, c.fit.level, c.analysis.seed, c.analysis.n_boot
    A, S, _ = np.asarray(sw["displacement"]).shape
    parts = []
    for a in range(A):
        keep = ~np.asarray(sw["diverged"][a], bool)  # diverged sweep runs are left out like the others
        if not keep.any():
            continue
        r = _run_table(np.asarray(sw["steps"], float), np.asarray(sw["displacement"][a], float)[keep],
                       np.asarray(sw["llc"][a], float)[keep], fs,
                       [f"T7-{int(sw['rows'][a])}/s{s}" for s in np.flatnonzero(keep)], c.llc_schedule.last,
                       np.flatnonzero(keep))
        r["arch"], r["row"], r["test_acc"] = a, int(sw["rows"][a]), np.asarray(sw["final_test_acc"][a])[keep]
        parts.append(r)
    n_div = int(np.asarray(sw["diverged"], bool).sum())
    if n_div:
        notes.append(f"{n_div} of {A * S} sweep runs diverged; left out of the sweep analysis")
    if not parts:  # every sweep run diverged: nothing to analyse (the note says so)
        return {"enabled": False, "all_diverged": True}, []
    sfit = pd.concat(parts, ignore_index=True)
    sfit = sfit[sfit["fit_error"] == ""].reset_index(drop=True)
    arch = [_arch_row(sw, a, sfit[sfit["arch"] == a]) for a in range(A)]
    tests, _ = test_h1_h3(sfit, level, seed + 10, n_boot, suffix="sweep")
    paper_vs = pd.DataFrame({"ours": [x["d_s"] for x in arch], "paper": [x["paper_d_s"] for x in arch]})
    out = {"enabled": True, "arch": arch, "runs": sfit,
           "regressions": cross_run_regressions(sfit, [("d_s", "llc")], n_boot=n_boot, level=level, seed=seed),
           "ours_vs_paper": cross_run_regressions(paper_vs, [("ours", "paper")], n_boot=n_boot, level=level, seed=seed),
           "n_llc_nonpositive": int((~(sfit["llc"] > 0)).sum()), "total_steps": int(sw["total_steps"])}
    return out, [t for t in tests if t.id.startswith("H2")]


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    """Per run: final λ, λ̄, eq-17 fits, d_s; H1-H3 and H7 across runs; cross-run regressions; the
    sweep; summaries beside the paper's Table 8."""
    from ..stats.prediction import predict_late_displacement
    from ..stats.regression import cross_run_regressions

    tr, sw, c = ctx["train"], ctx["sweep"], ctx.config
    fs, level, seed, n_boot = c.fit, c.fit.level, c.analysis.seed, c.analysis.n_boot
    steps = np.asarray(tr["steps"], float)
    ok = ~np.asarray(tr["diverged"], bool)
    disp = np.asarray(tr["displacement"], float)[ok]
    runs = _run_table(steps, disp, np.asarray(tr["llc"], float)[ok], fs, [int(s) for s in np.asarray(tr["seeds"])[ok]],
                      c.llc_schedule.last, np.flatnonzero(ok))
    runs["test_acc"] = np.asarray(tr["final_test_acc"])[ok]
    runs["R_final"] = disp[:, -1]
    notes = [f"{int((~ok).sum())} diverged runs left out of every analysis"] if (~ok).any() else []
    is_fit = (runs["fit_error"] == "").to_numpy()
    fitted = runs[is_fit].reset_index(drop=True)
    hyps, per = test_h1_h3(fitted, level, seed, n_boot)
    pred = predict_late_displacement(steps, disp[is_fit], c.h7.split, n_grid=fs.n_grid)
    h7, h7_reg = h7_tests(pred.R_true_final, fitted["llc"], pred.R_pred_final, pred.rel_err_final, pred.n_failed,
                          c.h7.margin, level, n_boot, seed)
    hyps += h7
    reg = cross_run_regressions(fitted, [("d_s", "llc"), ("d_s", "llc_mean"), ("late_d_s", "llc")],
                                eiv=[("d_s", "llc")], eiv_se={"d_s": "d_s_se", "llc": "llc_se"},
                                n_boot=n_boot, level=level, seed=seed)
    nonpos = fitted[~(fitted["llc"] > 0)]
    out: dict[str, Any] = {
        "runs": fitted, "hypotheses": hyps, "per_run_tests": {k: h.per_run_frame() for k, h in per.items()},
        "h7_pred": pred,
        "h7_curve_index": np.flatnonzero(ok)[is_fit],  # rows of the train stage that pred's runs are
        "h7_regressions": h7_reg, "regressions": reg,
        "llc_nonpositive": nonpos[["run", "llc", "llc_se", "alpha", "d_s", "late_alpha", "late_d_s"]],
        "summary": _summary(fitted, pred, runs, nonpos, np.size(tr["llc"]), level, seed, n_boot),
        "paper_table8": _paper_table8(level, seed, n_boot), "notes": notes, "sweep": {"enabled": False},
        "ensemble": {"n_runs": int(np.size(tr["seeds"])), "n_params": int(tr["n_params"]), "widths": tr["widths"],
                     "total_steps": int(tr["total_steps"]), "nbeta": float(tr["nbeta"]),
                     "llc_trend_flags": int(tr["llc_trend_flags"]), "llc_n_estimates": int(tr["llc_n_estimates"]),
                     # the localization relaxes a displacement in 2/(εγ) steps (docs/methods.md)
                     "relaxation_steps": 2.0 / (c.llc.step_size * c.llc.localization)}}
    if sw.get("enabled"):
        out["sweep"], sweep_h2 = _sweep_analysis(sw, c, notes)
        hyps += sweep_h2
    return out


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} seeds diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", description="train the identical-architecture ensemble with λ̂ along training",
          shard=Sharding(single_cell, train_shard, train_merge)),
    Stage("sweep", description="train the Table-7 architectures with λ̂ along training", skip=_no_run_left,
          shard=Sharding(sweep_cells, sweep_shard, sweep_merge)),
    Stage("analysis", stage_analysis, "per-run d_s, λ, λ̄; H1-H3, H7; regressions", skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.spectral_dimension import write_report as write

    return write(ctx)
