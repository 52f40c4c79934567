"""Shared wiring of the three diffusion studies (anomalous_diffusion, spectral_dimension,
ablations): training cells with LLC along training, per-run diffusion fits, and the H1-H3 and
H7 tests of a table of runs (the statistics themselves are in :mod:`sgdbayes.stats`).

Formulas (paper equation numbers; docs/methods.md):

* displacement R(t) = ||w_t - w_0||_2 over all trainable parameters, t = optimizer steps;
* eq 17: log R(t) = alpha log t + c with alpha = d_s / (2 lambda); so d_s = 2 lambda alpha and
  d_walk = 1/alpha = 2 lambda / d_s (eq 12); fitted by :func:`sgdbayes.stats.fit_diffusion`
  (GLS with AR(1) errors and a calibrated standard error, docs/intervals.md, on points evenly
  spaced in log t; whole range = the paper's fit, late window = after the two-segment
  crossover t_c of App B.3);
* se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2 (delta method);
* final lambda and lambda_bar per run: :func:`sgdbayes.stats.summaries.llc_summaries`;
* H1-H3 across runs: :func:`sgdbayes.stats.verdicts.as_hypothesis_test` of
  :func:`sgdbayes.stats.hypotheses.test_h1` ... ``test_h3``; H7: :func:`sgdbayes.stats.prediction.test_h7`.

Nothing here reads a study configuration: functions take explicit arguments or the library's own
objects (:class:`sgdbayes.engine.EnsembleConfig`, :class:`sgdbayes.sampling.LLCConfig`) and the
shared sections of :mod:`sgdbayes.pipelines.sections` (:class:`FitConfig`).
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ._ensemble_arrays import ENSEMBLE_ROWS, ensemble_arrays
from .sections import FitConfig

__all__ = ["parse_layers", "llc_training_hook", "train_cell", "cell_partial", "fit_runs", "h7_tests"]


# --------------------------------------------------------------------------- helpers

def parse_layers(text: str) -> list[int]:
    """A layer list of the paper's Table 7/8 (``"784, 128, 64"``) as integers.

    Each comma-separated piece contributes its first integer: the printed table has a stray
    footnote marker in ``"784, 128, 64 1"``, read as ``[784, 128, 64]``.
    """
    out = []
    for piece in str(text).split(","):
        m = re.search(r"\d+", piece)
        if m:
            out.append(int(m.group()))
    if len(out) < 2:
        raise ValueError(f"cannot read a layer list from {text!r}")
    return out


# --------------------------------------------------------------------------- training

def llc_training_hook(config, every: int):
    """An engine hook estimating λ̂ (``config``: :class:`sgdbayes.sampling.LLCConfig`) every
    ``every`` steps for the seeds that have not diverged.

    A diverged seed's weights are frozen where its loss stopped being finite, so it has no
    λ̂: it is left out of the estimate (NaN, ``skipped``) instead of stopping the training.
    Each seed's chains are keyed by its seed id, so leaving seeds out changes no other
    seed's estimate. Returns ``(engine Hook, LLCTrainingHook)``.
    """
    from ..engine import Hook
    from ..sampling import LLCTrainingHook, dataset_tensors

    hook = LLCTrainingHook(config, every=every)

    def estimate(state):
        step = int(state.step)
        if step % every != 0:
            return None
        w = state.w
        keep = (~state.diverged.to(w.device)) & torch.isfinite(w).all(1)
        k = int(w.shape[0])
        if bool(keep.all()):
            try:
                return {**hook(state), "skipped": np.zeros(k, bool)}
            except ValueError:  # a seed whose loss at w is not finite: estimate the others one by one
                pass
        out = {"llc": np.full(k, np.nan), "llc_std": np.full(k, np.nan), "negative": np.zeros(k, bool),
               "trend_flag": np.zeros(k, bool), "n_diverged": np.zeros(k, np.int64),
               "all_diverged": np.zeros(k, bool), "skipped": np.ones(k, bool)}
        x, y = dataset_tensors(state.data)
        seeds = [int(s) for s in state.seeds]
        for at, res in _estimates(hook, step, w, state.spec, x, y, seeds, torch.nonzero(keep).flatten().tolist()):
            out["llc"][at], out["llc_std"][at] = res.llc, res.llc_std
            out["negative"][at], out["trend_flag"][at] = res.negative, res.trend_flag
            out["n_diverged"][at], out["all_diverged"][at] = res.n_diverged, res.all_diverged
            out["skipped"][at] = False
        return out

    return Hook(every=every, fn=estimate, name="llc"), hook


def _estimates(hook, step, w, spec, x, y, seeds, rows):
    """``[(rows, LLCResult)]`` for the given rows of ``w``; when the batch fails because some seed's
    loss is not finite (its weights overflowed without the engine flagging it), each row is
    estimated alone and the failing ones are left out (their λ̂ stays NaN)."""
    if not rows:
        return []
    try:
        res = hook.record(step, w[rows], spec, x, y, model_ids=[seeds[i] for i in rows])
        return [(np.asarray(rows), res)]
    except ValueError:
        if len(rows) == 1:
            return []
        return [pair for i in rows for pair in _estimates(hook, step, w, spec, x, y, seeds, [i])]


def train_cell(data, ecfg, llc=None, every: int = 100) -> dict[str, Any]:
    """Train one cell (``ecfg``: an :class:`sgdbayes.engine.EnsembleConfig`) as one batched
    ensemble, with λ̂ (``llc``: an :class:`sgdbayes.sampling.LLCConfig`) every ``every`` steps.

    Returns arrays: ``steps [G]``, ``displacement [K, G]``, ``llc_steps [E]``, ``llc [K, E]``,
    ``llc_std [K, E]`` (chain std; NaN with one chain), final train/test loss and accuracy,
    ``diverged [K]``, ``diverged_step [K]``, scalars ``n_params``, ``wall_s``, the MLP's
    ``widths`` (empty for other families) and ``model`` (the family's ``describe()``).
    """
    from ..engine import train_ensemble

    hooks = []
    if llc is not None:
        hooks.append(llc_training_hook(llc, every)[0])
    t0 = time.perf_counter()
    res = train_ensemble(ecfg, data=data, hooks=hooks)
    wall = time.perf_counter() - t0
    K = len(ecfg.seeds)
    out: dict[str, Any] = {
        **ensemble_arrays(res),
        "widths": list(res.spec.widths) if res.spec.kind == "mlp" else [],  # MLP layer widths
        "model": res.spec.describe(),  # any family: kind and sizes (docs/models.md)
        "wall_s": float(wall),
    }
    if llc is not None:
        df = res.hooks["llc"]
        if df.empty:
            raise RuntimeError(f"no LLC estimate was recorded: llc_schedule.every = {every} > steps = {ecfg.steps}")
        wide = df.pivot(index="seed", columns="step", values="llc").reindex(index=list(res.seeds))
        wstd = df.pivot(index="seed", columns="step", values="llc_std").reindex(index=list(res.seeds))
        out["llc_steps"] = np.asarray(wide.columns, dtype=np.int64)
        out["llc"] = wide.to_numpy(float).reshape(K, -1)
        out["llc_std"] = wstd.to_numpy(float).reshape(K, -1)
        out["nbeta"] = float(llc.resolve_nbeta(data.n_train))
        out["llc_trend_flags"] = int(df["trend_flag"].astype(bool).sum())
        out["llc_n_estimates"] = int((~df["skipped"].astype(bool)).sum())
    return out


def cell_partial(out: dict[str, Any], shared: dict[str, Any] | None = None):
    """:func:`train_cell`'s outputs for some seeds of a cell as a shard's
    :class:`~sgdbayes.runner.shards.Partial` (per-seed rows; counts and seconds summed over shards;
    the step grids, sizes and ``shared`` the same in every shard); ``Partial.flat()`` gives
    ``train_cell``'s dict back."""
    from ..runner.shards import Partial

    rows = [*ENSEMBLE_ROWS, *(k for k in ("llc", "llc_std") if k in out)]
    totals = [k for k in ("wall_s", "llc_trend_flags", "llc_n_estimates") if k in out]
    return Partial.split({**out, **(shared or {})}, rows=rows, totals=totals)


# --------------------------------------------------------------------------- fits

def fit_runs(steps: np.ndarray, displacement: np.ndarray, settings: FitConfig,
             run_ids: Sequence[Any], llc: Optional[np.ndarray] = None, llc_se: Optional[np.ndarray] = None,
             llc_mean: Optional[np.ndarray] = None, llc_mean_se: Optional[np.ndarray] = None,
             positions: Optional[Sequence[int]] = None, llc_df: Optional[np.ndarray] = None) -> pd.DataFrame:
    """One row per run: :meth:`DiffusionFit.to_row` (whole-range and late-window eq 17 fits,
    crossover t_c with its interval, d_s = 2 λ α with delta-method intervals when λ is given),
    plus ``run``, ``llc_mean``/``llc_mean_se`` (λ̄) and ``fit_error`` (reason when a run could
    not be fitted, e.g. a constant displacement; its numbers are then missing, never silently
    NaN). Run k's bootstrap seed is ``settings.seed + positions[k]``, its position in the full
    ensemble (default k), so a run's fit does not depend on which other runs were left out.
    ``llc_df`` (degrees of freedom of ``llc_se``) gives d_s a Welch–Satterthwaite t reference."""
    from ..stats.diffusion import fit_diffusion

    rows = []
    K = displacement.shape[0]
    positions = list(range(K)) if positions is None else [int(p) for p in positions]
    for k in range(K):
        d = np.asarray(displacement[k], float)
        ok = np.isfinite(d)
        lam = None if llc is None or not np.isfinite(llc[k]) else float(llc[k])
        lam_se = None if lam is None or llc_se is None or not np.isfinite(llc_se[k]) else float(llc_se[k])
        lam_df = None if lam_se is None or llc_df is None or not np.isfinite(llc_df[k]) else float(llc_df[k])
        row: dict[str, Any] = {"run": run_ids[k]}
        try:
            f = fit_diffusion(np.asarray(steps)[ok], d[ok], llc=lam, llc_se=lam_se, llc_df=lam_df,
                              n_grid=settings.n_grid,
                              method=settings.method, n_boot=settings.n_boot, level=settings.level,
                              seed=settings.seed + positions[k])
            row.update(f.to_row())
            row["fit_error"] = ""
        except (ValueError, np.linalg.LinAlgError) as exc:
            row["fit_error"] = str(exc)
        row["llc"] = lam
        row["llc_se"] = lam_se
        row["llc_mean"] = None if llc_mean is None or not np.isfinite(llc_mean[k]) else float(llc_mean[k])
        row["llc_mean_se"] = None if llc_mean_se is None or not np.isfinite(llc_mean_se[k]) else float(llc_mean_se[k])
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("alpha", "alpha_se", "late_alpha", "late_alpha_se", "d_s", "late_d_s", "llc", "llc_mean"):
        if c not in df:
            df[c] = np.nan
    return df


# --------------------------------------------------------------------------- tests

def _suffixed(tests: list, suffix: str) -> list:
    return [dataclasses.replace(t, id=f"{t.id}-{suffix}") for t in tests] if suffix else tests


def h7_tests(R_final, llc, R_pred, rel_err, n_failed: int, margin: float, level: float, n_boot: int, seed: int,
             suffix: str = "") -> tuple[list, Any]:
    """H7 (ρ(R_T, λ) < 0) and H7-prediction (median |R̂_T/R_T − 1| < ``margin``) of
    :func:`sgdbayes.stats.prediction.test_h7`, ids followed by ``-suffix`` when given, and the
    cross-run regressions of R_T on λ and on the predicted R̂_T (one Holm family)."""
    from ..stats.prediction import test_h7
    from ..stats.regression import cross_run_regressions

    R_final, llc = np.asarray(R_final, float), np.asarray(llc, float)
    df = pd.DataFrame({"R_final": R_final, "llc": llc, "R_pred": np.asarray(R_pred, float)})
    reg = cross_run_regressions(df, [("R_final", "llc"), ("R_final", "R_pred")], n_boot=n_boot, level=level, seed=seed)
    tests = test_h7(R_final, llc, rel_err, margin=margin, level=level, n_boot=n_boot, seed=seed, n_failed=n_failed)
    return _suffixed(tests, suffix), reg
