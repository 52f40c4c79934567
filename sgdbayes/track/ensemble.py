"""An engine seed ensemble (one vmap computation for K seeds) in the tracker's file layout.

``ensemble_frame(result)`` turns an :class:`sgdbayes.engine.EnsembleResult` into the rows a
:class:`~sgdbayes.track.Tracker` per seed would write: one run per seed (run id
``f"{run_prefix}{seed}"``), its grid steps and displacements (``result.steps``,
``result.displacement``), the LLC of ``result.hooks["llc"]`` (from
:class:`sgdbayes.sampling.LLCTrainingHook`) on the steps where it was estimated,
``n_params``, ``diverged_step`` (empty when the seed never diverged; rows from that
step on are dropped, as the tracker does) and covariates from the config (lr,
batch_size, optimizer, momentum, weight_decay, seed) plus ``covariates``.
``write_ensemble`` writes them to a runs file (replacing those runs' rows).
"""
from __future__ import annotations

import warnings
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from .io import check_covariates, column_order, write_runs

__all__ = ["ensemble_frame", "write_ensemble"]


def _llc_table(result, hook: str) -> Optional[pd.DataFrame]:
    tab = result.hooks.get(hook)
    if tab is None or len(tab) == 0:
        return None
    if "llc" not in tab.columns:
        raise ValueError(f"result.hooks[{hook!r}] has no 'llc' column (columns: {list(tab.columns)})")
    at0 = tab["step"] == 0
    if at0.any():
        warnings.warn(f"result.hooks[{hook!r}]: LLC estimates at step 0 are left out (the runs file starts "
                      f"at step 1, where log t is defined)")
        tab = tab[~at0]
    return tab[["step", "seed", "llc"]]


def ensemble_frame(result, *, run_prefix: str = "seed", covariates: Optional[Mapping] = None,
                   llc_hook: str = "llc") -> pd.DataFrame:
    """Rows ``run, step, displacement, llc, n_params, diverged_step, covariates`` of every seed."""
    cfg = result.config
    base = {"n_params": int(result.spec.n_params), "lr": cfg.lr, "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    base.update(check_covariates(covariates))
    steps = np.asarray(result.steps, dtype=np.int64)
    llc = _llc_table(result, llc_hook)
    if llc is not None:
        off = sorted(set(llc["step"].astype(int)) - set(steps.tolist()))
        if off:
            raise ValueError(f"result.hooks[{llc_hook!r}] has LLC estimates at steps {off[:10]} that are not on "
                             f"the displacement grid; use an LLC hook 'every' that is a multiple of "
                             f"record_every={cfg.record_every}")
    div = dict(zip(result.final["seed"].astype(int), result.final["diverged_step"].astype(int)))
    parts = []
    for i, seed in enumerate(np.asarray(result.seeds, dtype=np.int64)):
        d = result.displacement[i]
        keep = np.isfinite(d)
        dstep = div.get(int(seed), -1)
        if dstep >= 0:
            keep &= steps < dstep
        df = pd.DataFrame({"run": f"{run_prefix}{int(seed)}", "step": steps[keep], "displacement": d[keep]})
        if llc is not None:
            own = llc[llc["seed"] == seed].set_index("step")["llc"]
            df["llc"] = df["step"].map(own).astype(float)
        else:
            df["llc"] = np.nan
        df["diverged_step"] = float(dstep) if dstep >= 0 else np.nan
        for k, v in {**base, "seed": int(seed)}.items():
            df[k] = v
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    return out[column_order(out.columns)]


def write_ensemble(result, out, *, run_prefix: str = "seed", covariates: Optional[Mapping] = None,
                   llc_hook: str = "llc"):
    """Write :func:`ensemble_frame` to the runs file ``out``; returns the path."""
    return write_runs(out, ensemble_frame(result, run_prefix=run_prefix, covariates=covariates,
                                          llc_hook=llc_hook))
