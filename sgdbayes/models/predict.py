"""Class probabilities of stacked models: the inputs of function-space clustering."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["class_probabilities"]


@torch.no_grad()
def class_probabilities(model, w: Tensor, x: Tensor, state=None, *, free: bool = True,
                        chunk: int = 256) -> np.ndarray:
    """Softmax probabilities of every class, eval mode: ``[K, n, C - 1]`` float32 (``free``:
    class 0 dropped, it is one minus the others; for a binary problem this is exactly
    P(y = 1)) or ``[K, n, C]``. ``model`` is a family (e.g. ``ensemble.spec``), ``w [K, P]``
    its weights, ``x [n, ...]`` the probe inputs shared by all models, ``state`` the per-seed
    state (BatchNorm running statistics). Chunked over models."""
    from .protocol import state_select

    out = []
    lo = 1 if free else 0
    for s in range(0, w.shape[0], chunk):
        st = state_select(state, slice(s, s + chunk))
        logits = model.apply(w[s:s + chunk], x, st, train=False, shared=True)
        out.append(torch.softmax(logits, -1)[..., lo:].float().cpu().numpy())
    return np.concatenate(out, 0)
