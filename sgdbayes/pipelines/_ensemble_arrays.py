"""The per-run arrays every training stage stores from an :class:`~sgdbayes.engine.EnsembleResult`,
the divergence count every report prints, and the pieces of a training stage that trains one
ensemble (its one cell, its shard's SGD ensemble)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

__all__ = ["ENSEMBLE_ROWS", "ensemble_arrays", "divergence_flags", "divergence_summary", "single_cell",
           "train_shard_ensemble"]

#: the per-seed outputs of :func:`ensemble_arrays` (the rows of a training shard; the rest is shared)
ENSEMBLE_ROWS = ("seeds", "displacement", "train_loss_curve", "final_train_loss", "final_train_acc",
                 "final_test_loss", "final_test_acc", "diverged", "diverged_step")


def ensemble_arrays(res, displacement_dtype=np.float64) -> dict[str, Any]:
    """seeds, step grid, displacement curves R(t) (``displacement_dtype``), train-loss curves,
    final train loss / accuracy, final test loss / accuracy, divergence flags and steps
    (-1 = never), and the parameter count."""
    fin = res.final
    diverged, diverged_step = divergence_flags(res)
    return {
        "seeds": np.asarray(res.seeds, dtype=np.int64),
        "steps": np.asarray(res.steps, dtype=np.int64),
        "displacement": np.asarray(res.displacement, dtype=displacement_dtype),
        "train_loss_curve": np.asarray(res.train_loss, dtype=np.float32),
        "final_train_loss": fin["train_loss"].to_numpy(float),
        "final_train_acc": fin["train_acc"].to_numpy(float),
        "final_test_loss": fin["test_loss"].to_numpy(float),
        "final_test_acc": fin["test_acc"].to_numpy(float),
        "diverged": diverged,
        "diverged_step": diverged_step,
        "n_params": int(res.spec.n_params),
    }


def divergence_flags(res) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: diverged, and the step it diverged at (-1 = never).

    A seed diverged when the engine flagged it (its loss stopped being finite) *or* its
    recorded displacement is not finite somewhere (R(t) overflowed while the loss stayed
    finite); the step is then the first recorded step with a non-finite R(t).
    """
    fin = res.final
    flag = fin["diverged"].to_numpy(bool).copy()
    step = fin["diverged_step"].to_numpy(np.int64).copy()
    bad = ~np.isfinite(np.asarray(res.displacement, dtype=np.float64))
    extra = bad.any(1) & ~flag
    if extra.any():
        grid = np.asarray(res.steps, dtype=np.int64)
        step[extra] = grid[np.argmax(bad[extra], axis=1)]
        flag |= extra
    return flag, step


def divergence_summary(diverged: Sequence[bool], diverged_step: Sequence[int], labels: Sequence[Any]) -> dict:
    """How many of the K runs diverged, which (``labels``) and at which steps.

    A diverged run is left out of every stage after training; the report prints
    ``"k of K runs diverged (at steps ...)"`` from this dict.
    """
    d = np.asarray(diverged, bool)
    steps = np.asarray(diverged_step, np.int64)
    idx = np.flatnonzero(d)
    order = idx[np.argsort(steps[idx], kind="stable")]
    return {"n_diverged": int(d.sum()), "n_runs": int(d.size), "all_diverged": bool(d.size and d.all()),
            "runs": [str(labels[i]) for i in order], "steps": [int(steps[i]) for i in order]}


def single_cell(ctx) -> list[tuple[int, tuple[int, ...]]]:
    """The cells of a stage that trains one ensemble: cell 0 with the ``train`` section's seed ids."""
    return [(0, ctx.config.train.seed_list())]


def train_shard_ensemble(task):
    """The SGD ensemble of ``task.config`` (its ``data``, ``model`` and ``train`` sections) for the
    shard's seeds only, as one batched computation on the shard's device and cores."""
    from ..engine import train_ensemble
    from .sections import sgd_ensemble

    c = task.config
    ecfg = replace(sgd_ensemble(c.data, c.model, c.train, c.data.n_train, task.device), seeds=task.seeds,
                   workers=task.engine_workers(hooks=False))
    return train_ensemble(ecfg)
