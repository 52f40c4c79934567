"""The plain-text summary of an :class:`~sgdbayes.sampling.llc_types.LLCResult`."""

from __future__ import annotations

import numpy as np

__all__ = ["llc_summary"]


def llc_summary(r, max_rows: int = 20) -> str:
    c = r.config
    K, C = r.llc_per_chain.shape
    lines = [
        f"LLC estimates (eq 25: llc = nbeta * (mean draw loss - L(w*))), backend={r.backend}, mode={r.mode}",
        f"  eps={c.step_size:g} gamma={c.localization:g} nbeta={r.nbeta:.4g} ({c.nbeta_rule()}) "
        f"sigma={c.noise_level:g} weight_decay={c.weight_decay:g} batch={c.effective_batch(r.n_train)} "
        f"n={r.n_train}",
        f"  chains={C} draws={c.num_draws} burn-in={c.num_burnin_steps} steps/draw={c.num_steps_bw_draws} "
        f"seed={c.seed} wall={r.wall_s:.2f}s",
    ]
    fin = r.llc[np.isfinite(r.llc)]
    if fin.size:
        lines.append(f"  models={K}: llc mean={fin.mean():.4g} median={np.median(fin):.4g} "
                     f"min={fin.min():.4g} max={fin.max():.4g}")
    lines.append(f"  negative llc: {int(r.negative.sum())}/{K} models (kept, flagged)")
    lines.append(f"  trend flag (some chain's |z| > {r.trend_threshold:.3g} = {c.trend_z:g} Bonferroni-corrected for "
                 f"{C} chain(s); draws not stationary): {int(r.trend_flag.sum())}/{K} models")
    acc = r.mala_accept[np.isfinite(r.mala_accept)]
    if acc.size:
        lines.append(f"  MALA acceptance (target {c.mala_target:g} ± {c.mala_tol:g}): mean {acc.mean():.3g}, min "
                     f"{np.nanmin(r.mala_chain):.3g}; flagged: {int(r.mala_flag.sum())}/{K} models")
    else:
        lines.append("  MALA acceptance: not measured (mala_transitions = 0 or the devinterp backend)")
    for line in r.advice():
        lines.append(f"  WARNING: {line}")
    lines.append(f"  diverged chains: {int(r.diverged[~r.excluded].sum())}/{int((~r.excluded).sum()) * C} "
                 f"(excluded from means)")
    if r.excluded.any():
        lines.append(f"  skipped: {int(r.excluded.sum())} model(s) whose training diverged (llc = NaN, excluded=True): "
                     f"ids {r.model_ids[r.excluded][:10].tolist()}")
    if r.all_diverged.any():
        lines.append(f"  WARNING: {int(r.all_diverged.sum())} model(s) had ALL chains diverge: llc = NaN "
                     f"(all_diverged=True): ids {r.model_ids[r.all_diverged][:10].tolist()}")
    if C == 1:
        lines.append("  note: 1 chain -> no Monte-Carlo error estimate (llc_std is NaN)")
    df = r.to_frame()
    cols = ["model_id", "llc", "llc_std", "n_chains_valid", "negative", "trend_z_max", "trend_flag", "mala_accept",
            "mala_flag", "all_diverged"]
    lines.append(df[cols].head(max_rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if K > max_rows:
        lines.append(f"  ... {K - max_rows} more rows (to_frame() for all)")
    return "\n".join(lines)
