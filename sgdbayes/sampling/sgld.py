"""Batched (localized) SGLD kernels over stacked weights ``w [M, P]``.

Rows of ``w`` are independent chains; for LLC estimation ``M = K models x C
chains`` flattened as ``row = k * C + c``.

Update rule (devinterp 1.x ``devinterp.optim.sgld.SGLD``, matched term by term;
docs/methods.md#measured-quantities, paper eq 25 / Lau et al. 2024)::

    dw    = nβ ∇L_B(w) + ω w + γ (w − w*)
    w_new = w − (ε/2) dw + sqrt(ε) σ ξ,        ξ ~ N(0, I)

with step size ε, inverse temperature nβ, weight decay ω, localization γ
towards the centre w* (the starting point), and noise level σ (1 for a true
sampler). ``L_B`` is the minibatch *mean* loss. With γ = ω = 0 and nβ = n this
is Welling & Teh's temperature-1 SGLD (docs/methods.md#posterior-concentration):
``Δw = −(ε/2) n ∇L_B(w) + N(0, ε I)``.

Style follows the small functional samplers of ``posteriors``:
``build(loss_fn, config) -> SGLDTransform`` with ``init(w0) -> SGLDState`` and
``update(state, batch, noise) -> SGLDState``. The kernel holds no random state:
noise comes in as an argument, produced by :class:`ChainStreams`, which keeps
one ``torch.Generator`` for noise and one for minibatches per chain, seeded
from ``(seed, model_id, chain)`` only. Chain c of model k therefore draws the
same minibatches and the same noise whatever else is batched with it.

Batched potential protocol (:class:`BatchedPotential`): ``loss_fn(w, idx)``
with ``w [M, P]`` and ``idx`` a ``LongTensor [M, B]`` of training-set indices
(one minibatch per row) or ``None`` for the full training set, returns the
per-row mean loss ``[M]``. Row m's loss may depend on row m of ``w`` only, so
one backward of ``loss.sum()`` gives every row its own gradient. Optional
extensions: ``loss_and_grad(w, idx) -> (loss [M], grad [M,P])`` (used instead
of autograd; :class:`MLPPotential` has a hand-written one) and
``shardable = True`` (any subset of rows may be evaluated alone, so rows can be
split over threads, see :func:`run_chains`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .._fused_mlp import AugmentedLayout, FusedMLP, augment_inputs
from .._linalg import single_threaded_blas

__all__ = [
    "BatchedPotential",
    "SGLDConfig",
    "SGLDState",
    "SGLDTransform",
    "DrawSchedule",
    "ChainStreams",
    "ChainRun",
    "build",
    "run_chains",
    "chain_seeds",
    "default_nbeta",
    "check_weights",
]


@runtime_checkable
class BatchedPotential(Protocol):
    """Per-row minibatch mean loss of stacked weights.

    Attributes
    ----------
    n : int
        Training-set size (number of samples the indices point into).
    """

    n: int

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:  # pragma: no cover
        ...


def _check_pos_float(name: str, v, allow_zero: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        cond = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {cond}, got {v!r}")
    return f


def _check_int(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    if int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def default_nbeta(batch_size: int) -> float:
    """devinterp 1.x ``default_nbeta``: ``B / log B`` (1 when ``B <= 1``)."""
    b = int(batch_size)
    return 1.0 if b <= 1 else b / math.log(b)


@dataclass(frozen=True)
class SGLDConfig:
    """Kernel settings of one SGLD step (all resolved numbers).

    Parameters
    ----------
    step_size : float
        ε > 0.
    nbeta : float
        Inverse temperature nβ > 0 multiplying the minibatch-mean-loss gradient.
    localization : float
        γ >= 0, pull towards the centre (the chain's start).
    weight_decay : float
        ω >= 0, pull towards 0 (a Gaussian prior of precision ω).
    noise_level : float
        σ > 0; 1 for a sampler (devinterp warns otherwise; so does docs/methods.md#measured-quantities).
    """

    step_size: float
    nbeta: float
    localization: float = 0.0
    weight_decay: float = 0.0
    noise_level: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "step_size", _check_pos_float("step_size (epsilon)", self.step_size))
        object.__setattr__(self, "nbeta", _check_pos_float("nbeta", self.nbeta))
        object.__setattr__(self, "localization",
                           _check_pos_float("localization (gamma)", self.localization, allow_zero=True))
        object.__setattr__(self, "weight_decay",
                           _check_pos_float("weight_decay", self.weight_decay, allow_zero=True))
        object.__setattr__(self, "noise_level", _check_pos_float("noise_level", self.noise_level))


@dataclass(frozen=True)
class DrawSchedule:
    """When draws are taken (devinterp convention).

    Step i (0-based) evaluates the loss at the pre-update weights w_i (on the
    minibatch used for that step's gradient), then updates. Step i is a draw
    when ``i >= num_burnin_steps`` and ``(i + 1 - num_burnin_steps) %
    num_steps_bw_draws == 0``; the draw records ``L_B(w_i)`` (and ``w_i``).
    Total steps = ``num_burnin_steps + num_draws * num_steps_bw_draws``.
    """

    num_draws: int
    num_burnin_steps: int = 0
    num_steps_bw_draws: int = 1

    def __post_init__(self):
        _check_int("num_draws", self.num_draws, 1)
        _check_int("num_burnin_steps", self.num_burnin_steps, 0)
        _check_int("num_steps_bw_draws", self.num_steps_bw_draws, 1)

    @property
    def num_steps(self) -> int:
        return self.num_burnin_steps + self.num_draws * self.num_steps_bw_draws

    def is_draw(self, i: int) -> bool:
        return i >= self.num_burnin_steps and (i + 1 - self.num_burnin_steps) % self.num_steps_bw_draws == 0


class SGLDState(NamedTuple):
    """State of M chains: weights ``w [M,P]``, centres ``center [M,P]``, the
    loss at the weights *before* the last update (``[M]``, NaN before any),
    and the number of updates done."""

    w: Tensor
    center: Tensor
    loss: Tensor
    step: int


class SGLDTransform(NamedTuple):
    init: Callable[[Tensor], SGLDState]
    update: Callable[..., SGLDState]


def check_weights(w: Tensor, name: str = "w", n_params: Optional[int] = None) -> Tensor:
    """Validate stacked weights: a floating ``[M, P]`` tensor with finite entries."""
    if not isinstance(w, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [M, P], got {type(w).__name__}")
    if w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor [M, P], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {w.dtype}")
    if n_params is not None and w.shape[1] != n_params:
        raise ValueError(f"{name} has P = {w.shape[1]} columns, expected {n_params}")
    bad = ~torch.isfinite(w).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"{name} has non-finite entries in rows {rows[:10]}{'...' if len(rows) > 10 else ''}")
    return w


def build(loss_fn: Callable[[Tensor, Optional[Tensor]], Tensor], config: SGLDConfig) -> SGLDTransform:
    """Build the SGLD transform for a batched potential.

    ``update(state, batch, noise)``: ``batch`` is whatever ``loss_fn`` takes as
    its second argument (``[M,B]`` indices or ``None``), ``noise`` a standard
    normal ``[M,P]`` tensor. Returns the new state; ``state.loss`` holds
    ``L_B(w_old)`` (devinterp records this pre-update loss as the draw).
    Update (devinterp 1.x SGLD):
    ``w ← w − (ε/2)[nβ ∇L_B(w) + ω w + γ (w − w*)] + sqrt(ε) σ ξ``.
    Non-finite rows are not hidden here; :func:`run_chains` handles them.
    """
    eps = config.step_size
    nbeta = config.nbeta
    gamma = config.localization
    wd = config.weight_decay
    noise_scale = math.sqrt(eps) * config.noise_level

    def init(w0: Tensor) -> SGLDState:
        w0 = w0.detach()
        return SGLDState(w=w0.clone(), center=w0.clone(),
                         loss=torch.full((w0.shape[0],), float("nan"), dtype=w0.dtype, device=w0.device),
                         step=0)

    fused = getattr(loss_fn, "loss_and_grad", None)
    a_grad = -0.5 * eps * nbeta
    a_wd = -0.5 * eps * wd
    a_loc = -0.5 * eps * gamma

    def update(state: SGLDState, batch, noise: Tensor) -> SGLDState:
        w = state.w
        if fused is not None:
            loss, grad = fused(w, batch)
        else:
            wg = w.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(wg, batch)
                if loss.shape != (w.shape[0],):
                    raise ValueError(f"loss_fn must return one loss per row [M] = [{w.shape[0]}], "
                                     f"got {tuple(loss.shape)}")
                (grad,) = torch.autograd.grad(loss.sum(), wg)
        with torch.no_grad():
            # w - (eps/2)[nbeta g + wd w + gamma (w - w*)] + sqrt(eps) sigma xi, one pass per term
            w_new = torch.add(w, grad, alpha=a_grad)
            if wd != 0.0:
                w_new.add_(w, alpha=a_wd)
            if gamma != 0.0:
                w_new.add_(w - state.center, alpha=a_loc)
            w_new.add_(noise, alpha=noise_scale)
        return SGLDState(w=w_new, center=state.center, loss=loss.detach(), step=state.step + 1)

    return SGLDTransform(init=init, update=update)


def chain_seeds(seed: int, model_ids: Sequence[int], num_chains: int) -> list[tuple[int, int]]:
    """Per-row (noise_seed, data_seed) for rows ``k * num_chains + c``.

    Derived by ``numpy.random.SeedSequence([seed, model_id, c])`` only, so a
    chain's streams do not depend on which other models/chains are batched.
    """
    seed = _check_int("seed", seed, 0)
    out = []
    for mid in model_ids:
        mid = _check_int("model_id", mid, 0)
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
    per step: with two threads sharing the GIL, each call is a hand-off.
    """

    def __init__(self, seeds: Sequence[tuple[int, int]], n: int, batch_size: Optional[int],
                 n_params: int, device=None, dtype=torch.float32):
        self.n = _check_int("n (training-set size)", n, 1)
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1)
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
        self._noise: Optional[Tensor] = None   # [M, S, P]
        self._npos = self.noise_chunk          # forces generation on first use

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
        generators (use the shards, not this object, afterwards)."""
        out = []
        for a, b in bounds:
            sh = object.__new__(ChainStreams)
            sh.__dict__.update(self.__dict__)
            sh.noise_gens = self.noise_gens[a:b]
            sh.data_gens = self.data_gens[a:b]
            sh.M = b - a
            sh._perm = None if self._perm is None else self._perm[a:b]
            sh._noise = None if self._noise is None else self._noise[a:b]
            out.append(sh)
        return out

    def noise(self, out: Optional[Tensor] = None) -> Tensor:
        """Standard normal ``[M, P]`` for the next step: a view into the current chunk (valid
        until the next chunk is drawn, i.e. for this step), or copied into ``out`` when given."""
        if self._npos >= self.noise_chunk:
            self._noise = self.draw_noise_chunk(self._noise)
            self._npos = 0
        view = self._noise[:, self._npos]
        self._npos += 1
        return view if out is None else out.copy_(view)

    def draw_noise_chunk(self, out: Optional[Tensor] = None) -> Tensor:
        """The next ``noise_chunk`` steps of noise of every row, ``[M, S, P]``. Use either
        this or :meth:`noise` on one stream, not both."""
        if out is None:
            out = torch.empty(self.M, self.noise_chunk, self.P, device=self.device, dtype=self.dtype)
        for r, g in enumerate(self.noise_gens):
            torch.randn(self.noise_chunk, self.P, generator=g, out=out[r])
        return out


def noise_chunk_steps(n_params: int) -> int:
    """Steps of noise a chain draws per generator call: ``clamp(2**15 // P, 1, 8)``
    (8 steps for the 4418-parameter moons MLP; 1 for models above 32k parameters)."""
    return max(1, min(8, (1 << 15) // max(1, int(n_params))))


@dataclass
class ChainRun:
    """Raw output of :func:`run_chains` (rows = chains).

    losses : ``[M, D]`` minibatch loss ``L_B(w_i)`` at each draw (NaN after divergence)
    full_losses : ``[M, D]`` full-data loss at each draw (if requested) else None
    weights : ``[M, D, P]`` draws (if requested) else None
    diverged : ``[M]`` bool, a non-finite loss, gradient or weight occurred
    diverged_step : ``[M]`` first step with a non-finite value (-1 if none)
    """

    losses: Tensor
    full_losses: Optional[Tensor]
    weights: Optional[Tensor]
    diverged: Tensor
    diverged_step: Tensor
    num_steps: int
    wall_s: float


def run_chains(loss_fn: Callable[[Tensor, Optional[Tensor]], Tensor], w0: Tensor, kernel: SGLDConfig,
               schedule: DrawSchedule, streams: ChainStreams, *, record_weights: bool = False,
               record_full_loss: bool = False, centers: Optional[Tensor] = None,
               workers: Optional[int] = None) -> ChainRun:
    """Run M chains of SGLD from ``w0 [M,P]`` and record draws per ``schedule``.

    Divergence: a row whose loss is non-finite (checked every step) or whose
    weights are non-finite (checked every 25 steps and at the end; a non-finite
    gradient makes the next loss non-finite) is flagged (``diverged``), its weights are reset to its centre so it cannot
    poison later arithmetic, and all its later records are NaN. Nothing is
    averaged here; callers exclude diverged rows explicitly.

    ``workers``: row shards run in parallel Python threads (default: automatic,
    see :func:`_auto_workers`). Results do not depend on it beyond float round-off.
    """
    check_weights(w0, "w0")
    M, P = w0.shape
    if streams.M != M or streams.P != P:
        raise ValueError(f"streams are for [{streams.M}, {streams.P}] but w0 is {tuple(w0.shape)}")
    if centers is not None:
        check_weights(centers, "centers", n_params=P)
    centers = (w0 if centers is None else centers).detach()
    D = schedule.num_draws
    nan = float("nan")
    losses = torch.full((M, D), nan, dtype=w0.dtype, device=w0.device)
    full_losses = torch.full((M, D), nan, dtype=w0.dtype, device=w0.device) if record_full_loss else None
    weights = torch.full((M, D, P), nan, dtype=w0.dtype, device=w0.device) if record_weights else None
    diverged = torch.zeros(M, dtype=torch.bool, device=w0.device)
    diverged_step = torch.full((M,), -1, dtype=torch.long, device=w0.device)
    if workers is None:
        workers = _auto_workers(loss_fn, w0)
    workers = max(1, min(int(workers), M))
    t0 = time.perf_counter()
    # per-row products are far too small for BLAS threads (they only add syncs)
    with single_threaded_blas():
        if workers == 1:
            # the next chunk of noise is generated in a worker thread (double buffer) while the
            # current one is used, when a spare core exists; each generator is still used
            # strictly sequentially, so the draws are unchanged
            spare = w0.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)
            pool = ThreadPoolExecutor(max_workers=1) if spare else None
            bufs = ([torch.empty(M, streams.noise_chunk, P, dtype=w0.dtype, device=w0.device) for _ in range(2)]
                    if spare else None)
            try:
                fut = pool.submit(streams.draw_noise_chunk, bufs[0]) if pool is not None else None
                d = _run_loop(_stepper(loss_fn, kernel, w0, centers), loss_fn, schedule, streams, pool, fut, bufs,
                              losses, full_losses, weights, diverged, diverged_step, record_full_loss, record_weights)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
        else:
            # shard rows over Python threads (torch ops release the GIL); rows are independent
            # and every row keeps its own generators, so the draws do not depend on sharding
            edges = np.linspace(0, M, workers + 1).round().astype(int)
            bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
            shards = streams.split(bounds)

            def job(k):
                a, b = bounds[k]
                return _run_loop(_stepper(loss_fn, kernel, w0[a:b], centers[a:b]), loss_fn, schedule, shards[k],
                                 None, None, None, losses[a:b],
                                 None if full_losses is None else full_losses[a:b],
                                 None if weights is None else weights[a:b], diverged[a:b], diverged_step[a:b],
                                 record_full_loss, record_weights)

            with ThreadPoolExecutor(max_workers=len(bounds)) as ex:
                ds_ = list(ex.map(job, range(len(bounds))))
            d = ds_[0]
    assert d == D
    return ChainRun(losses=losses, full_losses=full_losses, weights=weights, diverged=diverged,
                    diverged_step=diverged_step, num_steps=schedule.num_steps,
                    wall_s=time.perf_counter() - t0)


def _auto_workers(loss_fn, w0: Tensor) -> int:
    """Row shards to run in parallel Python threads: only on CPU, only for potentials that
    declare ``shardable = True`` (any subset of rows can be evaluated alone), and only when
    torch uses a single intra-op thread (2 OpenMP threads + 2 shards would oversubscribe;
    on a loaded machine OpenMP spin-waiting then costs 10x)."""
    if w0.device.type != "cpu" or not getattr(loss_fn, "shardable", False):
        return 1
    cores = os.cpu_count() or 1
    if torch.get_num_threads() != 1 or cores < 2 or w0.shape[0] < 8:
        return 1
    return min(cores, 2)


class _KernelStepper:
    """Chains advanced by the public kernel (:func:`build`) on row-layout weights."""

    def __init__(self, loss_fn, kernel: SGLDConfig, w0: Tensor, centers: Tensor):
        self.tr = build(loss_fn, kernel)
        self.state = self.tr.init(w0)._replace(center=centers.detach().clone())

    def rows(self) -> Tensor:
        return self.state.w

    def step(self, batch, noise: Tensor) -> Tensor:
        self.state = self.tr.update(self.state, batch, noise)
        return self.state.loss

    def finite_rows(self) -> Tensor:
        return torch.isfinite(self.state.w).all(dim=1)

    def reset(self, rows: Tensor) -> None:
        st = self.state
        self.state = st._replace(w=torch.where(rows.unsqueeze(1), st.center, st.w))


def _stepper(loss_fn, kernel: SGLDConfig, w0: Tensor, centers: Tensor):
    """The potential's own in-place stepper when it has one (``loss_fn.stepper``), else
    the public kernel. Both apply the same update to the same numbers."""
    make = getattr(loss_fn, "stepper", None)
    if make is not None:
        st = make(kernel, w0, centers)
        if st is not None:
            return st
    return _KernelStepper(loss_fn, kernel, w0, centers)


def _run_loop(stepper, loss_fn, schedule, streams, pool, fut, bufs, losses, full_losses, weights,
              diverged, diverged_step, record_full_loss, record_weights) -> int:
    nan = float("nan")
    d = 0
    any_diverged = bool(diverged.any())
    for i in range(schedule.num_steps):
        batch = streams.next_batch()
        if pool is not None:
            S = streams.noise_chunk
            if i % S == 0:
                chunk = fut.result()
                if i + S < schedule.num_steps:
                    fut = pool.submit(streams.draw_noise_chunk, bufs[(i // S + 1) % 2])
            noise = chunk[:, i % S]
        else:
            noise = streams.noise()
        draw = schedule.is_draw(i)
        w_pre = stepper.rows() if draw and (record_full_loss or record_weights) else None
        if draw and record_full_loss:
            with torch.no_grad():
                fl = loss_fn(w_pre, None)
        loss = stepper.step(batch, noise)
        with torch.no_grad():
            # common case, one check: every loss finite and no row diverged before
            ok = bool(torch.isfinite(loss).all())
            check_w = i % 25 == 0 or i == schedule.num_steps - 1
            if check_w:
                fin = stepper.finite_rows()
                ok = ok and bool(fin.all())
            if not ok:
                bad = ~torch.isfinite(loss)
                if check_w:
                    bad |= ~fin
                new_bad = bad & ~diverged
                diverged_step[new_bad] = i
                diverged |= new_bad
                any_diverged = any_diverged or bool(new_bad.any())
            if any_diverged:
                stepper.reset(diverged)
            if draw:
                if any_diverged:
                    lrow = loss.clone()
                    # a row diverged at or before step i has no valid draw at step i
                    lrow[diverged] = nan
                else:
                    lrow = loss
                losses[:, d] = lrow
                if record_full_loss:
                    fl = fl.clone()
                    fl[diverged] = nan
                    full_losses[:, d] = fl
                if record_weights:
                    wrow = w_pre.clone()
                    wrow[diverged] = nan
                    weights[:, d] = wrow
                d += 1
    return d


# ----------------------------------------------------------------------------
# Adapters: concrete batched potentials
# ----------------------------------------------------------------------------

class FunctionPotential:
    """Wrap a data-free potential ``f(w [M,P]) -> [M]`` (e.g. a synthetic K(w)).

    ``n`` only matters for ``nbeta="n"``; indices are ignored."""

    shardable = True

    def __init__(self, f: Callable[[Tensor], Tensor], n: int = 1):
        self.f = f
        self.n = _check_int("n", n, 1)

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        return self.f(w)


class MLPPotential:
    """Mean cross-entropy of stacked :class:`sgdbayes.models.MLPSpec` models on
    a training set ``x [n, in]``, ``y [n]``; ``idx [M, B]`` picks one minibatch
    per row (``None`` = full set, shared by all rows)."""

    shardable = True

    def __init__(self, spec, x: Tensor, y: Tensor):
        if x.dim() != 2 or x.shape[1] != spec.widths[0]:
            raise ValueError(f"x must be [n, {spec.widths[0]}], got {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be [n] with n = {x.shape[0]}, got {tuple(y.shape)}")
        self.spec = spec
        self.x = x
        self.y = y
        self.n = int(x.shape[0])
        self.n_params = spec.n_params
        self._ws: dict = {}
        self._ws_lock = threading.Lock()

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        if idx is None:
            return self.spec.loss(w, self.x, self.y)
        return self.spec.loss(w, self.x[idx], self.y[idx])

    @torch.no_grad()  # explicit gradients (the batch-norm fallback re-enables autograd itself)
    def loss_and_grad(self, w: Tensor, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-row mean cross-entropy ``[M]`` and its gradient ``[M, P]``.

        Plain ReLU MLPs use the hand-written forward/backward of
        :class:`sgdbayes._fused_mlp.FusedMLP` (dz = (softmax(z) − onehot(y))/B,
        dW_l = dh_lᵀ a_{l−1}, db_l = Σ_b dh_l, dh_{l−1} = (dh_l W_l) ⊙ 1[h_{l−1} > 0]);
        batch norm falls back to autograd. Equality with autograd is tested.
        Thread-safe: each calling thread gets its own workspace.
        """
        if self.spec.batchnorm:
            wg = w.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self(wg, idx)
                (g,) = torch.autograd.grad(loss.sum(), wg)
            return loss.detach(), g
        M = w.shape[0]
        ws = self._workspace(M, self.n if idx is None else idx.shape[1], w.device, w.dtype)
        ws.layout.unpack(w, ws.P)
        xa, yb = ws.minibatch(idx)
        loss, _ = ws.fused.loss_and_grad(ws.P, ws.G, xa, yb, accuracy=False)
        return loss, ws.layout.pack(ws.G)

    def stepper(self, kernel: SGLDConfig, w0: Tensor, centers: Tensor) -> Optional["_MLPStepper"]:
        """In-place SGLD on the fused kernel's own parameter layout (used by :func:`run_chains`);
        None with batch norm (the generic kernel is used then)."""
        return None if self.spec.batchnorm else _MLPStepper(self, kernel, w0, centers)

    def _workspace(self, M: int, B: int, device, dtype) -> "_MLPWorkspace":
        key = (threading.get_ident(), M, B, device, dtype)
        with self._ws_lock:
            ws = self._ws.get(key)
            if ws is None:
                if len(self._ws) >= 8:  # shapes change rarely; don't grow without bound
                    self._ws.clear()
                ws = self._ws[key] = _MLPWorkspace(self, M, B, device, dtype)
        return ws


class _MLPWorkspace:
    """Preallocated buffers of :meth:`MLPPotential.loss_and_grad` for one (thread, M, B)."""

    def __init__(self, pot: MLPPotential, M: int, B: int, device, dtype):
        self.layout = AugmentedLayout(pot.spec)
        self.P = self.layout.views(torch.empty(M * pot.n_params, device=device, dtype=dtype), M)
        self.G = self.layout.views(torch.empty(M * pot.n_params, device=device, dtype=dtype), M)
        self.x_aug = augment_inputs(pot.x.to(device=device, dtype=dtype))
        self.y = pot.y.to(device)
        self.xa = torch.empty(M, B, self.x_aug.shape[1], device=device, dtype=dtype)
        self.yb = torch.empty(M, B, device=device, dtype=self.y.dtype)
        self.fused = FusedMLP(pot.spec, M, B, device, dtype)

    def minibatch(self, idx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Augmented inputs ``[M, B, d+1]`` and labels ``[M, B]`` of rows' minibatches
        ``idx [M, B]`` (gathered into the fixed buffers), or of the full set for ``None``
        (every row shares it, no copy)."""
        M = self.xa.shape[0]
        if idx is None:
            return self.x_aug.unsqueeze(0).expand(M, -1, -1), self.y.unsqueeze(0).expand(M, -1)
        flat = idx.reshape(-1)
        torch.index_select(self.x_aug, 0, flat, out=self.xa.view(flat.numel(), -1))
        torch.index_select(self.y, 0, flat, out=self.yb.view(flat.numel()))
        return self.xa, self.yb


class _MLPStepper:
    """M chains of SGLD on :class:`MLPPotential`, held in the blocked ``[W | b]`` layout of
    :class:`sgdbayes._fused_mlp.AugmentedLayout` and updated in place: no conversion of
    weights and gradients to and from rows each step. The update is the kernel's
    (:func:`build`), term by term in the same order, so it gives the same numbers;
    the row-layout noise is added block by block, entry ``j`` of a chain's noise to its
    parameter ``j``. With the C kernel gradient and update happen model by model in one
    call (:meth:`sgdbayes._fused_mlp.FusedMLP.sgld_step`); otherwise through torch on
    double-buffered flat tensors.
    """

    def __init__(self, pot: MLPPotential, kernel: SGLDConfig, w0: Tensor, centers: Tensor):
        M = w0.shape[0]
        self.pot, self.M = pot, M
        self.layout = lay = AugmentedLayout(pot.spec)
        self.device, self.dtype = w0.device, w0.dtype
        n = M * pot.n_params
        self._flat = [torch.empty(n, device=self.device, dtype=self.dtype)]  # [current, next] (torch path)
        self._views = [lay.views(self._flat[0], M)]
        self.cur = 0
        lay.unpack(w0.detach(), self._views[0])
        self.center = torch.empty(n, device=self.device, dtype=self.dtype)
        self.center_v = lay.views(self.center, M)
        lay.unpack(centers.detach(), self.center_v)
        eps = kernel.step_size
        self.a_grad = -0.5 * eps * kernel.nbeta
        self.a_wd = -0.5 * eps * kernel.weight_decay
        self.a_loc = -0.5 * eps * kernel.localization
        self.noise_scale = math.sqrt(eps) * kernel.noise_level
        # (block, slice of the noise row) pairs: W_l then b_l, in the row layout's order
        self._noise_parts = []
        off = 0
        for l, (o, i1) in enumerate(lay.shapes):
            self._noise_parts.append((l, slice(None, -1), slice(off, off + o * (i1 - 1)), (M, o, i1 - 1)))
            off += o * (i1 - 1)
            self._noise_parts.append((l, -1, slice(off, off + o), (M, o)))
            off += o
        self._B = None

    def rows(self) -> Tensor:
        return self.layout.pack(self._views[self.cur])

    def step(self, batch, noise: Tensor) -> Tensor:
        pot, M = self.pot, self.M
        P = self._views[self.cur]
        B = pot.n if batch is None else batch.shape[1]
        if self._B != B:
            self._B = B
            self.ws = pot._workspace(M, B, self.device, self.dtype)
        ws = self.ws
        xa, yb = ws.minibatch(batch)
        if ws.fused.c is not None:  # the C kernel: gradient and update model by model, in place
            return ws.fused.sgld_step(P, self.center_v, xa, yb, noise, self.a_grad, self.a_wd, self.a_loc,
                                      self.noise_scale)
        if len(self._flat) == 1:  # torch path: next-weights, gradient and scratch buffers
            n = self.center.numel()
            self._flat.append(torch.empty_like(self.center))
            self._views.append(self.layout.views(self._flat[1], M))
            self.gflat = torch.empty_like(self.center)
            self.gv = self.layout.views(self.gflat, M)
            self.tmp = torch.empty(n, device=self.device, dtype=self.dtype) if self.a_loc != 0.0 else None
        loss, _ = ws.fused.loss_and_grad(P, self.gv, xa, yb, accuracy=False)
        # w - (eps/2)[nbeta g + wd w + gamma (w - w*)] + sqrt(eps) sigma xi  (as in build())
        w, nxt = self._flat[self.cur], self._flat[1 - self.cur]
        torch.add(w, self.gflat, alpha=self.a_grad, out=nxt)
        if self.a_wd != 0.0:
            nxt.add_(w, alpha=self.a_wd)
        if self.tmp is not None:
            nxt.add_(torch.sub(w, self.center, out=self.tmp), alpha=self.a_loc)
        V = self._views[1 - self.cur]
        for l, cols, sl, shape in self._noise_parts:
            V[l][:, :, cols].add_(noise[:, sl].view(shape), alpha=self.noise_scale)
        self.cur = 1 - self.cur
        return loss

    def finite_rows(self) -> Tensor:
        ok = None
        for v in self._views[self.cur]:
            f = torch.isfinite(v).view(self.M, -1).all(dim=1)
            ok = f if ok is None else ok & f
        return ok

    def reset(self, rows: Tensor) -> None:
        idx = torch.nonzero(rows).flatten()
        for v, c in zip(self._views[self.cur], self.center_v):
            v.index_copy_(0, idx, c.index_select(0, idx))


class ModulePotential:
    """Stack ordinary ``nn.Module`` s of one architecture into flat ``[K, P]``
    weights and evaluate them batched with ``torch.func.functional_call`` +
    ``vmap``.

    ``criterion(output, target)`` must return the *mean* loss of the batch
    (default ``F.cross_entropy``). Flat layout: ``named_parameters()`` order,
    each tensor row-major (= ``parameters_to_vector``). Buffers are taken from
    each module and repeated per chain; modules that *update* buffers in the
    forward (BatchNorm in train mode) are rejected: a batched sampler cannot
    reproduce their in-place running-stat updates.
    """

    def __init__(self, modules: Sequence[torch.nn.Module], x: Tensor, y: Tensor,
                 criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None):
        import copy
        from torch.func import functional_call, stack_module_state, vmap

        modules = list(modules)
        if not modules:
            raise ValueError("modules must be a non-empty list of nn.Module")
        for m in modules:
            for sub in m.modules():
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                    raise ValueError("modules with BatchNorm are not supported by the batched backend; "
                                     "use backend='devinterp'")
        names0 = [n for n, _ in modules[0].named_parameters()]
        for m in modules[1:]:
            if [n for n, _ in m.named_parameters()] != names0:
                raise ValueError("all modules must share one architecture (parameter names differ)")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
        params, buffers = stack_module_state(modules)
        self.names = names0
        self.shapes = [tuple(params[n].shape[1:]) for n in names0]
        self.numels = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.n_params = int(sum(self.numels))
        self._w_star = torch.cat([params[n].detach().reshape(len(modules), -1) for n in names0], dim=1)
        self._buffers = {k: v.detach() for k, v in buffers.items()}
        base = copy.deepcopy(modules[0]).to("meta")
        self.criterion = criterion if criterion is not None else torch.nn.functional.cross_entropy
        self.x, self.y = x, y
        self.n = int(x.shape[0])
        self.K = len(modules)
        crit = self.criterion

        def f(p, b, xb, yb):
            out = functional_call(base, (p, b), (xb,))
            return crit(out, yb)

        self._f = f
        self._vmap = vmap

    @property
    def w_star(self) -> Tensor:
        """Flat weights ``[K, P]`` of the given modules."""
        return self._w_star

    def unflatten(self, w: Tensor) -> dict:
        parts = torch.split(w, self.numels, dim=1)
        return {n: p.reshape(w.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def __call__(self, w: Tensor, idx: Optional[Tensor]) -> Tensor:
        M = w.shape[0]
        if M % self.K != 0:
            raise ValueError(f"ModulePotential got {M} rows; expected a multiple of K={self.K} (rows = k*chains + c)")
        r = M // self.K
        bufs = {k: v.repeat_interleave(r, dim=0) for k, v in self._buffers.items()}
        p = self.unflatten(w)
        if idx is None:
            return self._vmap(self._f, in_dims=(0, 0, None, None))(p, bufs, self.x, self.y)
        return self._vmap(self._f, in_dims=(0, 0, 0, 0))(p, bufs, self.x[idx], self.y[idx])
