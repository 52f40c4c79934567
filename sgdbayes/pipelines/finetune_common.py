"""What the image and language-model variants of the finetune study share (docs/finetune.md): the
Adam stopping rule, the epoch hook that snapshots weights for it, the eq-17 fit of a continued
phase (α, r², d_s = 2 λ α) and its two tests, by the one rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .._validation import check_float, check_int
from ..stats.summaries import llc_summaries, summarize
from ._diffusion_common import fit_runs
from .sections import BootstrapConfig, FitConfig

__all__ = ["Tasks", "AdamPhase", "SGDPhase", "adam_stop_epoch", "epoch_hook", "phase_fits", "phase_tests", "stop_weights"]


@dataclass(frozen=True)
class Tasks:
    """``[finetune]``: which variants run -- ``"image"`` (Table 1's vision rows, App G.2: a frozen
    backbone, a new head, Adam then SGD) and / or ``"lm"`` (Table 1's language rows and Table 4,
    App G.3: an already converged LM trained on). ``local_weights``: the variants must start from local
    weights (``backbone.weights`` / ``lm.weights``; the ``paper`` presets), so a run without them is
    an error instead of a silent in-study pretraining."""

    tasks: tuple[Literal["image", "lm"], ...] = ("image", "lm")
    local_weights: bool = False

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks must name at least one of 'image', 'lm'")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a variant twice: {list(self.tasks)}")


@dataclass(frozen=True)
class AdamPhase:
    """``[adam]``: the new head with Adam (App G.2: lr 1e-3, wd 1e-4, batch 128, <= 20 epochs, stop when
    the loss improves by < 1e-4 over 3 epochs); ``[lm_pretrain]``: the same rule pretrains the LM."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 20
    tol: float = 1e-4
    patience: int = 3

    def __post_init__(self):
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_epochs", self.max_epochs, 1)
        check_float("tol", self.tol, 0.0)
        check_int("patience", self.patience, 1)


@dataclass(frozen=True)
class SGDPhase:
    """``[sgd]``: plain SGD from each seed's Adam stopping point (App G.2: lr 1e-5, 2000 steps, batch 128);
    ``[lm_sgd]``: the LM's continued training (App G.3: lr 1e-5, 1000 steps, batch 16)."""

    seeds: int = 8
    lr: float = 1e-5
    steps: int = 2000
    batch_size: int = 128
    record_every: int = 10

    def __post_init__(self):
        check_int("seeds", self.seeds, 1)
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("record_every", self.record_every, 1)


def adam_stop_epoch(losses: np.ndarray, tol: float, patience: int) -> np.ndarray:
    """Per row of full-training-loss curves ``[K, E]`` (after epochs 1..E), the first epoch e > patience
    with loss[e - patience] - loss[e] < tol (1-based), else E."""
    L = np.asarray(losses, float)
    K, E = L.shape
    out = np.full(K, E, np.int64)
    for e in range(patience, E):
        stop = (L[:, e - patience] - L[:, e] < tol) & (out == E)
        out[stop] = e + 1
    return out


def epoch_hook(every: int, data):
    """Engine hook: the full training loss after every epoch (``every`` steps) and a copy of each
    seed's weights (``snaps[(seed, step)]``), to restart from the epoch the stopping rule picks."""
    from ..engine import Hook
    from ..engine.train import evaluate

    snaps: dict = {}

    def fn(state):
        loss, _ = evaluate(state.spec, state.w, data.x_train, data.y_train, state.model_state)
        for row, s in enumerate(state.seeds):
            snaps[(int(s), int(state.step))] = state.w[row].detach().cpu().clone()
        return {"loss": loss}

    return Hook(every=every, fn=fn, name="epoch"), snaps


def stop_weights(res, snaps: dict, seeds, spe: int, tol: float, patience: int):
    """``(loss [K, E], stop_epoch [K], stop_step [K], w_stop [K, P])`` of an Adam run with
    :func:`epoch_hook`: each seed's weights at the epoch :func:`adam_stop_epoch` picks."""
    import torch

    loss = res.hooks["epoch"].pivot(index="seed", columns="step", values="loss").reindex(index=list(seeds))
    stop_epoch = adam_stop_epoch(loss.to_numpy(float), tol, patience)
    stop_step = stop_epoch * spe
    w_stop = torch.stack([snaps[(int(s), int(t))] for s, t in zip(seeds, stop_step)])
    return loss.to_numpy(float), stop_epoch, stop_step, w_stop


def phase_fits(steps, R, llc, seeds, last: int, fs: FitConfig, an: BootstrapConfig) -> tuple[Any, dict, Any]:
    """Eq 17 on a continued phase, per seed: ``(runs, summary, fitted runs)``; λ = mean of the last
    ``last`` estimates (``llc [K, E]``), d_s = 2 λ α with its delta-method interval; the summary holds
    the median over seeds of α, r², λ and d_s with bootstrap intervals."""
    summ = llc_summaries(llc, last)
    runs = fit_runs(np.asarray(steps, float), np.asarray(R, float), fs, [f"seed {int(s)}" for s in seeds],
                    llc=summ.llc_final, llc_se=summ.llc_final_se, llc_df=summ.llc_final_df)
    fitted = runs[runs["fit_error"] == ""]

    def s(col):
        return summarize(fitted[col].to_numpy(float), fs.level, an.seed, n_boot=an.n_boot)

    summary = {"alpha": s("alpha"), "r2": s("r2"), "llc": s("llc"), "d_s": s("d_s"),
               "n_runs": int(len(runs)), "n_fitted": int(len(fitted)),
               "fit_errors": sorted(set(runs.loc[runs["fit_error"] != "", "fit_error"]))}
    return runs, summary, fitted


def phase_tests(fitted, level: float, an: BootstrapConfig, ids: tuple[str, str], what: str, paper: str) -> list:
    """``ids[0]``: the phase is sub-diffusive (median over seeds of α < 1/2); ``ids[1]``: d_s ≤ λ
    (median of d_s − λ < 0, Lemma 3.4). Percentile-bootstrap intervals of the median, one rule."""
    from ..stats.results import HypothesisTest

    out = []
    for id_, claim, stat, v, thr in (
            (ids[0], f"{what} is sub-diffusive, α < 1/2 ({paper})", "median over seeds of α",
             fitted["alpha"].to_numpy(float), 0.5),
            (ids[1], f"d_s ≤ λ (Lemma 3.4) for {what}", "median over seeds of d_s − λ",
             (fitted["d_s"] - fitted["llc"]).to_numpy(float), 0.0)):
        sm = summarize(v, level, an.seed, n_boot=an.n_boot)
        out.append(HypothesisTest.decided(id_, claim, stat, sm.median, sm.median_ci_low, sm.median_ci_high, None,
                                          "interval only (percentile bootstrap of the median over seeds)", level,
                                          threshold=thr, direction="less", n_tested=int(sm.n)))
    return out

