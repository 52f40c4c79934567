"""Per-chain random streams: minibatches and Gaussian noise, one pair of generators per row.

Chain c of model k draws its streams from ``(seed, model_id, c)`` only
(:func:`chain_seeds`), so it gets the same minibatches and the same noise whatever else is
batched with it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .._validation import check_int

__all__ = ["chain_seeds", "ChainStreams", "noise_chunk_steps"]


def chain_seeds(seed: int, model_ids: Sequence[int], num_chains: int) -> list[tuple[int, int]]:
    """Per-row (noise_seed, data_seed) for rows ``k * num_chains + c``.

    Derived by ``numpy.random.SeedSequence([seed, model_id, c])`` only, so a
    chain's streams do not depend on which other models/chains are batched.
    """
    seed = check_int("seed", seed, 0)
    out = []
    for mid in model_ids:
        mid = check_int("model_id", mid, 0)
        for c in range(num_chains):
            s = np.random.SeedSequence([seed, mid, c]).generate_state(4, dtype=np.uint32)
            noise_seed = (int(s[0]) << 32) | int(s[1])
            data_seed = (int(s[2]) << 32) | int(s[3])
            out.append((noise_seed, data_seed))
    return out


class ChainStreams:
    """Independent minibatch and noise streams, one pair of ``torch.Generator``
    per row.

    Minibatches: each row walks through its own random permutation of
    ``range(n)`` in consecutive slices of ``batch_size`` (without replacement
    within an epoch; a new permutation each epoch; an incomplete final slice is
    dropped so every batch has exactly B points). ``batch_size=None`` or
    ``>= n`` means full batch (``next_batch`` returns ``None``).

    Noise: each row draws ``torch.randn(S, P)`` from its generator for the next S
    steps at once (S = :func:`noise_chunk_steps` (P), a function of P only, so a row's
    noise does not depend on the other rows). One call per row per S steps instead of
    per step: with two threads sharing the GIL, each call is a hand-off. With
    :meth:`start_prefetch` the next chunk is drawn in a worker thread while the current one is
    used (same numbers).

    Continuation: the streams remember where every row stands (minibatch position, noise chunk,
    a chunk drawn ahead), so several runs of the chain runner on the same object (blocks of one
    long run, with the rows sharded over threads or not) draw exactly what one run would.
    """

    def __init__(self, seeds: Sequence[tuple[int, int]], n: int, batch_size: Optional[int],
                 n_params: int, device=None, dtype=torch.float32):
        self.n = check_int("n (training-set size)", n, 1)
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, 1)
        self.full_batch = batch_size is None or batch_size >= self.n
        self.batch_size = self.n if self.full_batch else batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        gdev = self.device if self.device.type != "meta" else "cpu"
        self.noise_gens = [torch.Generator(device=gdev).manual_seed(s[0]) for s in seeds]
        self.data_gens = [torch.Generator(device="cpu").manual_seed(s[1]) for s in seeds]
        self.M = len(seeds)
        self.P = n_params
        self.dtype = dtype
        self._perm: Optional[Tensor] = None
        self._pos = self.n  # forces a shuffle on first use
        self.noise_chunk = noise_chunk_steps(n_params)
        self._noise: Optional[Tensor] = None   # [M, S, P], the chunk in use
        self._npos = self.noise_chunk          # forces generation on first use
        self._ahead = None                     # the next chunk, drawn ahead (a Future or a tensor)
        self._pool = None                      # executor drawing chunks ahead (prefetch)
        self._spare: Optional[Tensor] = None   # a buffer for the next chunk

    def next_batch(self) -> Optional[Tensor]:
        if self.full_batch:
            return None
        B = self.batch_size
        if self._pos + B > self.n:
            self._perm = torch.stack([torch.randperm(self.n, generator=g) for g in self.data_gens]).to(self.device)
            self._pos = 0
        idx = self._perm[:, self._pos:self._pos + B]
        self._pos += B
        return idx

    def split(self, bounds: Sequence[tuple[int, int]]) -> list["ChainStreams"]:
        """Partition rows into shards ``[(a, b), ...]``; each shard takes over its rows'
        generators and positions (use the shards, then :meth:`merge` them back, to continue)."""
        self.stop_prefetch()
        out = []
        for a, b in bounds:
            sh = object.__new__(ChainStreams)
            sh.__dict__.update(self.__dict__)
            sh.noise_gens = self.noise_gens[a:b]
            sh.data_gens = self.data_gens[a:b]
            sh.M = b - a
            sh._perm = None if self._perm is None else self._perm[a:b]
            sh._noise = None if self._noise is None else self._noise[a:b].clone()
            sh._ahead = None if self._ahead is None else self._ahead[a:b].clone()
            sh._spare = None
            out.append(sh)
        return out

    def merge(self, shards: Sequence["ChainStreams"]) -> None:
        """Take back the positions of :meth:`split` shards (in row order) after they ran, so that
        this object continues every row's streams exactly where its shard stopped."""
        if sum(sh.M for sh in shards) != self.M:
            raise ValueError(f"shards hold {sum(sh.M for sh in shards)} rows, these streams {self.M}")
        first = shards[0]
        if any(sh._pos != first._pos or sh._npos != first._npos for sh in shards):  # pragma: no cover
            raise RuntimeError("shards of one run stopped at different positions")
        self._pos, self._npos = first._pos, first._npos
        self._perm = None if first._perm is None else torch.cat([sh._perm for sh in shards])
        self._noise = None if first._noise is None else torch.cat([sh._noise for sh in shards])
        ahead = [sh._ahead for sh in shards]
        self._ahead = None if ahead[0] is None else torch.cat(ahead)
        self._spare = None

    def start_prefetch(self, pool) -> None:
        """Draw each next chunk of noise in ``pool`` (an executor with one worker) while the current
        one is used. Each generator is still used strictly in sequence, so the noise is the same
        as without prefetching; :meth:`stop_prefetch` keeps a chunk drawn ahead for later use."""
        self._pool = pool

    def stop_prefetch(self) -> None:
        """Wait for a chunk being drawn ahead and keep it (the streams continue exactly)."""
        if self._ahead is not None and not isinstance(self._ahead, Tensor):
            self._ahead = self._ahead.result()
        self._pool = None

    def noise(self, out: Optional[Tensor] = None) -> Tensor:
        """Standard normal ``[M, P]`` for the next step: a view into the current chunk (valid
        until the next chunk is drawn, i.e. for this step), or copied into ``out`` when given."""
        if self._npos >= self.noise_chunk:
            self._next_chunk()
        view = self._noise[:, self._npos]
        self._npos += 1
        return view if out is None else out.copy_(view)

    def _next_chunk(self) -> None:
        old = self._noise
        if self._ahead is not None:
            nxt = self._ahead if isinstance(self._ahead, Tensor) else self._ahead.result()
            self._ahead = None
        else:
            nxt = self.draw_noise_chunk(self._spare if self._spare is not None else None)
        self._noise, self._npos = nxt, 0
        self._spare = old                    # the chunk just used up is free again
        if self._pool is not None:           # draw the following chunk while this one is used
            buf = self._spare if self._spare is not None else torch.empty_like(nxt)
            self._spare = None
            self._ahead = self._pool.submit(self.draw_noise_chunk, buf)

    def draw_noise_chunk(self, out: Optional[Tensor] = None) -> Tensor:
        """The next ``noise_chunk`` steps of noise of every row, ``[M, S, P]``, straight from the
        generators. Use either this or :meth:`noise` on one stream, not both."""
        if out is None:
            out = torch.empty(self.M, self.noise_chunk, self.P, device=self.device, dtype=self.dtype)
        for r, g in enumerate(self.noise_gens):
            torch.randn(self.noise_chunk, self.P, generator=g, out=out[r])
        return out


def noise_chunk_steps(n_params: int) -> int:
    """Steps of noise a chain draws per generator call: ``clamp(2**15 // P, 1, 8)``
    (8 steps for the 4418-parameter moons MLP; 1 for models above 32k parameters)."""
    return max(1, min(8, (1 << 15) // max(1, int(n_params))))
