"""Record grid, per-seed minibatch order and displacement (the engine's bookkeeping).

Minibatch order of seed i: :func:`batch_indices` -- a per-seed numpy generator
``default_rng([seed_i, batch_stream])``; each epoch is the argsort of ``n`` uniform keys
(a uniform random permutation), cut into ``n // B`` batches of exactly ``B`` examples
(**drop_last=True**: the ``n mod B`` left-over examples of an epoch are not used in that
epoch; every step sees a full batch).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["record_grid", "batch_indices", "BatchStream", "displacement", "displacement_sq_blocks"]


def record_grid(n_steps: int, every: int, n_log: int) -> np.ndarray:
    """Sorted unique steps in [1, n_steps]: ``n_log`` geometric points
    round(geomspace(1, n_steps)), every ``every``-th step, and ``n_steps``."""
    parts = [np.arange(every, n_steps + 1, every), [n_steps]]
    if n_log > 0:
        parts.append(np.rint(np.geomspace(1, n_steps, n_log)))
    g = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
    return g[(g >= 1) & (g <= n_steps)]


def _epoch_keys(rngs: Sequence[np.random.Generator], n_epochs: int, n: int) -> np.ndarray:
    return np.stack([r.random((n_epochs, n)) for r in rngs])


def batch_indices(seed: int, n: int, batch_size: int, n_steps: int, stream: int = 0) -> np.ndarray:
    """Minibatch indices ``[n_steps, batch_size]`` of one seed (drop_last=True).

    Epoch e's order is ``argsort`` of ``default_rng([seed, stream]).random((E, n))[e]``.
    The engine generates the same stream in blocks of epochs for many seeds at once.
    """
    spe = n // batch_size
    if spe == 0:
        raise ValueError(f"batch_size {batch_size} > number of training examples {n}")
    n_epochs = -(-n_steps // spe)
    keys = np.random.default_rng([seed, stream]).random((n_epochs, n))
    perm = np.argsort(keys, axis=1, kind="stable")[:, : spe * batch_size]
    return perm.reshape(n_epochs * spe, batch_size)[:n_steps]


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, axis=-1, kind="stable")``, faster: numpy's default (SIMD) argsort,
    whose order can differ from the stable one only between equal keys, so it is kept
    when every sorted row is strictly increasing (measured 0.11 vs 0.17 s for [250, 32, 512])."""
    perm = np.argsort(keys, axis=-1)
    s = np.take_along_axis(keys, perm, axis=-1)
    if (s[..., 1:] > s[..., :-1]).all():
        return perm
    return np.argsort(keys, axis=-1, kind="stable")


class BatchStream:
    """Per-seed minibatch indices for a chunk of seeds, generated a block of epochs at a time
    (at most ``max_bytes`` of keys, and no more epochs than ``n_steps`` need: the stream of a
    seed does not depend on the block size)."""

    def __init__(self, seeds, n, batch_size, stream, device, max_bytes=2 ** 25, n_steps=None):
        self.rngs = [np.random.default_rng([s, stream]) for s in seeds]
        self.n, self.B = n, batch_size
        self.spe = n // batch_size
        self.block_epochs = max(1, max_bytes // (8 * n * len(seeds)))
        if n_steps is not None:
            self.block_epochs = min(self.block_epochs, -(-int(n_steps) // self.spe))
        self.device = device
        self.buf: Tensor | None = None
        self.pos = 0

    def next(self) -> Tensor:
        """Indices ``[k * B]`` (flattened ``[k, B]``) of the next step."""
        if self.buf is None or self.pos >= self.buf.shape[0]:
            keys = _epoch_keys(self.rngs, self.block_epochs, self.n)      # [k, E, n]
            perm = _stable_argsort(keys)[:, :, : self.spe * self.B]
            k = perm.shape[0]
            perm = perm.reshape(k, self.block_epochs * self.spe, self.B).transpose(1, 0, 2)
            self.buf = torch.from_numpy(np.ascontiguousarray(perm).reshape(perm.shape[0], -1)).to(self.device)
            self.pos = 0
        out = self.buf[self.pos]
        self.pos += 1
        return out


def displacement(w: Tensor, w0: Tensor) -> Tensor:
    """R(t) = ||w_t - w_0||_2 per model (docs/methods.md), rows of ``[K, P]`` -> ``[K]`` float64
    (accumulated in float64: a float32 norm overflows long before the weights do)."""
    return torch.linalg.vector_norm(w - w0, dim=1, dtype=torch.float64)


def displacement_sq_blocks(diff_blocks: Sequence[Tensor], k: int) -> Tensor:
    """Sum over blocks of per-model squared norms, accumulated in float64: ``[k]``."""
    d2 = torch.zeros(k, dtype=torch.float64, device=diff_blocks[0].device)
    for v in diff_blocks:
        d2 += torch.linalg.vector_norm(v.reshape(k, -1), dim=1, dtype=torch.float64).square()
    return d2
