"""Parameter layouts: rows ``[K, P]`` (one model per row, ``parameters()`` order) and the
*entry-blocked* layout the optimizers and batched kernels act on (one block
``[k, *shape]`` per parameter tensor, contiguous over the k models)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["EntryLayout", "split_rows"]


class EntryLayout:
    """One block ``[k, *shape]`` per parameter tensor, in the given order."""

    def __init__(self, shapes: Sequence[tuple[int, ...]]):
        self.shapes = [tuple(int(s) for s in shape) for shape in shapes]
        self.numels = [math.prod(s) for s in self.shapes]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.numels))]
        self.n_params = sum(self.numels)

    def views(self, flat: Tensor, k: int) -> list[Tensor]:
        out, off = [], 0
        for shape, n in zip(self.shapes, self.numels):
            out.append(flat[off:off + k * n].view(k, *shape))
            off += k * n
        return out

    def pack(self, blocks: list[Tensor]) -> Tensor:
        return torch.cat([v.reshape(v.shape[0], -1) for v in blocks], dim=1)

    def unpack(self, w: Tensor, blocks: list[Tensor]) -> None:
        for v, shape, off, n in zip(blocks, self.shapes, self.offsets, self.numels):
            v.copy_(w[:, off:off + n].reshape(v.shape))


def split_rows(w: Tensor, shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
    """Views ``[M, *shape]`` of the parameter tensors in rows ``w [M, P]`` (no copy when
    ``w`` is row-contiguous)."""
    out, off = [], 0
    M = w.shape[0]
    for shape in shapes:
        n = math.prod(shape)
        out.append(w[:, off:off + n].reshape(M, *shape))
        off += n
    if off != w.shape[1]:
        raise ValueError(f"weights have P = {w.shape[1]} columns, the model has {off} parameters")
    return out
