"""grokking: paper App F.2, Figs 5-6 (docs/grokking.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    a seed ensemble (one batched computation) of an MLP on modular arithmetic
                (generated in-process), Adam with L2 weight decay and small batches into the
                grokking regime: displacement R(t) and the path increments ‖Δw‖ every
                ``train.record_every`` steps, full train/test accuracy and λ̂ every
                ``llc_schedule.every`` steps (engine hooks)
2. ``analysis`` after ``jumps.start_step`` (past the initial transient): change points (PELT,
                :mod:`sgdbayes.stats.jumps`) in each run's test accuracy, λ̂ and weight speed
                (‖Δw‖ per step) on the common λ̂ grid; permutation tests that the jumps coincide
                (H8 variants, window ``jumps.window`` grid points); Hill tail index of the
                increments ‖Δw‖ (H9, the paper's Lévy remark); the step each run memorizes and groks

Report: :mod:`sgdbayes.reporting.grokking`. This study declares no sharding (one small ensemble).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validation import check_choice, check_float, check_int, check_level, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from ..stats.jumps import change_points, jump_sizes, test_heavy_tail, test_jump_alignment
from ._ensemble_arrays import divergence_summary, ensemble_arrays
from ._diffusion_common import llc_training_hook
from .sections import CurvesReport, LLCSchedule, ModelConfig

__all__ = ["CONFIG", "GrokkingConfig", "ModularData", "GrokTrain", "JumpConfig", "STAGES", "write_report",
           "first_step_at"]


@dataclass(frozen=True)
class ModularData:
    """``[data]``: all pairs (a, b) mod ``p`` labelled (a op b) mod p (:func:`sgdbayes.data.builtin.modular`)."""

    name: str = "modular"
    p: int = 23
    op: str = "add"
    train_fraction: float = 0.8
    seed: int = 0

    def __post_init__(self):
        check_choice("name", self.name, ("modular",))
        check_int("p", self.p, 2)
        check_choice("op", self.op, ("add", "sub", "mul"))
        check_float("train_fraction", self.train_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
        check_seed(self.seed, "seed")

    def dataset_options(self) -> dict:
        return dict(p=self.p, op=self.op, train_fraction=self.train_fraction, seed=self.seed)

    @property
    def n_train(self) -> int:
        return int(round(self.train_fraction * self.p * self.p))


@dataclass(frozen=True)
class GrokTrain:
    """``[train]``: Adam (L2 weight decay added to the gradient, as torch.optim.Adam) on small batches."""

    seeds: int = 8
    seed_offset: int = 0
    optimizer: str = "adam"
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 32
    steps: int = 4000
    record_every: int = 10

    def __post_init__(self):
        check_int("seeds", self.seeds, 1)
        check_seed(self.seed_offset, "seed_offset")
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("batch_size", self.batch_size, 1)
        check_int("steps", self.steps, 1)
        check_int("record_every", self.record_every, 1)

    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seed_offset, self.seed_offset + self.seeds))


@dataclass(frozen=True)
class JumpConfig:
    """``[jumps]``: the first step analysed (``start_step``: past the initial transient), change-point penalty (× log n, noise units), minimum segment, alignment window
    (grid points of ``llc_schedule.every`` steps), permutations, bootstrap, tail fraction, and the
    test-accuracy level that counts as grokked."""

    start_step: int = 400
    penalty: float = 3.0
    min_size: int = 2
    window: int = 2
    n_perm: int = 1999
    n_boot: int = 999
    tail_fraction: float = 0.05
    grok_level: float = 0.9
    memorize_level: float = 0.99
    level: float = 0.95
    seed: int = 0

    def __post_init__(self):
        check_int("start_step", self.start_step, 0)
        check_float("penalty", self.penalty, 0.0, strict_min=True)
        check_int("min_size", self.min_size, 1)
        check_int("window", self.window, 0)
        check_int("n_perm", self.n_perm, 1)
        check_int("n_boot", self.n_boot, 1)
        check_float("tail_fraction", self.tail_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
        check_float("grok_level", self.grok_level, 0.0, 1.0)
        check_float("memorize_level", self.memorize_level, 0.0, 1.0)
        check_level(self.level)
        check_seed(self.seed, "seed")


@dataclass(frozen=True)
class GrokkingConfig(StudyConfig):
    """The sections of ``studies/grokking.toml``."""

    data: ModularData = field(default_factory=ModularData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=(256,)))
    train: GrokTrain = field(default_factory=GrokTrain)
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    llc_schedule: LLCSchedule = field(default_factory=lambda: LLCSchedule(every=50))
    jumps: JumpConfig = field(default_factory=JumpConfig)
    report: CurvesReport = field(default_factory=CurvesReport)

    def __post_init__(self):
        if self.train.batch_size > self.data.n_train:
            raise ValueError(f"train.batch_size = {self.train.batch_size} exceeds the {self.data.n_train} training "
                             f"pairs (data.p, data.train_fraction)")
        if self.llc_schedule.every * (2 * self.jumps.min_size) > self.train.steps - self.jumps.start_step:
            raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} leaves fewer than "
                             f"{2 * self.jumps.min_size} grid points between jumps.start_step = "
                             f"{self.jumps.start_step} and train.steps = {self.train.steps}")
        if self.llc_schedule.every % self.train.record_every:
            raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} must be a multiple of "
                             f"train.record_every = {self.train.record_every}")


CONFIG = GrokkingConfig


def first_step_at(steps: np.ndarray, values: np.ndarray, level: float) -> np.ndarray:
    """Per row of ``values`` [K, E], the first of ``steps`` with value >= ``level`` (NaN if never)."""
    hit = np.asarray(values) >= level
    return np.where(hit.any(1), np.asarray(steps, float)[hit.argmax(1)], np.nan)


# --------------------------------------------------------------------------- stage 1

def _accuracy_hook(every: int, data):
    from ..engine import Hook
    from ..engine.train import evaluate

    def fn(state):
        _, tr = evaluate(state.spec, state.w, data.x_train, data.y_train, state.model_state)
        loss, te = evaluate(state.spec, state.w, data.x_test, data.y_test, state.model_state)
        return {"train_acc": tr, "test_acc": te, "test_loss": loss}

    return Hook(every=every, fn=fn, name="acc")


def _step_length_hook(every: int):
    """‖w_t − w_{t−every}‖₂ per seed every ``every`` steps (the path's increments; H9). Chunks of
    seeds keep their own previous weights (keyed by their seed ids)."""
    import torch

    from ..engine import Hook

    prev: dict = {}

    def fn(state):
        key = tuple(int(s) for s in state.seeds)
        w = state.w.to(torch.float64)
        last = prev.get(key)
        last = state.w0.to(torch.float64) if last is None else last
        prev[key] = w.clone()
        return {"step_length": torch.linalg.vector_norm(w - last, dim=1)}

    return Hook(every=every, fn=fn, name="path")


def _wide(df, values: str, seeds) -> tuple[np.ndarray, np.ndarray]:
    w = df.pivot(index="seed", columns="step", values=values).reindex(index=list(seeds))
    return np.asarray(w.columns, np.int64), w.to_numpy(float)


def stage_train(ctx: StageContext) -> dict[str, Any]:
    from ..data import load_dataset
    from ..engine import EnsembleConfig, train_ensemble

    c = ctx.config
    data = load_dataset("modular", **c.data.dataset_options(), device=ctx.device)
    every = c.llc_schedule.every
    ecfg = EnsembleConfig(widths=c.model.widths(), optimizer=c.train.optimizer, lr=c.train.lr,
                          weight_decay=c.train.weight_decay, batch_size=c.train.batch_size, steps=c.train.steps,
                          seeds=c.train.seed_list(), record_every=c.train.record_every, record_log_points=0,
                          device=ctx.device, progress=False)
    hooks = [_accuracy_hook(every, data), _step_length_hook(c.train.record_every), llc_training_hook(c.llc, every)[0]]
    res = train_ensemble(ecfg, data=data, hooks=hooks)
    arrays = ensemble_arrays(res)
    acc = res.hooks["acc"]
    eval_steps, train_acc = _wide(acc, "train_acc", res.seeds)
    _, test_acc = _wide(acc, "test_acc", res.seeds)
    _, test_loss = _wide(acc, "test_loss", res.seeds)
    llc_steps, llc = _wide(res.hooks["llc"], "llc", res.seeds)
    path_steps, step_length = _wide(res.hooks["path"], "step_length", res.seeds)
    ctx.log(f"    {len(res.seeds)} runs, final train acc {np.nanmean(train_acc[:, -1]):.3f}, test acc "
            f"{np.nanmean(test_acc[:, -1]):.3f}, {int(arrays['diverged'].sum())} diverged")
    return {**arrays, "eval_steps": eval_steps, "train_acc": train_acc, "test_acc": test_acc, "test_loss": test_loss,
            "llc_steps": llc_steps, "llc": llc,
            "path_steps": path_steps, "step_length": step_length, "nbeta": float(c.llc.resolve_nbeta(data.n_train)),
            "n_train": int(data.n_train), "n_test": int(data.x_test.shape[0]),
            "divergence": divergence_summary(arrays["diverged"], arrays["diverged_step"],
                                             [f"seed {s}" for s in arrays["seeds"]]),
            "engine_s": float(res.meta.get("elapsed_s", float("nan")))}


# --------------------------------------------------------------------------- stage 2

def _series(tr: dict, ok: np.ndarray, start_step: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The three series of each kept run on the λ̂ grid after ``start_step``: test accuracy, λ̂, and
    the weights' speed (path length ‖Δw‖ per step, averaged over the grid interval)."""
    grid_all = np.asarray(tr["llc_steps"], np.int64)
    keep = grid_all > start_step
    grid = grid_all[keep]
    path_steps = np.asarray(tr["path_steps"], np.int64)
    L = np.asarray(tr["step_length"], float)[ok]
    interval = np.searchsorted(grid_all, path_steps)                  # grid interval of each path increment
    speed = np.stack([L[:, interval == i].sum(1) for i in range(grid_all.size)], 1)
    speed /= np.diff(np.concatenate([[0], grid_all])).astype(float)
    ev = np.searchsorted(np.asarray(tr["eval_steps"], np.int64), grid)
    return grid, {"test_acc": np.asarray(tr["test_acc"], float)[ok][:, ev],
                  "llc": np.asarray(tr["llc"], float)[ok][:, keep], "weights": speed[:, keep]}


def _jumps(series: dict[str, np.ndarray], jc: JumpConfig) -> dict[str, list]:
    out = {}
    for name, Y in series.items():
        cps = [change_points(y, jc.penalty, jc.min_size) if np.isfinite(y).all() else np.zeros(0, np.int64)
               for y in Y]
        out[name] = cps
        out[name + "_sizes"] = [jump_sizes(y, c) if np.isfinite(y).all() else np.zeros(0) for y, c in zip(Y, cps)]
    return out


PAIRS = [("H8-llc", "test_acc", "llc", "jumps in test accuracy coincide with jumps in the LLC (Figs 5b, 6)"),
         ("H8-weights", "test_acc", "weights", "jumps in test accuracy coincide with jumps in the weights (Figs 5a, 6)"),
         ("H8-llc-weights", "weights", "llc", "jumps in the weights coincide with jumps in the LLC (Fig 5)")]


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    tr, jc = ctx["train"], ctx.config.jumps
    ok = ~np.asarray(tr["diverged"], bool)
    grid, series = _series(tr, ok, jc.start_step)
    jumps = _jumps(series, jc)
    rng = np.random.default_rng(jc.seed)
    hyps = [test_jump_alignment(jumps[a], jumps[b], grid.size, jc.window, id=hid, claim=claim, n_perm=jc.n_perm,
                                n_boot=jc.n_boot, level=jc.level, seed=rng, names=(a, b))
            for hid, a, b, claim in PAIRS]
    after = np.asarray(tr["path_steps"], np.int64) > jc.start_step
    incr = list(np.asarray(tr["step_length"], float)[ok][:, after])
    hyps.append(test_heavy_tail(incr, id="H9", claim="the weights' increments are heavy-tailed (tail index < 2, "
                                "Lévy-like; App F.2)",
                                what=f"‖Δw‖ over {ctx.config.train.record_every} steps after step {jc.start_step}",
                                tail_fraction=jc.tail_fraction, n_boot=jc.n_boot, level=jc.level, seed=rng))
    eval_steps = np.asarray(tr["eval_steps"], float)
    grok = first_step_at(eval_steps, np.asarray(tr["test_acc"], float)[ok], jc.grok_level)
    memo = first_step_at(eval_steps, np.asarray(tr["train_acc"], float)[ok], jc.memorize_level)
    seeds = np.asarray(tr["seeds"])[ok]
    per_run = [{"seed": int(s), "memorize_step": float(m), "grok_step": float(g), "delay": float(g - m),
                "final_train_acc": float(np.asarray(tr["train_acc"])[ok][i, -1]),
                "final_test_acc": float(np.asarray(tr["test_acc"])[ok][i, -1]),
                **{f"{k}_jump_steps": [int(grid[j]) for j in jumps[k][i]] for k in series},
                **{f"{k}_jump_sizes": [float(v) for v in jumps[k + "_sizes"][i]] for k in series}}
               for i, (s, m, g) in enumerate(zip(seeds, memo, grok))]
    n_grok = int(np.isfinite(grok).sum())
    summary = {"n_runs": int(ok.size), "n_kept": int(ok.sum()), "n_grokked": n_grok,
               "grok_step_median": float(np.nanmedian(grok)) if n_grok else float("nan"),
               "memorize_step_median": float(np.nanmedian(memo)) if np.isfinite(memo).any() else float("nan"),
               "grok_step_range": [float(np.nanmin(grok)), float(np.nanmax(grok))] if n_grok else [np.nan, np.nan],
               "grid_every": int(ctx.config.llc_schedule.every), "n_grid": int(grid.size),
               "n_jumps": {k: int(sum(len(c) for c in jumps[k])) for k in series}}
    mean_curves = {"grid": grid, **{f"mean_{k}": np.nanmean(v, 0) for k, v in series.items()},
                   "mean_train_acc": np.nanmean(np.asarray(tr["train_acc"], float)[ok], 0)}
    return {"hypotheses": hyps, "per_run": per_run, "summary": summary, "curves": mean_curves,
            "series": {k: v for k, v in series.items()}}


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} seeds diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", stage_train, "train the modular-arithmetic ensemble with accuracy and LLC hooks"),
    Stage("analysis", stage_analysis, "change points, jump alignment (H8), tail index (H9), grokking step",
          skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.grokking import write_report as write

    return write(ctx)
