"""ablations: paper App H (Figs 7-13, 16-17, the App-H table; docs/methods.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    one batched ensemble per cell of optimizer (SGD with each momentum in
                ``grid.momenta``; Adam) x learning rate x batch size, λ̂ every ``llc_schedule.every`` steps
2. ``analysis`` per run: final λ, λ̄, eq-17 fits and d_s = 2λα (whole range = the paper's d_s);
                the App-H table (d_s and λ mean/std, test accuracy per optimizer); correlations of
                d_s and λ with lr, batch size, momentum and test accuracy (OLS HC3, Spearman with
                bootstrap CI, Holm within each optimizer family); H6; H1-H3 and H7 per family

H6 (d_s tracks the learning rate much more than λ does; App H, Fig 11). Within vanilla SGD runs,
standardized partial slopes from OLS with HC3 errors,

    z(y) = β_lr z(log10 lr) + β_B z(log2 B) + ε,   y ∈ {d_s, λ},

(z = standardized over the runs), and the contrast Δ = |β_lr(d_s)| − |β_lr(λ)| with a paired
percentile bootstrap over runs; one-sided bootstrap p = P*(Δ ≤ 0). Supported when the lower
bound of Δ is > 0.

Report: :func:`sgdbayes.reporting.diffusion_reports.write_ablations`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_float, check_int, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from ._diffusion_common import fit_runs, h7_prediction, llc_summaries, stats_of, train_cell
from ._ensemble_arrays import divergence_summary
from .sections import BootstrapConfig, FitConfig, H7Config, LLCSchedule, MNISTFamilyData, ModelConfig, ReportConfig
from .spectral_dimension import diffusion_hypotheses, h7_rows

__all__ = ["CONFIG", "AblationsConfig", "GridConfig", "STAGES", "write_report", "grid_cells", "h6_contrast",
           "standardized_slopes", "PAPER_APP_H"]


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
                   device: str):
    from ..engine import EnsembleConfig

    steps = grid.steps or grid.epochs * (n_train // cell["batch_size"])
    return EnsembleConfig(
        dataset=data_cfg.name, dataset_options=data_cfg.dataset_options(), widths=model.widths(),
        optimizer=cell["optimizer"], lr=cell["lr"], momentum=cell["momentum"] if cell["optimizer"] == "sgd" else 0.0,
        batch_size=cell["batch_size"], steps=int(steps), seeds=tuple(range(grid.seed_offset, grid.seed_offset + grid.seeds)),
        record_every=grid.record_every, record_log_points=100, device=device, progress=False,
    )


def stage_train(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    data = c.data.load(ctx.device)
    S, off = c.grid.seeds, c.grid.seed_offset
    rows: dict[str, list] = {k: [] for k in ("cell", "seed", "optimizer", "label", "family", "momentum", "lr",
                                             "batch_size", "steps_total", "test_acc", "train_acc", "diverged",
                                             "diverged_step")}
    curves, llcs, grids, cell_wall = [], [], [], []
    for ci, cell in enumerate(grid_cells(c.grid)):
        ecfg = _cell_ensemble(c.data, c.model, c.grid, cell, data.n_train, ctx.device)
        res = train_cell(data, ecfg, c.llc, c.llc_schedule.every)
        for k in range(S):
            rows["cell"].append(ci); rows["seed"].append(off + k)
            for key in ("optimizer", "label", "family", "momentum", "lr", "batch_size"):
                rows[key].append(cell[key])
            rows["steps_total"].append(int(ecfg.steps))
            rows["test_acc"].append(float(res["final_test_acc"][k])); rows["train_acc"].append(float(res["final_train_acc"][k]))
            rows["diverged"].append(bool(res["diverged"][k])); rows["diverged_step"].append(int(res["diverged_step"][k]))
        curves.append(res["displacement"]); llcs.append(res["llc"]); grids.append(res["steps"])
        cell_wall.append(res["wall_s"])
        ctx.log(f"    cell {ci}: {cell['label']} lr {cell['lr']:g} B {cell['batch_size']}: {ecfg.steps} steps, test acc "
                f"{np.nanmean(res['final_test_acc']):.3f}, {int(res['diverged'].sum())} diverged, {res['wall_s']:.1f} s")
    out: dict[str, Any] = {"runs": rows, "cell_wall_s": np.asarray(cell_wall), "nbeta": float(res["nbeta"]),
                           "n_params": int(res["n_params"]), "widths": res["widths"], "n_train": data.n_train,
                           "n_test": int(data.x_test.shape[0]), "n_features": data.n_features,
                           "data_meta": {k: v for k, v in data.meta.items() if isinstance(v, (int, float, str, bool))},
                           "divergence": divergence_summary(rows["diverged"], rows["diverged_step"],
                                                            [f"c{ci}/s{s}" for ci, s in zip(rows["cell"], rows["seed"])])}
    for i, (g, d, l) in enumerate(zip(grids, curves, llcs)):
        out[f"steps_{i}"], out[f"disp_{i}"], out[f"llc_{i}"] = g, d, l
    return out


def standardized_slopes(Y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Standardized partial slopes: OLS of z(y) on the z-scored columns of ``X`` (z over the rows).

    ``Y`` is ``[n]`` or ``[n, m]`` (m responses fitted at once); returns ``[p]`` or ``[p, m]``."""
    Xz = (X - X.mean(0)) / X.std(0, ddof=1)
    Yz = (Y - Y.mean(0)) / Y.std(0, ddof=1)
    A = np.column_stack([np.ones(len(Xz)), Xz])
    return np.linalg.lstsq(A, Yz, rcond=None)[0][1:]


def h6_contrast(df: pd.DataFrame, xs: list[str], n_boot: int, level: float, seed: int) -> dict:
    """H6: Δ = |β(d_s, log10 lr)| − |β(λ, log10 lr)| (standardized partial slopes given ``xs``) with a
    paired percentile bootstrap over runs; also each β with its HC3 interval (statsmodels)."""
    import statsmodels.api as sm

    sub = df[["d_s", "llc", *xs]].dropna()
    n = len(sub)
    out: dict[str, Any] = {"n": n, "covariates": xs}
    if n < len(xs) + 3 or any(sub[c].std() == 0 for c in ["d_s", "llc", *xs]):
        out["note"] = f"not estimable: {n} runs or a constant column"
        return out
    for y in ("d_s", "llc"):
        Z = (sub - sub.mean()) / sub.std(ddof=1)
        res = sm.OLS(Z[y].to_numpy(), sm.add_constant(Z[xs].to_numpy())).fit(cov_type="HC3", use_t=True)
        lo, hi = res.conf_int(1 - level)[1]
        out[f"beta_{y}"] = float(res.params[1]); out[f"beta_{y}_ci"] = [float(lo), float(hi)]
        out[f"beta_{y}_p"] = float(res.pvalues[1])
    delta = abs(out["beta_d_s"]) - abs(out["beta_llc"])
    rng = np.random.default_rng(seed)
    X = sub[xs].to_numpy(float)
    Y = sub[["d_s", "llc"]].to_numpy(float)
    bs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        Xb, Yb = X[idx], Y[idx]
        if (Xb.std(0) == 0).any() or (Yb.std(0) == 0).any():
            continue
        b = standardized_slopes(Yb, Xb)[0]  # slopes on the first covariate (log10 lr) for d_s and λ
        bs.append(abs(b[0]) - abs(b[1]))
    bs = np.asarray(bs)
    a = (1 - level) / 2
    out.update(delta=float(delta), delta_ci=[float(np.quantile(bs, a)), float(np.quantile(bs, 1 - a))],
               p=float((np.sum(bs <= 0) + 1) / (bs.size + 1)), n_boot_used=int(bs.size))
    return out


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    from ..stats.regression import cross_run_regressions

    tr = ctx["train"]
    c = ctx.config
    fs = c.fit
    level, seed, n_boot, last = fs.level, c.analysis.seed, c.analysis.n_boot, c.llc_schedule.last
    meta = pd.DataFrame(tr["runs"])
    parts = []
    for ci in sorted(meta["cell"].unique()):
        m = meta[meta["cell"] == ci].reset_index(drop=True)
        keep = ~m["diverged"].to_numpy(bool)  # diverged runs are left out of every fit
        m = m[keep].drop(columns=["diverged_step"]).reset_index(drop=True)
        steps = np.asarray(tr[f"steps_{ci}"], float)
        disp = np.asarray(tr[f"disp_{ci}"], float)[keep]
        summ = llc_summaries(np.asarray(tr[f"llc_{ci}"], float)[keep], last)
        r = fit_runs(steps, disp, fs, [f"c{ci}/s{s}" for s in m["seed"]], llc=summ["llc_final"],
                     llc_se=summ["llc_final_se"], llc_mean=summ["llc_mean"], llc_mean_se=summ["llc_mean_se"],
                     positions=np.flatnonzero(keep))
        r = pd.concat([m, r], axis=1)
        r["R_final"] = disp[:, -1]
        p = h7_prediction(steps, disp, c.h7.split, fs)
        r["R_pred_final"], r["rel_err_final"], r["r2_heldout"] = p["R_pred_final"], p["rel_err_final"], p["r2_heldout"]
        parts.append(r)
    runs = pd.concat(parts, ignore_index=True)
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

    # -- App-H table per optimizer label
    app_h = []
    for lab, g in fitted.groupby("label", sort=False):
        app_h.append({"optimizer": lab, "n": int(len(g)), "d_s": stats_of(g["d_s"], level, seed),
                      "llc": stats_of(g["llc"], level, seed), "test_acc": stats_of(100 * g["test_acc"], level, seed),
                      "late_d_s": stats_of(g["late_d_s"], level, seed), "alpha": stats_of(g["alpha"], level, seed),
                      "n_llc_nonpositive": int((~(g["llc"] > 0)).sum()),
                      "paper": PAPER_APP_H.get(lab)})
    # -- correlations per family (Holm within each family)
    corr = {}
    for fam, g in fitted.groupby("family", sort=False):
        pairs = [("d_s", "log10_lr"), ("llc", "log10_lr"), ("d_s", "log2_batch"), ("llc", "log2_batch"),
                 ("test_acc", "d_s"), ("test_acc", "llc"), ("R_final", "llc")]
        if fam == "SGD" and g["momentum"].nunique() > 1:
            pairs += [("d_s", "momentum"), ("llc", "momentum")]
        corr[fam] = cross_run_regressions(g, pairs, n_boot=n_boot, level=level, seed=seed).table.to_dict(orient="list")
    # -- H6 within vanilla SGD (fallback: SGD family with momentum as a covariate)
    van = fitted[(fitted["family"] == "SGD") & (fitted["momentum"] == 0)]
    xs = ["log10_lr", "log2_batch"]
    h6_scope = "vanilla SGD runs"
    if len(van) < 6 or van["lr"].nunique() < 2:
        van = fitted[fitted["family"] == "SGD"]
        xs = ["log10_lr", "log2_batch", "momentum"]
        h6_scope = "all SGD-family runs (momentum as a covariate)"
    xs = [x for x in xs if van[x].nunique() > 1] if len(van) else xs
    h6 = h6_contrast(van, xs, n_boot, level, seed) if len(van) and "log10_lr" in xs else {"n": int(len(van)), "note": "no learning-rate variation"}
    h6["scope"] = h6_scope
    h6_adam = None
    adam = fitted[fitted["family"] == "Adam"]
    if len(adam) >= 6 and adam["lr"].nunique() > 1:
        xa = [x for x in ["log10_lr", "log2_batch"] if adam[x].nunique() > 1]
        h6_adam = h6_contrast(adam, xa, n_boot, level, seed + 1)
    if "delta" in h6:
        v = ("supported" if h6["delta_ci"][0] > 0 else
             "contradicted (λ tracks lr more)" if h6["delta_ci"][1] < 0 else "not supported (interval includes 0)")
        hyp6 = {"id": "H6", "claim": "d_s tracks the learning rate much more than λ does", "window": "whole (paper's d_s)",
                "statistic": "|β_std(d_s, log lr)| − |β_std(λ, log lr)|", "value": h6["delta"], "ci": h6["delta_ci"],
                "pvalue": h6["p"], "p_label": "paired bootstrap, one-sided H0: Δ ≤ 0", "n_tested": h6["n"], "n_excluded": 0,
                "n_support_holm": None, "share_support_holm": None, "share_upper_below": None, "verdict": v, "notes": []}
    else:
        hyp6 = {"id": "H6", "claim": "d_s tracks the learning rate much more than λ does", "window": "—",
                "statistic": "|β_std(d_s, log lr)| − |β_std(λ, log lr)|", "value": None, "ci": [None, None],
                "pvalue": None, "p_label": "—", "n_tested": h6.get("n", 0), "n_excluded": 0, "n_support_holm": None,
                "share_support_holm": None, "share_upper_below": None,
                "verdict": f"untestable: {h6.get('note', '')}", "notes": []}
    hyps = [hyp6]
    for fam, g in fitted.groupby("family", sort=False):
        rows, _ = diffusion_hypotheses(g.reset_index(drop=True), level, seed, fam)
        hyps += [h for h in rows if h["window"] == "whole" or h["id"].startswith("H1")]
        pred = {"R_true_final": g["R_final"].to_numpy(float), "R_pred_final": g["R_pred_final"].to_numpy(float),
                "rel_err_final": g["rel_err_final"].to_numpy(float), "n_failed": int(g["R_pred_final"].isna().sum())}
        r7, _ = h7_rows(g.reset_index(drop=True), pred, c.h7.margin, level, n_boot, seed)
        for h in r7:
            h["id"] = f"H7 [{fam}]"
        hyps += r7
    return {"runs": fitted.to_dict(orient="list"), "app_h": app_h, "correlations": corr, "h6": h6, "h6_adam": h6_adam,
            "hypotheses": hyps, "notes": notes, "n_runs": int(len(meta)), "n_fitted": int(len(fitted)),
            "cells": grid_cells(c.grid)}


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} runs diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", stage_train, "train every optimizer x lr x batch cell with λ̂ along training"),
    Stage("analysis", stage_analysis, "d_s, λ per run; App-H table; correlations; H6; H1-H3, H7",
          skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.diffusion_reports import write_ablations

    return write_ablations(ctx)
