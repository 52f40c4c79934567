"""The chain runner: M SGLD chains advanced together, with observers recording the draws.

:func:`run_chains` steps a :class:`~sgdbayes.sampling.sgld.Stepper` through a
:class:`DrawSchedule`, detects divergence, and at every draw calls its *observers*
(devinterp's callbacks are the model): :class:`LossTrace` (the minibatch loss at each draw,
always recorded), :class:`FullLossTrace` (the full-data loss of the drawn weights) and
:class:`WeightTrace` (the drawn weights). An observer declares whether it needs the weights
(``needs_weights``) and records into ``[M, D, ...]`` arrays; when rows are sharded over threads
each shard writes its own rows (:meth:`Observer.shard`). An observer that needs steps other than
the draws (:class:`sgdbayes.sampling.mala.MALAAcceptance`: the step before each measured draw)
declares ``step_hook = True`` and is asked ``wants_step(i)`` at every step.

Blocks: a run can be continued. :class:`ChainRun` keeps the weights after its last step
(``w_last``), the divergence state and the step count; passing them back (``diverged=``,
``diverged_step=``, ``first_step=``) with the same :class:`~sgdbayes.sampling.streams.ChainStreams`
gives exactly the draws of one long run (:func:`sgdbayes.sampling.posterior.sample_posterior_until`
runs chains in blocks until they converge).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .._linalg import single_threaded_blas
from .._validation import check_int
from .potentials import as_potential, check_weights
from .sgld import SGLDConfig, make_stepper
from .streams import ChainStreams

__all__ = ["DrawSchedule", "Draw", "Observer", "LossTrace", "FullLossTrace", "WeightTrace", "ChainRun",
           "run_chains"]


@dataclass(frozen=True)
class DrawSchedule:
    """When draws are taken (devinterp convention).

    Step i (0-based) evaluates the loss at the pre-update weights w_i (on the minibatch used
    for that step's gradient), then updates. Step i is a draw when ``i >= num_burnin_steps``
    and ``(i + 1 - num_burnin_steps) % num_steps_bw_draws == 0``; the draw records ``L_B(w_i)``
    (and ``w_i``). Total steps = ``num_burnin_steps + num_draws * num_steps_bw_draws``.
    """

    num_draws: int
    num_burnin_steps: int = 0
    num_steps_bw_draws: int = 1

    def __post_init__(self):
        for name, lo in (("num_draws", 1), ("num_burnin_steps", 0), ("num_steps_bw_draws", 1)):
            v = getattr(self, name)
            if isinstance(v, float):
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
            object.__setattr__(self, name, check_int(name, v, lo))

    @property
    def num_steps(self) -> int:
        return self.num_burnin_steps + self.num_draws * self.num_steps_bw_draws

    def is_draw(self, i: int) -> bool:
        return i >= self.num_burnin_steps and (i + 1 - self.num_burnin_steps) % self.num_steps_bw_draws == 0


class Draw(NamedTuple):
    """What an observer sees at draw ``index`` (step ``step``; ``index`` is -1 at a non-draw step
    shown to a step hook): the minibatch loss at the pre-update weights (NaN for diverged rows),
    those weights ``w [m, P]`` (None unless an observer needs them), the rows diverged so far,
    the potential, the step's minibatch (``[m, B]`` indices or None: full batch) and the rows'
    centres ``[m, P]``."""

    index: int
    step: int
    loss: Tensor
    w: Optional[Tensor]
    diverged: Tensor
    potential: object
    batch: Optional[Tensor] = None
    center: Optional[Tensor] = None


@runtime_checkable
class Observer(Protocol):
    """``name`` (its key in :attr:`ChainRun.observed`), ``needs_weights`` (the draws' weights are
    computed for it), ``step_hook`` (``wants_step(i)`` / ``on_step(event)`` are called at every
    step ``i`` of the run, draws included, before ``on_draw``)."""

    name: str
    needs_weights: bool
    step_hook: bool

    def start(self, M: int, D: int, P: int, device, dtype) -> None:  # pragma: no cover
        ...

    def shard(self, a: int, b: int) -> "Observer":  # pragma: no cover
        """An observer writing rows ``a..b-1`` (rows sharded over threads)."""

    def on_draw(self, draw: Draw) -> None:  # pragma: no cover
        ...

    def result(self) -> Tensor:  # pragma: no cover
        ...


class _ArrayObserver:
    """Records one ``[M, D, *item]`` array (NaN until written)."""

    name = "observer"
    needs_weights = False
    step_hook = False

    def __init__(self):
        self.data: Optional[Tensor] = None
        self.rows = slice(None)

    def item_shape(self, P: int) -> tuple:
        return ()

    def start(self, M, D, P, device, dtype) -> None:
        self.data = torch.full((M, D, *self.item_shape(P)), float("nan"), dtype=dtype, device=device)

    def shard(self, a: int, b: int):
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.rows = slice(a, b)
        return view

    def value(self, draw: Draw) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_draw(self, draw: Draw) -> None:
        self.data[self.rows, draw.index] = self.value(draw)

    def result(self) -> Tensor:
        return self.data


class LossTrace(_ArrayObserver):
    """``[M, D]`` minibatch loss ``L_B(w_i)`` at each draw (NaN after divergence)."""

    name = "loss"

    def value(self, draw):
        return draw.loss


class FullLossTrace(_ArrayObserver):
    """``[M, D]`` full-data loss ``L(w_i)`` of the drawn weights (NaN after divergence)."""

    name = "full_loss"
    needs_weights = True

    def value(self, draw):
        with torch.no_grad():
            fl = draw.potential(draw.w, None)
        return torch.where(draw.diverged, torch.full_like(fl, float("nan")), fl)


class WeightTrace(_ArrayObserver):
    """``[M, D, P]`` the drawn weights (NaN rows after divergence)."""

    name = "weights"
    needs_weights = True

    def item_shape(self, P):
        return (P,)

    def value(self, draw):
        return torch.where(draw.diverged.unsqueeze(1), torch.full_like(draw.w, float("nan")), draw.w)


@dataclass
class ChainRun:
    """Raw output of :func:`run_chains` (rows = chains): ``losses [M, D]`` (minibatch loss at
    each draw), ``observed`` (every observer's result by name), ``diverged [M]`` (a non-finite
    loss, gradient or weight occurred), ``diverged_step [M]`` (first such step, -1 if none),
    ``w_last [M, P]`` (the weights after the last step; a diverged row's centre) and
    ``end_step`` (steps taken by the chains so far, this run's included)."""

    losses: Tensor
    observed: dict
    diverged: Tensor
    diverged_step: Tensor
    num_steps: int
    wall_s: float
    w_last: Optional[Tensor] = None
    end_step: int = 0

    @property
    def full_losses(self) -> Optional[Tensor]:
        return self.observed.get("full_loss")

    @property
    def weights(self) -> Optional[Tensor]:
        return self.observed.get("weights")


def run_chains(potential, w0: Tensor, kernel: SGLDConfig, schedule: DrawSchedule, streams: ChainStreams, *,
               observers: Sequence = (), centers: Optional[Tensor] = None, workers: Optional[int] = None,
               progress: bool = False, desc: str = "SGLD", diverged: Optional[Tensor] = None,
               diverged_step: Optional[Tensor] = None, first_step: int = 0) -> ChainRun:
    """Run M chains of SGLD from ``w0 [M, P]`` and record draws per ``schedule``.

    Divergence: a row whose loss is non-finite (checked every step) or whose weights are
    non-finite (checked every 25 steps and at the end; a non-finite gradient makes the next
    loss non-finite) is flagged, its weights are reset to its centre so it cannot poison later
    arithmetic, and all its later records are NaN. Nothing is averaged here.

    Continuing a run (blocks): pass the previous run's ``w_last`` as ``w0``, its ``diverged`` /
    ``diverged_step``, ``first_step=`` its ``end_step`` and the same ``streams`` and ``centers``.

    ``workers``: row shards run in parallel Python threads (default: automatic); results do not
    depend on it beyond float round-off. ``progress``: a tqdm bar over the steps (shown only
    when the run lasts more than a couple of seconds).
    """
    pot = as_potential(potential)
    check_weights(w0, "w0")
    M, P = w0.shape
    if streams.M != M or streams.P != P:
        raise ValueError(f"streams are for [{streams.M}, {streams.P}] but w0 is {tuple(w0.shape)}")
    if centers is not None:
        check_weights(centers, "centers", n_params=P)
    centers = (w0 if centers is None else centers).detach()
    obs = [LossTrace(), *observers]
    names = [o.name for o in obs]
    if len(set(names)) != len(names):
        raise ValueError(f"observer names must be distinct, got {names}")
    for o in obs:
        o.start(M, schedule.num_draws, P, w0.device, w0.dtype)
    diverged = (torch.zeros(M, dtype=torch.bool, device=w0.device) if diverged is None
                else diverged.to(device=w0.device, dtype=torch.bool).clone())
    diverged_step = (torch.full((M,), -1, dtype=torch.long, device=w0.device) if diverged_step is None
                     else diverged_step.to(device=w0.device, dtype=torch.long).clone())
    w_last = torch.empty_like(w0)
    workers = _auto_workers(pot, w0) if workers is None else max(1, min(int(workers), M))
    bar = _bar(progress, schedule.num_steps, desc)
    loop = _Loop(pot, kernel, schedule, int(first_step), bar)
    t0 = time.perf_counter()
    try:
        with single_threaded_blas():  # per-row products are far too small for BLAS threads
            if workers == 1:
                _run_single(loop, w0, centers, streams, obs, diverged, diverged_step, w_last)
            else:
                _run_sharded(loop, w0, centers, streams, obs, diverged, diverged_step, w_last, workers)
    finally:
        if bar is not None:
            bar.close()
    return ChainRun(losses=obs[0].result(), observed={o.name: o.result() for o in obs[1:]}, diverged=diverged,
                    diverged_step=diverged_step, num_steps=schedule.num_steps, wall_s=time.perf_counter() - t0,
                    w_last=w_last, end_step=int(first_step) + schedule.num_steps)


@dataclass
class _Loop:
    """What every row shard's loop shares: the potential, kernel, schedule, first step, bar."""

    pot: object
    kernel: SGLDConfig
    schedule: DrawSchedule
    first_step: int
    bar: object


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", delay=2.0, leave=False)


def _run_single(loop: _Loop, w0, centers, streams, obs, diverged, diverged_step, w_last):
    # the next chunk of noise is generated in a worker thread (double buffer) while the current one is
    # used, when a spare core exists; each generator is still used strictly sequentially
    spare = w0.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=1) if spare else None
    try:
        if pool is not None:
            streams.start_prefetch(pool)
        stepper = make_stepper(loop.pot, loop.kernel, w0, centers)
        _run_loop(stepper, loop, streams, obs, diverged, diverged_step, centers)
        w_last.copy_(stepper.rows())
    finally:
        streams.stop_prefetch()
        if pool is not None:
            pool.shutdown(wait=True)


def _run_sharded(loop: _Loop, w0, centers, streams, obs, diverged, diverged_step, w_last, workers):
    # rows are independent and every row keeps its own generators, so draws do not depend on sharding
    M = w0.shape[0]
    edges = np.linspace(0, M, workers + 1).round().astype(int)
    bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    shards = streams.split(bounds)

    def job(j):
        a, b = bounds[j]
        pot = loop.pot.rows(a, b, M)   # the shard's own rows (e.g. the model state of each row)
        part = _Loop(pot, loop.kernel, loop.schedule, loop.first_step, loop.bar if j == 0 else None)
        stepper = make_stepper(pot, loop.kernel, w0[a:b], centers[a:b])
        _run_loop(stepper, part, shards[j], [o.shard(a, b) for o in obs], diverged[a:b], diverged_step[a:b],
                  centers[a:b])
        w_last[a:b] = stepper.rows()

    with ThreadPoolExecutor(max_workers=len(bounds)) as ex:
        list(ex.map(job, range(len(bounds))))
    streams.merge(shards)


def _auto_workers(pot, w0: Tensor) -> int:
    """Row shards in parallel Python threads: only on CPU, only for potentials that declare
    ``shardable``, and only when torch uses a single intra-op thread (2 OpenMP threads + 2
    shards would oversubscribe; on a loaded machine OpenMP spin-waiting then costs 10x)."""
    if w0.device.type != "cpu" or not pot.shardable:
        return 1
    cores = os.cpu_count() or 1
    if torch.get_num_threads() != 1 or cores < 2 or w0.shape[0] < 8:
        return 1
    return min(cores, 2)


def _run_loop(stepper, loop: _Loop, streams, obs, diverged, diverged_step, centers) -> None:
    pot, schedule, bar = loop.pot, loop.schedule, loop.bar
    nan = float("nan")
    d = 0
    any_diverged = bool(diverged.any())
    need_w = any(o.needs_weights for o in obs)
    hooks = [o for o in obs if o.step_hook]
    for i in range(schedule.num_steps):
        batch = streams.next_batch()
        noise = streams.noise()
        draw = schedule.is_draw(i)
        hooked = [o for o in hooks if o.wants_step(i)]
        w_pre = stepper.rows() if (draw and need_w) or hooked else None
        loss = stepper.step(batch, noise)
        with torch.no_grad():
            step = loop.first_step + i
            ok = bool(torch.isfinite(loss).all())   # common case, one check
            check_w = step % 25 == 0 or i == schedule.num_steps - 1
            if check_w:
                fin = stepper.finite_rows()
                ok = ok and bool(fin.all())
            if not ok:
                bad = ~torch.isfinite(loss)
                if check_w:
                    bad |= ~fin
                new_bad = bad & ~diverged
                diverged_step[new_bad] = step
                diverged |= new_bad
                any_diverged = any_diverged or bool(new_bad.any())
            if any_diverged:
                stepper.reset(diverged)
            if draw or hooked:
                # a row diverged at or before step i has no valid draw at step i
                lrow = torch.where(diverged, torch.full_like(loss, nan), loss) if any_diverged else loss
                ev = Draw(index=d if draw else -1, step=i, loss=lrow, w=w_pre, diverged=diverged.clone(),
                          potential=pot, batch=batch, center=centers)
                for o in hooked:
                    o.on_step(ev)
                if draw:
                    for o in obs:
                        o.on_draw(ev)
                    d += 1
        if bar is not None:
            bar.update(1)
    if d != schedule.num_draws:  # pragma: no cover - schedule invariant
        raise RuntimeError(f"recorded {d} draws, expected {schedule.num_draws}")
