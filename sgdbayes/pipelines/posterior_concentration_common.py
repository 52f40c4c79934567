"""Helpers shared by the stages of the posterior_concentration study (its pipeline module and the
``reference`` stage): the dataset, the model family, P(y = 1) of many models, the SGD clusterer
and the choice of SGLD starts."""
from __future__ import annotations

import numpy as np
import torch

from ..runner.orchestrate import StageContext

__all__ = ["select_sgld_starts"]


def _dataset(ctx: StageContext):
    return ctx.config.data.load("cpu")


def _spec(ctx: StageContext, data):
    return ctx.config.model.spec(data.n_features, data.n_classes)


@torch.no_grad()
def _prob1(spec, w: torch.Tensor, x: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """P(y = 1) of each model on x: ``[K, n]`` float32 (chunked over models)."""
    out = []
    for s in range(0, w.shape[0], chunk):
        logits = spec.forward(w[s:s + chunk], x, train=False)
        out.append(torch.softmax(logits, -1)[..., 1].float().cpu().numpy())
    return np.concatenate(out, 0)


def _rank(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v, method="average")


def select_sgld_starts(loss: np.ndarray, llc: np.ndarray, labels: np.ndarray, n_chains: int,
                       seeding: str, categories: list[int]) -> tuple[np.ndarray, str]:
    """Indices (into the kept runs) that seed SGLD, and a sentence saying how.

    Score = rank of final training loss + rank of λ̂ (both ascending; lower = better);
    runs with λ̂ <= 0 or non-finite λ̂ are not eligible (λ̂ <= 0 is an estimation
    artefact, it would otherwise win the λ ranking) unless too few runs remain.
    ``lowest``: the ``n_chains`` best scores overall. ``per_cluster``: the best score
    of every non-noise cluster (noise is not a basin).
    """
    K = loss.size
    eligible = np.isfinite(llc) & (llc > 0) & np.isfinite(loss)
    note = "runs with λ̂ ≤ 0 excluded"
    if eligible.sum() < max(1, min(n_chains, K)):
        eligible = np.isfinite(llc) & np.isfinite(loss)
        note = "too few runs with λ̂ > 0, so runs with λ̂ ≤ 0 were eligible too"
    idx = np.flatnonzero(eligible)
    score = _rank(loss[idx]) + _rank(llc[idx])
    order = idx[np.lexsort((loss[idx], score))]
    if seeding == "lowest":
        pick = order[:n_chains]
        how = (f"the {pick.size} kept runs with the smallest (rank of final training loss + rank of λ̂), "
               f"ties broken by loss; {note}")
    else:
        pick = []
        for c in categories:
            if c == -1:
                continue
            members = order[labels[order] == c]
            if members.size:
                pick.append(members[0])
        pick = np.asarray(pick, dtype=int)
        how = (f"one chain per cluster ({pick.size} chains), each seeded from the cluster's run with the "
               f"smallest (rank of loss + rank of λ̂); {note}")
    return np.asarray(pick, dtype=int), how


def _clusterer(ctx: StageContext):
    from ..stats.cluster import FunctionSpaceClusterer

    c = ctx.config.cluster
    return FunctionSpaceClusterer(n_components=c.pca_dim, min_cluster_size=c.min_cluster_size, fallback="gmm",
                                  max_k=c.gmm_max_k, random_state=c.seed)
