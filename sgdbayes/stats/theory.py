"""The theory's distributions over clusters of SGD solutions (paper §3.3, Lemmas 3.2-3.3,
Cor 3.1; the SLT free energy; docs/methods.md, "Posterior concentration").

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
* **SLT free-energy reference** (Watanabe): ``F_c ≈ m L_c + λ_c log m``,
  ``P_F(c) ∝ exp(−F_c)``, with ``L_c`` the mean per-sample negative
  log-likelihood (training loss) and ``λ_c`` the mean LLC of the cluster.

HDBSCAN's noise label is a category like any other here. Categories with no SGD runs have
undefined ``L_c`` / ``D_ξ(c)``: they get probability 0 under ``p_theory`` and ``P_F``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from .bootstrap import label_positions
from .results import Result, estimate_row

__all__ = ["default_xi_grid", "valid_alpha", "log_diffusion", "diffusion_coefficient", "ClusterProperties",
           "group_mean", "cluster_properties", "theoretical_distribution", "kl_sgd_theory", "FreeEnergyResult",
           "free_energy_distribution", "cluster_table"]


def default_xi_grid() -> np.ndarray:
    """Log grid of ξ: 10^-2 .. 10^2, 81 points (20 per decade)."""
    return np.logspace(-2, 2, 81)


def valid_alpha(alpha) -> np.ndarray:
    a = np.asarray(alpha, dtype=float)
    return np.isfinite(a) & (a > 0)


def log_diffusion(xi, alpha) -> np.ndarray:
    """``log D_ξ = (2 − d_walk) log ξ`` with ``d_walk = 1/α`` (Lemma 3.2, Cor 3.1 eq 13).

    Raises for α ≤ 0 or non-finite α (no walk dimension); filter such runs first.
    """
    a = np.asarray(alpha, dtype=float)
    if not valid_alpha(a).all():
        raise ValueError("alpha must be finite and > 0 (d_walk = 1/alpha)")
    xi = np.asarray(xi, dtype=float)
    if (xi <= 0).any():
        raise ValueError("xi must be > 0")
    return (2.0 - 1.0 / a) * np.log(xi)


def diffusion_coefficient(xi, alpha) -> np.ndarray:
    """``D_ξ = ξ^(2 − 1/α)`` (Lemma 3.2, Cor 3.1 eq 13)."""
    return np.exp(log_diffusion(xi, alpha))


# ----------------------------------------------------------------------------
# per-cluster properties
# ----------------------------------------------------------------------------

def _names(categories) -> list:
    from .cluster import category_names

    return category_names(categories)


@dataclass
class ClusterProperties(Result):
    """Per-cluster inputs of the tempering formulas, in a fixed category order.

    ``n`` runs per cluster, ``mass`` = P_sgd(c) = n/N, ``loss`` = L_c (mean final
    training loss), ``d_walk`` = mean of 1/α over the cluster's valid runs,
    ``alpha`` = mean α over valid runs, ``llc`` = mean λ (NaN where undefined).
    ``defined`` marks clusters with runs, finite loss and ≥ 1 valid α.
    """

    categories: list
    n: np.ndarray
    mass: np.ndarray
    loss: np.ndarray
    d_walk: np.ndarray
    alpha: np.ndarray
    llc: np.ndarray
    n_alpha_valid: np.ndarray
    n_alpha_invalid: np.ndarray

    @property
    def defined(self) -> np.ndarray:
        return (self.n > 0) & np.isfinite(self.loss) & (self.n_alpha_valid > 0)

    def _estimate_rows(self, level: float) -> list[dict]:
        """Point values per category: mass, L_c, mean λ_c, mean α_c, mean d_walk (no intervals)."""
        rows = []
        for nm, mass, L, lam, a, dw in zip(_names(self.categories), self.mass, self.loss, self.llc, self.alpha,
                                           self.d_walk):
            rows += [estimate_row(f"P_sgd[{nm}]", mass), estimate_row(f"L_c[{nm}]", L),
                     estimate_row(f"llc_c[{nm}]", lam), estimate_row(f"alpha_c[{nm}]", a),
                     estimate_row(f"d_walk_c[{nm}]", dw)]
        return rows

    def log_D(self, xi: float) -> np.ndarray:
        """Mean log D_ξ(c) = (2 − mean d_walk) log ξ; NaN for undefined clusters."""
        return (2.0 - self.d_walk) * np.log(xi)

    def to_frame(self, xi: Optional[float] = None) -> pd.DataFrame:
        from .cluster import category_names

        df = pd.DataFrame({
            "category": self.categories, "name": category_names(self.categories), "n": self.n,
            "P_sgd": self.mass, "L_c": self.loss, "llc_c": self.llc, "alpha_c": self.alpha,
            "d_walk_c": self.d_walk, "n_alpha_valid": self.n_alpha_valid,
            "n_alpha_invalid": self.n_alpha_invalid, "defined": self.defined,
        })
        if xi is not None:
            df["log_D_xi"] = self.log_D(xi)
            df["D_xi"] = np.exp(df["log_D_xi"])
        return df


def group_mean(pos, K, values, mask=None):
    v = np.asarray(values, dtype=float)
    m = np.isfinite(v) if mask is None else (mask & np.isfinite(v))
    s = np.bincount(pos[m], weights=v[m], minlength=K)
    c = np.bincount(pos[m], minlength=K)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    return out, c


def cluster_properties(labels, categories: Sequence, loss, alpha, llc=None) -> ClusterProperties:
    """Per-cluster n, P_sgd, L_c, mean d_walk (= mean 1/α), mean α, mean λ.

    ``labels``, ``loss``, ``alpha`` (and ``llc``) have one entry per SGD run.
    Noise (``-1``) is treated as any other category when it is in ``categories``.
    """
    cats = list(categories)
    pos = label_positions(labels, cats)
    K = len(cats)
    loss = np.asarray(loss, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    if loss.shape != pos.shape or alpha.shape != pos.shape:
        raise ValueError("loss and alpha need one value per run")
    n = np.bincount(pos, minlength=K)
    N = pos.size
    valid = valid_alpha(alpha)
    inv_alpha = np.where(valid, 1.0 / np.where(valid, alpha, 1.0), np.nan)
    d_walk, n_valid = group_mean(pos, K, inv_alpha, valid)
    a_mean, _ = group_mean(pos, K, alpha, valid)
    L, _ = group_mean(pos, K, loss)
    if llc is not None:
        lam, _ = group_mean(pos, K, llc)
    else:
        lam = np.full(K, np.nan)
    n_invalid = n - n_valid
    return ClusterProperties(cats, n, n / N if N else np.zeros(K), L, d_walk, a_mean, lam,
                             n_valid, n_invalid)


# ----------------------------------------------------------------------------
# theoretical distribution and the xi sweep
# ----------------------------------------------------------------------------

def _log_p_theory(loss_c, log_D_c, lr):
    """log p_theory for defined clusters (others -inf), normalised over the last
    axis; arrays broadcast as [..., K].

    Overflow-safe: with ``s_c = log(γ L_c) − log D_c`` the logits are
    ``−e^{s_c}``; we subtract the largest logit analytically,
    ``e^{s_c} − e^{s_min} = e^{s_c + log(−expm1(s_min − s_c))}``, so clusters
    whose ``γ L_c / D_c`` overflows get probability 0 relative to the winner
    instead of producing NaN.
    """
    if lr <= 0:
        raise ValueError("lr (gamma) must be > 0")
    loss_c = np.asarray(loss_c, dtype=float)
    log_D_c = np.asarray(log_D_c, dtype=float)
    loss_c, log_D_c = np.broadcast_arrays(loss_c, log_D_c)
    defined = np.isfinite(loss_c) & np.isfinite(log_D_c)
    if (loss_c[defined] < 0).any():
        raise ValueError("cluster losses must be >= 0 (mean negative log-likelihood)")
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s = np.where(defined, np.log(lr) + np.log(np.where(defined, loss_c, 1.0)) - np.where(defined, log_D_c, 0.0),
                     np.inf)
        s_min = np.min(s, axis=-1, keepdims=True)
        gap = np.where(s == s_min, 0.0,
                       np.exp(s + np.log(-np.expm1(np.minimum(s_min - s, 0.0)))))
    gap = np.where(defined, gap, np.inf)
    logits = -gap
    norm = logsumexp(logits, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        out = logits - norm
    return np.where(np.isfinite(norm), out, -np.inf)


def theoretical_distribution(loss_c, log_D_c, lr: float) -> np.ndarray:
    """Lemma 3.3 over clusters: ``p_theory(c; ξ) ∝ exp(−γ L_c / D_ξ(c))``.

    ``log_D_c`` = per-cluster mean log D_ξ (Cor 3.1); ``lr`` = γ. Clusters with
    undefined (NaN) L_c or log D get probability 0. Computed in log space.
    """
    lp = _log_p_theory(loss_c, log_D_c, lr)
    if not np.isfinite(lp).any():
        raise ValueError("no cluster has a defined p_theory (all L_c/D_c undefined or overflow)")
    return np.exp(lp)


def _kl_log(p, log_q):
    """KL(p ‖ q) with q given in log space; p over the last axis. inf if q=0<p."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)
    terms = np.where((p > 0) & ~np.isfinite(log_q), np.inf, terms)
    return np.maximum(terms.sum(-1), 0.0)


def kl_sgd_theory(p_sgd, loss_c, d_walk_c, lr: float, xi_grid) -> np.ndarray:
    """``KL(P_sgd ‖ p_theory(ξ))`` for every ξ in ``xi_grid`` (Fig 3), with
    ``log D_ξ(c) = (2 − d_walk_c) log ξ``. Returns an array [len(xi_grid)];
    ``inf`` where p_theory is 0 on a cluster with P_sgd > 0."""
    xi = np.asarray(xi_grid, dtype=float)
    p = np.asarray(p_sgd, dtype=float)
    p = p / p.sum()
    log_D = (2.0 - np.asarray(d_walk_c, dtype=float))[None, :] * np.log(xi)[:, None]
    lq = _log_p_theory(np.asarray(loss_c, dtype=float)[None, :], log_D, lr)
    return _kl_log(p[None, :], lq)


@dataclass
class FreeEnergyResult(Result):
    """SLT free-energy reference: ``F_c ≈ m L_c + λ_c log m``, ``P_F ∝ exp(−F_c)``."""

    categories: list
    loss: np.ndarray
    llc: np.ndarray
    free_energy: np.ndarray
    p_f: np.ndarray
    m: float
    notes: list = field(default_factory=list)

    def _estimate_rows(self, level: float) -> list[dict]:
        rows = []
        for nm, F, p in zip(_names(self.categories), self.free_energy, self.p_f):
            rows += [estimate_row(f"F[{nm}]", F), estimate_row(f"P_F[{nm}]", p)]
        return rows

    def to_frame(self) -> pd.DataFrame:
        from .cluster import category_names

        return pd.DataFrame({"category": self.categories, "name": category_names(self.categories),
                             "L_c": self.loss, "llc_c": self.llc, "F_c": self.free_energy, "P_F": self.p_f})

    def summary(self) -> str:
        s = f"SLT free-energy reference (Watanabe), m = {self.m:g}: P_F = " + ", ".join(
            f"{c}: {p:.4g}" for c, p in zip(self.categories, self.p_f))
        for n in self.notes:
            s += f"\n  note: {n}"
        return s


def free_energy_distribution(loss_c, llc_c, m: float, categories: Optional[Sequence] = None) -> FreeEnergyResult:
    """Watanabe's asymptotic local free energy ``F_c ≈ m L_c + λ_c log m`` and
    ``P_F(c) ∝ exp(−F_c)`` (log space). ``L_c`` = mean per-sample NLL (training
    loss), ``λ_c`` = mean LLC. Undefined (NaN) clusters get P_F = 0 and a note.
    Negative λ_c are used as given (they lower F_c) and noted.
    """
    L = np.asarray(loss_c, dtype=float)
    lam = np.asarray(llc_c, dtype=float)
    if L.shape != lam.shape or L.ndim != 1:
        raise ValueError("loss_c and llc_c must be 1-D of equal length")
    if m <= 1:
        raise ValueError("m must be > 1")
    cats = list(categories) if categories is not None else list(range(L.size))
    notes = []
    F = m * L + lam * np.log(m)
    ok = np.isfinite(F)
    if (~ok).any():
        notes.append(f"categories {[c for c, o in zip(cats, ok) if not o]} have undefined L_c or λ_c: P_F = 0")
    if not ok.any():
        raise ValueError("no category has a defined free energy")
    if (lam[np.isfinite(lam)] < 0).any():
        notes.append("some λ_c < 0 (LLC estimation artefact); used as given")
    logits = np.where(ok, -F, -np.inf)
    p = np.exp(logits - logsumexp(logits))
    return FreeEnergyResult(cats, L, lam, np.where(ok, F, np.nan), p, float(m), notes)


def cluster_table(labels, categories: Sequence, properties: ClusterProperties, *, acc, llc,
                  columns: Optional[dict] = None) -> pd.DataFrame:
    """One row per category (the numbers behind Fig 4b): ``n``, ``P_sgd`` = n / N, ``L_c``, the
    mean train accuracy ``acc_c``, ``llc_c`` with its sd over the cluster's runs (``llc_sd``; NaN
    with one run) and the count of negative λ̂, ``alpha_c``, ``d_walk_c`` (from ``properties``),
    then ``columns`` (per-category arrays such as P_temp, P_SGLD, P_F) in their order."""
    from .cluster import category_names

    labels, acc, llc = np.asarray(labels), np.asarray(acc, float), np.asarray(llc, float)
    cats = list(categories)
    rows = []
    for i, c in enumerate(cats):
        sel = labels == c
        rows.append({"category": c, "name": category_names(cats)[i], "n": int(sel.sum()),
                     "P_sgd": float(sel.sum() / labels.size), "L_c": float(properties.loss[i]),
                     "acc_c": float(np.nanmean(acc[sel])) if sel.any() else float("nan"),
                     "llc_c": float(properties.llc[i]),
                     "llc_sd": float(np.nanstd(llc[sel], ddof=1)) if sel.sum() > 1 else float("nan"),
                     "n_llc_negative": int((llc[sel] < 0).sum()), "alpha_c": float(properties.alpha[i]),
                     "d_walk_c": float(properties.d_walk[i]),
                     **{k: np.asarray(v)[i].item() for k, v in (columns or {}).items()}})
    return pd.DataFrame(rows)
