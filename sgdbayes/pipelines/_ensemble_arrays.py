"""The per-run arrays every training stage stores from an :class:`~sgdbayes.engine.EnsembleResult`."""

from __future__ import annotations

from typing import Any

import numpy as np


def ensemble_arrays(res, displacement_dtype=np.float64) -> dict[str, Any]:
    """seeds, step grid, displacement curves R(t) (``displacement_dtype``), train-loss curves,
    final train loss / accuracy, final test loss / accuracy, and the parameter count."""
    fin = res.final
    return {
        "seeds": np.asarray(res.seeds, dtype=np.int64),
        "steps": np.asarray(res.steps, dtype=np.int64),
        "displacement": np.asarray(res.displacement, dtype=displacement_dtype),
        "train_loss_curve": np.asarray(res.train_loss, dtype=np.float32),
        "final_train_loss": fin["train_loss"].to_numpy(float),
        "final_train_acc": fin["train_acc"].to_numpy(float),
        "final_test_loss": fin["test_loss"].to_numpy(float),
        "final_test_acc": fin["test_acc"].to_numpy(float),
        "n_params": int(res.spec.n_params),
    }
