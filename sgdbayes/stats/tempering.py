"""Tempering SGD's cluster distribution toward the Bayesian posterior
(paper §3.3.3–3.4, §4.2, Fig 3, Fig 4b, Table 2; docs/methods.md, "Posterior concentration").

The per-cluster properties, the theoretical distribution and the free-energy reference live in
:mod:`.theory` and are re-exported here.

Formulas (paper numbering):

* **Effective diffusion coefficient** — Lemma 3.2 / Corollary 3.1 (eq 13):
  ``D_ξ = ξ^(2 − d_walk)``, ``d_walk = 2λ/d_s = 1/α`` (eq 12, α = late-window
  slope of log R vs log t). Per run ``log D_ξ = (2 − 1/α) log ξ``; per cluster
  we average **log D** over the cluster's runs, i.e.
  ``log D_ξ(c) = (2 − mean_c(1/α)) log ξ`` (mean of d_walk, not 1/mean α).
  Runs with α ≤ 0 or non-finite α have no walk dimension: they are excluded
  from the average and counted (``n_alpha_invalid``).
* **Theoretical SGD distribution** — Lemma 3.3: ``p_s(w) ∝ exp(−γ L(w)/D_ξ)``;
  over clusters ``p_theory(c; ξ) ∝ exp(−γ L_c / D_ξ(c))`` with ``γ`` = SGD
  learning rate and ``L_c`` = mean final training loss of the cluster's runs.
* **ξ sweep** — Fig 3: ``KL(P_sgd ‖ p_theory(ξ))`` on a log grid; ``ξ* =
  argmin``. Because choosing the minimum on the same data biases the KL low,
  :func:`sweep_xi` also selects ξ on one random half of the seeds and evaluates
  on the other half (and vice versa), and bootstraps ξ* over seeds.
* **Tempered SGD** — Corollary 3.2 (eqs 14–15):
  ``P_temp(c) ∝ P_sgd(c)^(m · D_ξ*(c))``, ``m`` = training-set size. Computed
  exactly in log space: ``log P_temp = m D log P_sgd − logsumexp(·)``. A
  zero-mass cluster stays at zero (``0^x = 0`` for ``x = m D > 0``). If the
  result puts (almost) all mass on one cluster the formula is *not* changed;
  ``collapsed`` is set instead.
* **SLT free-energy reference** (Watanabe): ``F_c ≈ m L_c + λ_c log m``,
  ``P_F(c) ∝ exp(−F_c)``, with ``L_c`` the mean per-sample negative
  log-likelihood (training loss) and ``λ_c`` the mean LLC of the cluster.

HDBSCAN's noise label is a category like any other here: it has its own
``L_c``, ``λ_c`` and ``α_c`` means. Categories with no SGD runs have undefined
``L_c``/``D_ξ(c)``: they get probability 0 under ``p_theory``, ``P_temp`` and
``P_F`` (their ``P_sgd`` is 0 as well) and are listed in the notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from .._validation import check_float, check_level, check_n_boot
from .bootstrap import SeedLike, as_generator, label_positions, percentile_interval
from .results import Result, estimate_row
from .theory import (  # noqa: F401  (re-exported: the public names of this module before the split)
    ClusterProperties,
    FreeEnergyResult,
    cluster_properties,
    default_xi_grid,
    diffusion_coefficient,
    free_energy_distribution,
    group_mean,
    kl_sgd_theory,
    log_diffusion,
    theoretical_distribution,
    valid_alpha,
)

__all__ = [
    "TemperingUndefined",
    "log_diffusion",
    "diffusion_coefficient",
    "ClusterProperties",
    "cluster_properties",
    "theoretical_distribution",
    "kl_sgd_theory",
    "XiSweep",
    "sweep_xi",
    "TemperedResult",
    "tempered_distribution",
    "FreeEnergyResult",
    "free_energy_distribution",
    "default_xi_grid",
    "make_tempered_fn",
]


class TemperingUndefined(ValueError):
    """Cor 3.2's tempered distribution cannot be evaluated (every cluster's exponent underflows or
    is undefined): a fact about the data, reported as such, not a bad argument."""



def _names(categories) -> list:
    from .cluster import category_names

    return category_names(categories)


@dataclass
class XiSweep(Result):
    """Result of the ξ sweep (Fig 3) with honest selection.

    ``kl[i]`` = KL(P_sgd ‖ p_theory(grid[i])) on all seeds; ``xi_star`` its
    argmin (in-sample, biased low: ``kl_min``). Split sample: seeds permuted by
    ``numpy.random.default_rng(split_seed)``; half A = first ⌊N/2⌋, half B = the
    rest; ``xi_A`` = argmin on A, ``kl_B_at_xi_A`` = KL on B at ``xi_A`` (and
    symmetrically); ``kl_split`` = mean of the two out-of-sample KLs.
    ``boot_xi_star`` = ξ* over a bootstrap of seeds (runs resampled with replacement; cluster
    L_c, d_walk_c and P_sgd recomputed each time); :meth:`conf_int` gives its percentile
    interval (of log ξ*) at any level. ξ* is restricted to the grid, so the interval is
    grid-quantised.
    """

    grid: np.ndarray
    kl: np.ndarray
    xi_star: float
    kl_min: float
    boot_xi_star: np.ndarray
    level: float
    xi_A: float
    kl_B_at_xi_A: float
    xi_B: float
    kl_A_at_xi_B: float
    kl_split: float
    split_seed: Optional[int]
    lr: float
    at_boundary: bool
    properties: ClusterProperties
    notes: list = field(default_factory=list)

    def _estimate_rows(self, level: float) -> list[dict]:
        """ξ* with its bootstrap interval (log-scale percentiles, recomputed at ``level``); the
        in-sample KL at ξ* and the split-sample KL (point values)."""
        fb = np.asarray(self.boot_xi_star, float)
        fb = fb[np.isfinite(fb)]
        lo = hi = float("nan")
        if fb.size:
            lo, hi = (float(np.exp(v)) for v in percentile_interval(np.log(fb), level))
        return [estimate_row("xi_star", self.xi_star, None, lo, hi), estimate_row("kl_min", self.kl_min),
                estimate_row("kl_split", self.kl_split)]

    def to_frame(self) -> pd.DataFrame:
        """The KL curve: one row per grid value (``is_xi_star`` marks the argmin)."""
        return pd.DataFrame({"xi": self.grid, "kl_sgd_theory": self.kl,
                             "is_xi_star": self.grid == self.xi_star})

    def summary_frame(self) -> pd.DataFrame:
        lo, hi = self.conf_int().loc["xi_star"]
        rows = [
            ("xi_star (in-sample argmin)", self.xi_star), ("KL at xi_star (in-sample, biased low)", self.kl_min),
            (f"xi_star {self.level:.0%} bootstrap CI low", lo),
            (f"xi_star {self.level:.0%} bootstrap CI high", hi),
            ("split: xi selected on half A", self.xi_A), ("split: KL on half B at xi_A", self.kl_B_at_xi_A),
            ("split: xi selected on half B", self.xi_B), ("split: KL on half A at xi_B", self.kl_A_at_xi_B),
            ("split: mean out-of-sample KL", self.kl_split), ("split seed", self.split_seed),
            ("gamma (SGD lr)", self.lr), ("xi_star at grid boundary", self.at_boundary),
        ]
        return pd.DataFrame(rows, columns=["quantity", "value"])

    def summary(self) -> str:
        lines = [f"xi sweep (Fig 3), KL(P_sgd || p_theory(xi)), gamma = {self.lr}, "
                 f"grid {self.grid[0]:.3g}..{self.grid[-1]:.3g} ({self.grid.size} points, log)"]
        for _, r in self.summary_frame().iterrows():
            v = r["value"]
            lines.append(f"  {r['quantity']:<42s} {v:.4g}" if isinstance(v, float) else
                         f"  {r['quantity']:<42s} {v}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def _argmin_grid(grid, kl):
    if not np.isfinite(kl).any():
        return float("nan"), float("inf")
    i = int(np.argmin(kl))
    return float(grid[i]), float(kl[i])


def _props_from_pos(pos, K, loss, inv_alpha, valid):
    n = np.bincount(pos, minlength=K)
    L, _ = group_mean(pos, K, loss)
    dw, _ = group_mean(pos, K, inv_alpha, valid)
    return n / max(pos.size, 1), L, dw


def sweep_xi(labels, categories: Sequence, loss, alpha, lr: float, *, grid=None, n_boot: int = 200,
             level: float = 0.95, split_seed: Optional[int] = 0, seed: SeedLike = None,
             llc=None) -> XiSweep:
    """ξ sweep of ``KL(P_sgd ‖ p_theory(ξ))`` (Fig 3; Lemma 3.3 with Cor 3.1).

    Parameters
    ----------
    labels : cluster label per SGD run (noise ``-1`` allowed as a category).
    categories : fixed category order.
    loss, alpha : final training loss and late-window α per run.
    lr : γ, the SGD learning rate.
    grid : ξ values (default :func:`default_xi_grid`).
    n_boot : bootstrap resamples of seeds for the ξ* interval.
    split_seed : seed of the random half split (``default_rng(split_seed)``).
    seed : int or numpy Generator (whose stream continues) for the bootstrap.
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    lr = check_float("lr", lr, 0.0, strict_min=True)
    grid = default_xi_grid() if grid is None else np.sort(np.asarray(grid, dtype=float))
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all() or (grid <= 0).any():
        raise ValueError("grid must be a non-empty 1-D array of finite xi > 0")
    cats = list(categories)
    K = len(cats)
    pos = label_positions(labels, cats)
    loss = np.asarray(loss, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    valid = valid_alpha(alpha)
    inv_alpha = np.where(valid, 1.0 / np.where(valid, alpha, 1.0), np.nan)
    props = cluster_properties(labels, cats, loss, alpha, llc)
    notes = []
    if (~valid).any():
        notes.append(f"{int((~valid).sum())} runs with alpha <= 0 or non-finite excluded from mean d_walk")
    undefined = [c for c, d, n in zip(cats, props.defined, props.n) if n > 0 and not d]
    if undefined:
        notes.append(f"clusters {undefined} have runs but no valid alpha/loss: p_theory = 0 there, KL = inf")

    def curve(idx):
        p, L, dw = _props_from_pos(pos[idx], K, loss[idx], inv_alpha[idx], valid[idx])
        return kl_sgd_theory(p, L, dw, lr, grid)

    all_idx = np.arange(pos.size)
    kl = curve(all_idx)
    xi_star, kl_min = _argmin_grid(grid, kl)
    if not np.isfinite(xi_star):
        notes.append("KL infinite on the whole grid: xi_star undefined (NaN)")
    at_boundary = bool(np.isfinite(xi_star) and (xi_star == grid[0] or xi_star == grid[-1]))
    if at_boundary:
        notes.append("xi_star lies at the edge of the grid: the minimum may lie outside it")
    if np.isfinite(kl).all() and np.ptp(kl) < 1e-12:
        notes.append("KL curve is flat in xi: xi is not identified by these data")

    # split sample
    perm = np.random.default_rng(split_seed).permutation(pos.size)
    h = pos.size // 2
    A, B = np.sort(perm[:h]), np.sort(perm[h:])
    klA, klB = curve(A), curve(B)
    xi_A, _ = _argmin_grid(grid, klA)
    xi_B, _ = _argmin_grid(grid, klB)
    kl_B_at_A = float(klB[np.searchsorted(grid, xi_A)]) if np.isfinite(xi_A) else float("inf")
    kl_A_at_B = float(klA[np.searchsorted(grid, xi_B)]) if np.isfinite(xi_B) else float("inf")
    kl_split = 0.5 * (kl_B_at_A + kl_A_at_B)

    # bootstrap over seeds
    g = as_generator(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        idx = g.integers(0, pos.size, size=pos.size)
        boot[b], _ = _argmin_grid(grid, curve(idx))
    n_undef = int(np.isnan(boot).sum())
    if n_undef:
        notes.append(f"{n_undef} bootstrap resamples had no finite KL (xi_star undefined); excluded from CI")
    if not np.isfinite(boot).any():
        notes.append("xi_star CI undefined (no finite bootstrap values)")
    return XiSweep(grid, kl, xi_star, kl_min, boot, level, xi_A, kl_B_at_A, xi_B, kl_A_at_B,
                   kl_split, split_seed, float(lr), at_boundary, props, notes)


# ----------------------------------------------------------------------------
# tempered SGD and the free-energy reference
# ----------------------------------------------------------------------------

@dataclass
class TemperedResult(Result):
    """Tempered SGD distribution (Cor 3.2): ``P_temp(c) ∝ P_sgd(c)^(m D_ξ(c))``."""

    categories: list
    p_sgd: np.ndarray
    log_D: np.ndarray
    exponent: np.ndarray  # m * D_xi(c)
    p_temp: np.ndarray
    log_p_temp: np.ndarray
    m: float
    xi: Optional[float]
    collapsed: bool
    collapse_tol: float
    n_effective: float  # exp(entropy of P_temp)
    pseudocount: float
    notes: list = field(default_factory=list)

    def _estimate_rows(self, level: float) -> list[dict]:
        return [estimate_row(f"P_temp[{nm}]", p) for nm, p in zip(_names(self.categories), self.p_temp)]

    def to_frame(self) -> pd.DataFrame:
        from .cluster import category_names

        return pd.DataFrame({"category": self.categories, "name": category_names(self.categories),
                             "P_sgd": self.p_sgd, "log_D_xi": self.log_D, "m_D_xi": self.exponent,
                             "P_temp": self.p_temp, "log_P_temp": self.log_p_temp})

    def summary(self) -> str:
        s = (f"Tempered SGD (Cor 3.2), m = {self.m:g}, xi = {self.xi}, pseudocount = {self.pseudocount}: "
             f"effective number of clusters {self.n_effective:.3g}")
        if self.collapsed:
            s += f"\n  COLLAPSED: one cluster holds >= {1 - self.collapse_tol:.4g} of the tempered mass"
        for n in self.notes:
            s += f"\n  note: {n}"
        return s


def tempered_distribution(p_sgd, log_D, m: float, *, categories: Optional[Sequence] = None,
                          xi: Optional[float] = None, pseudocount: float = 0.0,
                          collapse_tol: float = 1e-3) -> TemperedResult:
    """Corollary 3.2 (eqs 14–15): ``P_temp(c) ∝ P_sgd(c)^(m · D_ξ(c))``.

    Parameters
    ----------
    p_sgd : SGD cluster counts or probabilities. With ``pseudocount > 0`` the
        input must be counts; ``(n_c + a)/(N + aK)`` is tempered instead.
    log_D : per-cluster mean log D_ξ (Cor 3.1); NaN = undefined cluster.
    m : training-set size (Cor 3.2 uses the sample size of the likelihood).

    Computed in log space: ``log P_temp = m e^{log D} log P_sgd − logsumexp``.
    Zero-mass clusters: ``0^x = 0`` for ``x = m D > 0``, so they stay at 0.
    Clusters with P_sgd > 0 but undefined D are set to 0 and listed (the
    formula cannot be evaluated there). ``collapsed`` is True when one cluster
    holds at least ``1 − collapse_tol`` of the mass; the formula is never altered.
    """
    v = np.asarray(p_sgd, dtype=float)
    if v.ndim != 1 or (v < 0).any() or not np.isfinite(v).all() or v.sum() <= 0:
        raise ValueError("p_sgd must be a non-negative, finite, non-zero vector")
    if m <= 0:
        raise ValueError("m must be > 0")
    if pseudocount > 0:
        v = v + pseudocount
    P = v / v.sum()
    log_D = np.asarray(log_D, dtype=float)
    if log_D.shape != P.shape:
        raise ValueError("log_D must have one value per category")
    cats = list(categories) if categories is not None else list(range(P.size))
    notes = []
    undefined = ~np.isfinite(log_D)
    bad = undefined & (P > 0)
    if bad.any():
        notes.append(f"categories {[c for c, b in zip(cats, bad) if b]} have P_sgd > 0 but undefined D: "
                     "set to 0 (formula not evaluable)")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        expo = m * np.exp(np.where(undefined, 0.0, log_D))
        logP = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), -np.inf)
        logits = np.where(P > 0, expo * logP, -np.inf)  # 0^x = 0 for x > 0
    logits = np.where(undefined, -np.inf, logits)
    # expo*logP can be -inf (expo overflow) or NaN (inf * 0 when P = 1): P = 1 -> log P = 0 -> 0
    logits = np.where((P == 1.0) & ~undefined, 0.0, logits)
    logits = np.where(np.isnan(logits), -np.inf, logits)
    if not np.isfinite(logits).any():
        raise TemperingUndefined("tempered distribution undefined: every cluster underflows or is undefined "
                         "(all m*D*log P_sgd = -inf); report the exponents instead")
    lpt = logits - logsumexp(logits)
    pt = np.exp(lpt)
    collapsed = bool(pt.max() >= 1.0 - collapse_tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.sum(np.where(pt > 0, pt * lpt, 0.0))
    if collapsed:
        from .cluster import category_names

        notes.append(f"tempered distribution collapsed onto {category_names(cats)[int(np.argmax(pt))]} "
                     f"(mass {pt.max():.6g}); formula unchanged")
    return TemperedResult(cats, P, np.where(undefined, np.nan, log_D), np.where(undefined, np.nan, expo),
                          pt, lpt, float(m), xi, collapsed, collapse_tol, float(np.exp(ent)),
                          float(pseudocount), notes)



def make_tempered_fn(labels, categories: Sequence, alpha, xi: float, m: float, *,
                     pseudocount: float = 0.0):
    """A function ``idx -> P_temp`` for :func:`sgdbayes.stats.divergence.bootstrap_divergences`
    (``dist_p=``/``dist_q=``; with ``pseudocount=0.5`` as ``smoothed_*=``).

    For a resample of SGD runs ``idx`` it recomputes the cluster counts and the
    per-cluster mean log D_ξ (Cor 3.1) from those runs and returns the
    Cor 3.2 tempered distribution at the fixed ``xi`` (ξ* is *not* re-selected
    inside the bootstrap: the interval is conditional on ξ*; say so).
    """
    cats = list(categories)
    K = len(cats)
    pos = label_positions(labels, cats)
    alpha = np.asarray(alpha, dtype=float)
    valid = valid_alpha(alpha)
    inv_alpha = np.where(valid, 1.0 / np.where(valid, alpha, 1.0), np.nan)

    def fn(idx):
        idx = np.asarray(idx)
        counts = np.bincount(pos[idx], minlength=K).astype(float)
        dw, _ = group_mean(pos[idx], K, inv_alpha[idx], valid[idx])
        log_D = (2.0 - dw) * np.log(xi)
        return tempered_distribution(counts, log_D, m, categories=cats, xi=xi,
                                     pseudocount=pseudocount).p_temp

    return fn
