"""Figures of the posterior-concentration report (matplotlib Agg + seaborn).

Every function takes numbers the stages stored (never the data set, never a refit), writes one
PNG atomically with :func:`~sgdbayes.reporting.toolkit.save_figure` and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .format import fmt_num  # noqa: E402
from .toolkit import apply_style, save_figure  # noqa: E402

__all__ = [
    "fig_llc_hist", "fig_cluster_masses", "fig_xi_sweep", "fig_loss_curves",
    "fig_sgld_traces", "fig_clusters_plane", "fig_embedding",
]

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


def _save(fig, path: Path, dpi: int) -> Path:
    return save_figure(fig, path, dpi=dpi)


def _color(i: int, name: str) -> str:
    return "#444444" if name == "noise" else _PALETTE[i % len(_PALETTE)]


def fig_llc_hist(path, llc: np.ndarray, labels: np.ndarray, names: Sequence[str],
                 categories: Sequence[int], nbeta: float, dpi: int = 110) -> Path:
    """Fig 4a: histogram of λ̂ of the SGD solutions, stacked by cluster; λ̂ < 0 marked."""
    apply_style()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    llc = np.asarray(llc, float)
    fin = np.isfinite(llc)
    bins = np.histogram_bin_edges(llc[fin], bins=min(40, max(8, int(np.sqrt(fin.sum())) + 1)))
    data = [llc[fin & (labels == c)] for c in categories]
    ax.hist(data, bins=bins, stacked=True, label=list(names),
            color=[_color(i, n) for i, n in enumerate(names)], edgecolor="white", linewidth=0.4)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    n_neg = int((llc[fin] < 0).sum())
    ax.set_xlabel(r"$\hat\lambda$ (local learning coefficient), $n\beta$ = " + f"{nbeta:.3g}")
    ax.set_ylabel("SGD solutions")
    ax.set_title(f"LLC of SGD solutions (n = {fin.sum()}; {n_neg} with " + r"$\hat\lambda<0$)")
    ax.legend(fontsize=7, title="cluster", title_fontsize=7)
    return _save(fig, path, dpi)


def fig_cluster_masses(path, names: Sequence[str], dists: Mapping[str, np.ndarray],
                       intervals: Mapping[str, np.ndarray] | None = None, subtitle: str = "",
                       dpi: int = 110) -> Path:
    """Fig 4b: cluster masses under SGD, SGLD, free energy, tempered SGD (bars; CIs where given)."""
    apply_style()
    K = len(names)
    keys = list(dists)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * K + 3), 3.8))
    width = 0.8 / max(1, len(keys))
    x = np.arange(K)
    for j, key in enumerate(keys):
        v = np.asarray(dists[key], float)
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, v, width, label=key, color=_PALETTE[j % len(_PALETTE)])
        if intervals and key in intervals and intervals[key] is not None:
            ci = np.asarray(intervals[key], float)
            ok = np.isfinite(ci).all(axis=1)
            ax.errorbar(pos[ok], v[ok], yerr=np.abs(np.stack([v[ok] - ci[ok, 0], ci[ok, 1] - v[ok]])),
                        fmt="none", ecolor="k", elinewidth=0.8, capsize=2)
    ax.set_xticks(x, list(names))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability mass")
    ax.set_title("Cluster concentrations" + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, dpi)


def fig_xi_sweep(path, xi: np.ndarray, kl: np.ndarray, xi_star: float, kl_heldout: np.ndarray | None = None,
                 xi_star_boot: np.ndarray | None = None, xi_star_ci: Sequence[float] | None = None,
                 dpi: int = 110) -> Path:
    """Fig 3: KL(P_sgd ‖ p_theory(ξ)) over the ξ grid; ξ* and its bootstrap interval."""
    apply_style()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.plot(xi, kl, color=_PALETTE[0], lw=1.5, label="all seeds (in-sample)")
    if kl_heldout is not None:
        ax.plot(xi, kl_heldout, color=_PALETTE[1], lw=1.0, ls="--", label="held-out half")
    if np.isfinite(xi_star):
        ax.axvline(xi_star, color="k", lw=0.8, ls=":", label=rf"$\xi^*$ = {xi_star:.3g}")
    if xi_star_ci is not None and np.all(np.isfinite(xi_star_ci)):
        ax.axvspan(xi_star_ci[0], xi_star_ci[1], color="grey", alpha=0.2, label=r"bootstrap 95% CI of $\xi^*$")
    ax.set_xscale("log")
    ax.set_xlabel(r"scale $\xi$")
    ax.set_ylabel(r"KL($P_{sgd}$ ‖ $p_{theory}(\xi)$) [nats]")
    ax.set_title(r"$\xi$ sweep (Fig 3)")
    ax.legend(fontsize=7)
    return _save(fig, path, dpi)


def fig_loss_curves(path, steps: np.ndarray, loss: np.ndarray, passed: np.ndarray, medians: Mapping[bool, object],
                    window: float, rel_tol: float, dpi: int = 110) -> Path:
    """Training loss curves of every run; convergence window shaded, runs coloured by the filter;
    ``medians[True]`` / ``medians[False]``: the stored median curve of the runs that pass / fail."""
    apply_style()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = np.asarray(steps)
    T = steps[-1]
    for ax, logy in zip(axes, (False, True)):
        for ok, col, lab in ((False, "#d62728", "fails filter"), (True, "#1f77b4", "passes filter")):
            sel = np.flatnonzero(passed == ok)
            if sel.size == 0:
                continue
            show = sel[np.linspace(0, sel.size - 1, min(sel.size, 150)).astype(int)]
            for i, k in enumerate(show):
                ax.plot(steps, loss[k], color=col, lw=0.3, alpha=0.35, label=lab if i == 0 else None)
            ax.plot(steps, medians[ok], color=col, lw=1.8, label=f"median, {lab} (n = {sel.size})")
        ax.axvspan((1 - window) * T, T, color="grey", alpha=0.15,
                   label=f"last {window:.0%} of steps (plateau: rel. drop < {rel_tol:g})")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training loss (mean minibatch loss\nbetween record points)")
        if logy:
            ax.set_yscale("log")
            ax.set_xscale("log")
    axes[0].legend(fontsize=6)
    fig.suptitle("Loss curves and the convergence filter", fontsize=10)
    return _save(fig, path, dpi)


def fig_sgld_traces(path, loss_traces: np.ndarray, labels: np.ndarray, names: Sequence[str],
                    categories: Sequence[int], seed_labels: np.ndarray, max_traces: int = 8,
                    dpi: int = 110) -> Path:
    """SGLD loss traces per chain (top) and the cluster each sample is assigned to (bottom)."""
    apply_style()
    C = loss_traces.shape[0]
    show = np.arange(min(C, max_traces))
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.2), sharex=True)
    pos = {c: i for i, c in enumerate(categories)}
    for j, c in enumerate(show):
        col = _PALETTE[j % len(_PALETTE)]
        axes[0].plot(loss_traces[c], color=col, lw=0.6, label=f"chain {c} (seed {names[pos[seed_labels[c]]]})")
        y = np.array([pos[int(v)] for v in labels[c]]) + (j - len(show) / 2) * 0.03
        axes[1].plot(y, color=col, lw=0.6, drawstyle="steps-mid")
    axes[0].set_ylabel("training loss (full batch)")
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].set_yticks(range(len(names)), list(names))
    axes[1].set_ylabel("assigned cluster")
    axes[1].set_xlabel("SGLD sample (after burn-in)")
    fig.suptitle(f"SGLD chains ({C} chains; {len(show)} shown)", fontsize=10)
    return _save(fig, path, dpi)


def fig_clusters_plane(path, grid_x: np.ndarray, grid_y: np.ndarray, mean_prob: np.ndarray,
                       member_probs: Sequence[np.ndarray], names: Sequence[str], masses: Sequence[float],
                       x_train: np.ndarray, y_train: np.ndarray, dpi: int = 110) -> Path:
    """Clusters on the moons input plane: mean P(class 1) per cluster, its 0.5 contour (thick)
    and the decision boundaries of a few member networks (thin); all stored by the cluster stage
    (``mean_prob`` ``[K, g, g]``, NaN without members; ``member_probs`` ``[K, 8, g, g]``, NaN padded)."""
    apply_style()
    K = len(names)
    ncol = min(K, 4)
    nrow = int(np.ceil(K / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.0 * nrow), squeeze=False)
    for i in range(nrow * ncol):
        ax = axes.flat[i]
        if i >= K:
            ax.axis("off")
            continue
        if not np.isfinite(mean_prob[i]).all():
            ax.text(0.5, 0.5, "no members", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.contourf(grid_x, grid_y, mean_prob[i], levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
            for mp in member_probs[i]:
                if np.isfinite(mp).all():  # NaN pads clusters with fewer than 8 stored members
                    ax.contour(grid_x, grid_y, mp, levels=[0.5], colors="k", linewidths=0.4, alpha=0.4)
            ax.contour(grid_x, grid_y, mean_prob[i], levels=[0.5], colors="k", linewidths=1.8)
        ax.scatter(x_train[:, 0], x_train[:, 1], c=y_train, cmap="RdBu_r", s=3, edgecolors="none")
        ax.set_title(f"{names[i]} (P_sgd = {fmt_num(masses[i])})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Clusters on the input plane: mean P(y=1) and decision boundaries", fontsize=10)
    return _save(fig, path, dpi)


def fig_embedding(path, emb: np.ndarray, labels: np.ndarray, names: Sequence[str], categories: Sequence[int],
                  sgld_emb: np.ndarray | None = None, dpi: int = 110) -> Path:
    """SGD solutions in the first two PCA components of the function-space embedding (+ SGLD samples)."""
    apply_style()
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    if sgld_emb is not None and len(sgld_emb):
        ax.scatter(sgld_emb[:, 0], sgld_emb[:, 1], s=2, c="#bbbbbb", alpha=0.4, label="SGLD samples")
    for i, c in enumerate(categories):
        m = labels == c
        if m.any():
            ax.scatter(emb[m, 0], emb[m, 1], s=8, color=_color(i, names[i]), label=f"{names[i]} (n={m.sum()})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Function-space embedding (PCA of standardized probe predictions)", fontsize=9)
    ax.legend(fontsize=6, markerscale=2)
    return _save(fig, path, dpi)
