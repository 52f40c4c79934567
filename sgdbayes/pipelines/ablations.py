"""ablations: paper App H (Figs 7-13, 16-17, the App-H table; docs/methods.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    one batched ensemble per cell of optimizer (SGD with each momentum in
                ``grid.momenta``; Adam) x learning rate x batch size, λ̂ every ``llc_schedule.every`` steps
2. ``analysis`` per run: final λ, λ̄, eq-17 fits and d_s = 2λα (whole range = the paper's d_s);
                the App-H table (d_s and λ mean/std, test accuracy per optimizer); correlations of
                d_s and λ with lr, batch size, momentum and test accuracy (OLS HC3, Spearman with
                bootstrap CI, Holm within each optimizer family); H6; H1-H3 and H7 per family

H6 (d_s tracks the learning rate much more than λ does; App H, Fig 11) is
:func:`sgdbayes.stats.ablation.test_h6` of the standardized-slope contrast within vanilla SGD runs
(docs/methods.md#h6-d_s-tracks-the-learning-rate-more-than-λ).

Report: :mod:`sgdbayes.reporting.ablations`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_float, check_int, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.shards import Partial, Sharding, ShardTask
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from ..stats.verdicts import test_h1_h3
from ._diffusion_common import cell_partial, fit_runs, h7_tests, train_cell
from ._ensemble_arrays import divergence_summary
from .sections import BootstrapConfig, FitConfig, H7Config, LLCSchedule, MNISTFamilyData, ModelConfig, ReportConfig

__all__ = ["CONFIG", "AblationsConfig", "GridConfig", "STAGES", "write_report", "grid_cells", "PAPER_APP_H"]


@dataclass(frozen=True)
class GridConfig:
    """``[grid]``: the cells (SGD with each momentum in ``momenta`` x ``lrs_sgd``; Adam x
    ``lrs_adam`` when ``adam``) x ``batch_sizes``, ``seeds`` per cell (seed ids from
    ``seed_offset``), each trained ``steps`` steps (> 0) or else ``epochs`` epochs."""

    momenta: tuple[float, ...] = (0.0, 0.9)
    adam: bool = True
    lrs_sgd: tuple[float, ...] = (0.001, 0.01, 0.1)
    lrs_adam: tuple[float, ...] = (0.0001, 0.001, 0.01)
    batch_sizes: tuple[int, ...] = (64, 256)
    seeds: int = 3
    seed_offset: int = 0
    epochs: int = 100
    steps: int = 0
    record_every: int = 10

    def __post_init__(self):
        for i, m in enumerate(self.momenta):
            check_float(f"momenta[{i}]", m, 0.0, 1.0, strict_max=True)
        for name in ("lrs_sgd", "lrs_adam"):
            for i, lr in enumerate(getattr(self, name)):
                check_float(f"{name}[{i}]", lr, 0.0, strict_min=True)
        if not self.batch_sizes:
            raise ValueError("batch_sizes must list at least one batch size")
        for i, b in enumerate(self.batch_sizes):
            check_int(f"batch_sizes[{i}]", b, 1)
        check_int("seeds", self.seeds, 1)
        check_seed(self.seed_offset, "seed_offset")
        check_int("epochs", self.epochs, 1)
        check_int("steps", self.steps, 0)
        check_int("record_every", self.record_every, 1)
        if not ((self.momenta and self.lrs_sgd) or (self.adam and self.lrs_adam)):
            raise ValueError("momenta/lrs_sgd/adam/lrs_adam: the grid is empty; give grid.momenta and "
                             "grid.lrs_sgd, or grid.adam = true with grid.lrs_adam")


@dataclass(frozen=True)
class AblationsConfig(StudyConfig):
    """The sections of ``studies/ablations.toml``."""

    data: MNISTFamilyData = field(default_factory=MNISTFamilyData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=(128, 64, 32)))
    grid: GridConfig = field(default_factory=GridConfig)
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    llc_schedule: LLCSchedule = field(default_factory=LLCSchedule)
    fit: FitConfig = field(default_factory=FitConfig)
    h7: H7Config = field(default_factory=H7Config)
    analysis: BootstrapConfig = field(default_factory=BootstrapConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def input_files(self):
        return self.data.input_files()

    def preflight(self) -> None:
        n = self.data.load().n_train
        big = [b for b in self.grid.batch_sizes if b > n]
        if big:
            raise ValueError(f"grid.batch_sizes {big} exceed the {n} training examples "
                             f"(data.name = {self.data.name!r}); lower them or use more data")
        fewest = min(self.grid.steps or self.grid.epochs * (n // b) for b in self.grid.batch_sizes)
        if fewest < self.llc_schedule.every:
            raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} exceeds the {fewest} steps of a "
                             f"grid cell: no λ̂ would be estimated; lower it or train longer")


CONFIG = AblationsConfig

# The App-H table of the paper (not among sgdbayes.paper's Tables 1, 2, 4-8): per optimizer.
PAPER_APP_H = {
    "adam": {"d_s_mean": 0.4061, "d_s_std": 0.9068, "llc_mean": 3.0957, "llc_std": 5.7533, "test_acc_mean": 90.4297},
    "sgd": {"d_s_mean": 7.8165, "d_s_std": 10.2494, "llc_mean": 12.5270, "llc_std": 11.8393, "test_acc_mean": 94.0592},
}


def grid_cells(grid: GridConfig) -> list[dict]:
    """The cells of the grid: dicts with optimizer, label, family, momentum, lr, batch_size."""
    cells = []
    for m in grid.momenta:
        for lr in grid.lrs_sgd:
            for b in grid.batch_sizes:
                cells.append({"optimizer": "sgd", "label": "sgd" if m == 0 else f"sgd+momentum {m:g}",
                              "family": "SGD", "momentum": float(m), "lr": float(lr), "batch_size": int(b)})
    if grid.adam:
        for lr in grid.lrs_adam:
            for b in grid.batch_sizes:
                cells.append({"optimizer": "adam", "label": "adam", "family": "Adam", "momentum": 0.0,
                              "lr": float(lr), "batch_size": int(b)})
    return cells


def _cell_ensemble(data_cfg: MNISTFamilyData, model: ModelConfig, grid: GridConfig, cell: dict, n_train: int,
                   device: str, seeds: tuple[int, ...]):
    from ..engine import EnsembleConfig

    steps = grid.steps or grid.epochs * (n_train // cell["batch_size"])
    return EnsembleConfig(
        dataset=data_cfg.name, dataset_options=data_cfg.dataset_options(), widths=model.widths(),
        optimizer=cell["optimizer"], lr=cell["lr"], momentum=cell["momentum"] if cell["optimizer"] == "sgd" else 0.0,
        batch_size=cell["batch_size"], steps=int(steps), seeds=seeds, record_every=grid.record_every,
        record_log_points=100, device=device, progress=False,
    )


def train_cells(ctx: StageContext):
    """The grid's cells, ``grid.seeds`` seeds each (ids from ``grid.seed_offset``)."""
    g = ctx.config.grid
    seeds = tuple(range(g.seed_offset, g.seed_offset + g.seeds))
    return [(ci, seeds) for ci in range(len(grid_cells(g)))]


def train_shard(task: ShardTask) -> Partial:
    """Some seeds of one grid cell with λ̂ along training, as one batched computation."""
    c = task.config
    data = c.data.load(task.device)
    ecfg = _cell_ensemble(c.data, c.model, c.grid, grid_cells(c.grid)[task.cell], data.n_train, task.device,
                          task.seeds)
    facts = {"n_train": data.n_train, "n_test": int(data.x_test.shape[0]), "n_features": data.n_features,
             "data_meta": {k: v for k, v in data.meta.items() if isinstance(v, (int, float, str, bool))},
             "steps_total": int(ecfg.steps)}
    return cell_partial(train_cell(data, ecfg, c.llc, c.llc_schedule.every), facts)


def train_merge(ctx: StageContext, parts: list[Partial]) -> dict[str, Any]:
    """The runs table (cell x seed) and one displacement / λ̂ array per cell."""
    c = ctx.config
    rows: dict[str, list] = {k: [] for k in ("cell", "seed", "optimizer", "label", "family", "momentum", "lr",
                                             "batch_size", "steps_total", "test_acc", "train_acc", "diverged",
                                             "diverged_step")}
    cells = [p.flat() for p in parts]
    for ci, (cell, res) in enumerate(zip(grid_cells(c.grid), cells)):
        for k, seed in enumerate(res["seeds"]):
            rows["cell"].append(ci); rows["seed"].append(int(seed))
            for key in ("optimizer", "label", "family", "momentum", "lr", "batch_size"):
                rows[key].append(cell[key])
            rows["steps_total"].append(int(res["steps_total"]))
            rows["test_acc"].append(float(res["final_test_acc"][k])); rows["train_acc"].append(float(res["final_train_acc"][k]))
            rows["diverged"].append(bool(res["diverged"][k])); rows["diverged_step"].append(int(res["diverged_step"][k]))
        ctx.log(f"    cell {ci}: {cell['label']} lr {cell['lr']:g} B {cell['batch_size']}: {res['steps_total']} steps, "
                f"test acc {np.nanmean(res['final_test_acc']):.3f}, {int(res['diverged'].sum())} diverged, "
                f"{res['wall_s']:.1f} s")
    last = cells[-1]
    out: dict[str, Any] = {"runs": rows, "cell_wall_s": np.asarray([r["wall_s"] for r in cells]),
                           "nbeta": float(last["nbeta"]), "n_params": int(last["n_params"]), "widths": last["widths"],
                           **{k: last[k] for k in ("n_train", "n_test", "n_features", "data_meta")},
                           "divergence": divergence_summary(rows["diverged"], rows["diverged_step"],
                                                            [f"c{ci}/s{s}" for ci, s in zip(rows["cell"], rows["seed"])])}
    for i, res in enumerate(cells):
        out[f"steps_{i}"], out[f"disp_{i}"], out[f"llc_{i}"] = res["steps"], res["displacement"], res["llc"]
    return out


def _cell_runs(tr: dict, c, ci: int, meta: pd.DataFrame) -> pd.DataFrame:
    """The fitted runs of grid cell ``ci`` (diverged ones left out): eq-17 fits with final λ and λ̄,
    and the held-out prediction of the late displacement (H7)."""
    from ..stats.prediction import predict_late_displacement
    from ..stats.summaries import llc_summaries

    m = meta[meta["cell"] == ci].reset_index(drop=True)
    keep = ~m["diverged"].to_numpy(bool)  # diverged runs are left out of every fit
    m = m[keep].drop(columns=["diverged_step"]).reset_index(drop=True)
    steps = np.asarray(tr[f"steps_{ci}"], float)
    disp = np.asarray(tr[f"disp_{ci}"], float)[keep]
    summ = llc_summaries(np.asarray(tr[f"llc_{ci}"], float)[keep], c.llc_schedule.last)
    r = fit_runs(steps, disp, c.fit, [f"c{ci}/s{s}" for s in m["seed"]], llc=summ.llc_final,
                 llc_se=summ.llc_final_se, llc_df=summ.llc_final_df, llc_mean=summ.llc_mean, llc_mean_se=summ.llc_mean_se, positions=np.flatnonzero(keep))
    r = pd.concat([m, r], axis=1)
    r["R_final"] = disp[:, -1]
    p = predict_late_displacement(steps, disp, c.h7.split, n_grid=c.fit.n_grid)
    r["R_pred_final"], r["rel_err_final"], r["r2_heldout"] = p.R_pred_final, p.rel_err_final, p.r2_heldout
    return r


def _h6(fitted: pd.DataFrame, n_boot: int, level: float, seed: int):
    """H6 within vanilla SGD (fallback: every SGD-family run, momentum as a further covariate), and
    the same contrast within Adam runs when there are enough of them."""
    from ..stats.ablation import SlopeContrast, h6_contrast

    van = fitted[(fitted["family"] == "SGD") & (fitted["momentum"] == 0)]
    xs, scope = ["log10_lr", "log2_batch"], "vanilla SGD runs"
    if len(van) < 6 or van["lr"].nunique() < 2:
        van = fitted[fitted["family"] == "SGD"]
        xs, scope = ["log10_lr", "log2_batch", "momentum"], "all SGD-family runs (momentum as a covariate)"
    xs = [x for x in xs if van[x].nunique() > 1] if len(van) else xs
    if len(van) and "log10_lr" in xs:
        h6 = h6_contrast(van, xs, n_boot, level, seed, scope=scope)
    else:
        h6 = SlopeContrast(n=int(len(van)), covariates=xs, level=level, scope=scope,
                           note="no learning-rate variation")
    adam = fitted[fitted["family"] == "Adam"]
    h6_adam = None
    if len(adam) >= 6 and adam["lr"].nunique() > 1:
        xa = [x for x in ["log10_lr", "log2_batch"] if adam[x].nunique() > 1]
        h6_adam = h6_contrast(adam, xa, n_boot, level, seed + 1, scope="Adam runs")
    return h6, h6_adam


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    """Per run: final λ, λ̄, eq-17 fits, d_s; the App-H table; correlations per optimizer family;
    H6; H1-H3 (whole range) and H7 per family."""
    from ..stats.ablation import test_h6
    from ..stats.regression import cross_run_regressions
    from ..stats.summaries import summarize

    tr, c = ctx["train"], ctx.config
    level, seed, n_boot = c.fit.level, c.analysis.seed, c.analysis.n_boot
    meta = pd.DataFrame(tr["runs"])
    runs = pd.concat([_cell_runs(tr, c, ci, meta) for ci in sorted(meta["cell"].unique())], ignore_index=True)
    runs["log10_lr"] = np.log10(runs["lr"].astype(float))
    runs["log2_batch"] = np.log2(runs["batch_size"].astype(float))
    notes = []
    n_div = int(meta["diverged"].astype(bool).sum())
    if n_div:
        notes.append(f"{n_div} of {len(meta)} runs diverged; left out of the analysis")
    bad = runs["fit_error"] != ""
    if bad.any():
        notes.append(f"{int(bad.sum())} runs could not be fitted ({runs.loc[bad, 'fit_error'].iloc[0]}); "
                     f"left out of the analysis")
    fitted = runs[~bad].reset_index(drop=True)

    def summ(v):
        return summarize(np.asarray(v, float), level, seed, n_boot=n_boot)

    app_h = [{"optimizer": lab, "n": int(len(g)), "d_s": summ(g["d_s"]), "llc": summ(g["llc"]),
              "test_acc": summ(100 * g["test_acc"]), "late_d_s": summ(g["late_d_s"]), "alpha": summ(g["alpha"]),
              "n_llc_nonpositive": int((~(g["llc"] > 0)).sum()), "paper": PAPER_APP_H.get(lab)}
             for lab, g in fitted.groupby("label", sort=False)]
    corr = {}
    for fam, g in fitted.groupby("family", sort=False):  # Holm within each family
        pairs = [("d_s", "log10_lr"), ("llc", "log10_lr"), ("d_s", "log2_batch"), ("llc", "log2_batch"),
                 ("test_acc", "d_s"), ("test_acc", "llc"), ("R_final", "llc")]
        if fam == "SGD" and g["momentum"].nunique() > 1:
            pairs += [("d_s", "momentum"), ("llc", "momentum")]
        corr[fam] = cross_run_regressions(g, pairs, n_boot=n_boot, level=level, seed=seed)
    h6, h6_adam = _h6(fitted, n_boot, level, seed)
    hyps = [test_h6(h6)]
    for fam, g in fitted.groupby("family", sort=False):
        g = g.reset_index(drop=True)
        hyps += test_h1_h3(g, level, seed, n_boot, suffix=fam, windows=("whole",))[0]
        hyps += h7_tests(g["R_final"], g["llc"], g["R_pred_final"], g["rel_err_final"],
                         int(g["R_pred_final"].isna().sum()), c.h7.margin, level, n_boot, seed, suffix=fam)[0]
    cell_means = fitted.groupby(["label", "batch_size", "lr"], sort=False)[["d_s", "llc"]].mean().reset_index()
    return {"runs": fitted, "app_h": app_h, "correlations": corr, "h6": h6, "h6_adam": h6_adam, "hypotheses": hyps,
            "cell_means": cell_means,
            "notes": notes, "n_runs": int(len(meta)), "n_fitted": int(len(fitted)), "cells": grid_cells(c.grid)}


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} runs diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", description="train every optimizer x lr x batch cell with λ̂ along training",
          shard=Sharding(train_cells, train_shard, train_merge)),
    Stage("analysis", stage_analysis, "d_s, λ per run; App-H table; correlations; H6; H1-H3, H7",
          skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.ablations import write_report as write

    return write(ctx)
