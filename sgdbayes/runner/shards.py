"""Sharded stages: the contract a stage declares to be computed as shards of seeds (docs/scale_out.md).

A stage that is embarrassingly parallel over seeds (training an ensemble, λ̂ of solutions, a grid of
cells or architectures) declares a :class:`Sharding` instead of a ``run`` function:

* ``cells(ctx) -> [(cell, seeds)]``: the work, as cells (one architecture, one grid cell; a plain
  ensemble is the one cell 0) and the seed ids of each cell, in the order the stage's outputs list them;
* ``compute(task) -> Partial``: one shard, i.e. some seeds of one cell as ONE batched computation.
  A module-level function (it is pickled by reference and run on a worker); it rebuilds what it needs
  (the data) from the typed configuration ``task.config`` and reads earlier stages only through
  ``task.inputs``;
* ``inputs(ctx, cell, seeds) -> dict`` (optional): the rows of earlier stages' outputs a shard needs
  (e.g. the final weights of its seeds);
* ``merge(ctx, cells: [Partial]) -> dict``: the stage's outputs from one merged :class:`Partial` per
  cell (rows in seed order), exactly what ``run`` would have returned.

A seed's numbers never depend on which other seeds share its shard (the engine and the samplers key
every random stream by the seed id), so any partition of the seeds gives the same stage outputs; the
runner merges by seed id and checks that the shards cover the requested seeds exactly once.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np

__all__ = ["Sharding", "ShardTask", "Partial", "FaultPlan", "InjectedFault", "execute_shard", "merge_cells",
           "plan_shards"]


@dataclass(frozen=True)
class Sharding:
    """How a stage is split into shards of seeds (see the module docstring)."""

    cells: Callable[[Any], Sequence[tuple[int, Sequence[int]]]]
    compute: Callable[["ShardTask"], "Partial"]
    merge: Callable[[Any, list["Partial"]], dict]
    inputs: Optional[Callable[[Any, int, tuple[int, ...]], dict]] = None


@dataclass(frozen=True)
class FaultPlan:
    """Test hook (docs/scale_out.md): shard ``shard`` of stage ``stage`` fails on its first ``times``
    attempts (``times < 0``: on every attempt). ``mode="raise"`` raises :class:`InjectedFault` in the
    worker, ``"exit"`` ends the worker process at once (a dead worker). Attempts are counted by files in
    ``marker_dir``, a folder every worker can write (so the count survives the worker)."""

    stage: str
    shard: int
    marker_dir: str
    times: int = 1
    mode: Literal["raise", "exit"] = "raise"

    def apply(self, task: "ShardTask") -> None:
        if task.stage != self.stage or task.index != self.shard:
            return
        d = Path(self.marker_dir)
        d.mkdir(parents=True, exist_ok=True)
        n = len(list(d.glob(f"{self.stage}-{self.shard}-*")))
        (d / f"{self.stage}-{self.shard}-{uuid.uuid4().hex}").touch()
        if self.times < 0 or n < self.times:
            if self.mode == "exit":
                os._exit(17)
            raise InjectedFault(f"injected fault in {task.label} (attempt {n + 1})")


class InjectedFault(RuntimeError):
    """The failure a :class:`FaultPlan` raises."""


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard needs, picklable: the typed ``config``, the ``seeds`` of ``cell``, the
    ``device`` (``auto`` is resolved by the worker), ``cpus`` (the worker's cores for the engine's
    worker threads; None = all cores of the machine), ``torch_threads`` (the run's ``--threads``),
    the stage's ``compute`` function and the rows of earlier stages it reads (``inputs``)."""

    stage: str
    index: int
    cell: int
    seeds: tuple[int, ...]
    config: Any
    device: str
    compute: Callable[["ShardTask"], "Partial"]
    inputs: dict = field(default_factory=dict)
    cpus: Optional[int] = None
    torch_threads: int = 0
    progress: bool = False
    fault: Optional[FaultPlan] = None

    @property
    def label(self) -> str:
        return f"shard {self.index} of stage {self.stage!r} (cell {self.cell}, seeds {_seed_text(self.seeds)})"

    def engine_workers(self, hooks: bool) -> Optional[int]:
        """``EnsembleConfig.workers`` for this shard: the worker's cores, 1 when hooks run (the engine
        calls hooks chunk by chunk)."""
        return 1 if hooks else self.cpus


def _seed_text(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds[:8])) + (f", ... ({len(seeds)} seeds)" if len(seeds) > 8 else "")


@dataclass
class Partial:
    """One shard's outputs: ``rows`` (arrays whose first axis is the shard's seeds, in order),
    ``shared`` (the same in every shard of a cell, e.g. the step grid: checked when merged), ``totals``
    (numbers summed over shards: counts, seconds) and ``first`` (descriptive values taken from the
    first shard). ``cell``, ``seeds`` and ``meta`` (worker, device, wall time, sgdbayes version) are
    filled in by :func:`execute_shard`."""

    rows: dict[str, np.ndarray]
    shared: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)
    cell: int = 0
    seeds: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)

    @classmethod
    def split(cls, out: dict, rows: Sequence[str], totals: Sequence[str] = (), first: Sequence[str] = ()) -> "Partial":
        """A flat stage-style dict as a Partial: the keys ``rows``, ``totals`` and ``first`` go there,
        every other key is shared."""
        named = set(rows) | set(totals) | set(first)
        return cls(rows={k: np.asarray(out[k]) for k in rows}, totals={k: out[k] for k in totals},
                   first={k: out[k] for k in first}, shared={k: v for k, v in out.items() if k not in named})

    def flat(self) -> dict:
        """Shared, first, totals and rows in one dict (the inverse of :meth:`split`)."""
        return {**self.shared, **self.first, **self.totals, **self.rows}

    # -- storage (the stage cache keeps arrays in .npz and the rest as JSON) ----------------------
    def to_store(self) -> dict:
        out: dict[str, Any] = {"seeds": np.asarray(self.seeds, dtype=np.int64), "cell": int(self.cell)}
        for part in ("rows", "shared", "totals", "first"):
            out.update({f"{part}.{k}": v for k, v in getattr(self, part).items()})
        return out

    @classmethod
    def from_store(cls, stored: dict, meta: dict) -> "Partial":
        parts: dict[str, dict] = {"rows": {}, "shared": {}, "totals": {}, "first": {}}
        for k, v in stored.items():
            if "." in k:
                part, name = k.split(".", 1)
                parts[part][name] = v
        return cls(**parts, cell=int(stored["cell"]), seeds=tuple(int(s) for s in stored["seeds"]), meta=dict(meta))


def execute_shard(task: ShardTask) -> Partial:
    """Run one shard (in whichever process the executor chose): the run's thread policy, the device
    resolved here, ``task.compute``; checks that every row array has one row per seed."""
    from .. import __version__
    from .device import configure_threads, resolve_device

    if task.fault is not None:
        task.fault.apply(task)
    device = resolve_device(task.device)
    threads = configure_threads(device, task.torch_threads)
    t0 = time.perf_counter()
    part = task.compute(dataclasses.replace(task, device=device))
    wall = time.perf_counter() - t0
    if not isinstance(part, Partial):
        raise TypeError(f"{task.label}: compute returned {type(part).__name__}, not a Partial")
    for k, v in part.rows.items():
        if np.ndim(v) == 0 or np.shape(v)[0] != len(task.seeds):
            raise ValueError(f"{task.label}: row output {k!r} has shape {np.shape(v)}, expected "
                             f"{len(task.seeds)} rows (one per seed)")
    meta = {"worker": f"{socket.gethostname()}:{os.getpid()}", "device": device, "wall_s": wall,
            "torch_threads": threads, "sgdbayes": __version__}
    return dataclasses.replace(part, cell=task.cell, seeds=tuple(task.seeds), meta=meta)


# --------------------------------------------------------------------------- planning and merging

def plan_shards(cells: Sequence[tuple[int, tuple[int, ...]]], have: Sequence[Partial],
                shard_size: int) -> list[tuple[int, tuple[int, ...]]]:
    """The shards still to compute: per cell, the seeds no partial in ``have`` covers, as runs of
    consecutive requested seeds cut into shards of ``shard_size`` (0: one shard per run)."""
    todo = []
    for cell, seeds in cells:
        done = {s for p in have if p.cell == cell for s in p.seeds}
        run: list[int] = []
        runs = []
        for s in seeds:
            if s in done:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(s)
        if run:
            runs.append(run)
        for r in runs:
            size = shard_size if shard_size > 0 else len(r)
            todo += [(cell, tuple(r[i:i + size])) for i in range(0, len(r), size)]
    return todo


def disjoint_cover(cells: Sequence[tuple[int, tuple[int, ...]]], cached: Sequence[Partial]) -> list[Partial]:
    """Cached partials that may be reused: of the requested cells, only requested seeds, no seed twice
    (earliest seed first; a partial that overlaps one already taken is left out)."""
    wanted = {cell: {s: i for i, s in enumerate(seeds)} for cell, seeds in cells}
    taken: dict[int, set] = {cell: set() for cell in wanted}
    out = []
    for p in sorted(cached, key=lambda p: (p.cell, wanted.get(p.cell, {}).get(p.seeds[0], -1) if p.seeds else -1)):
        pos = wanted.get(p.cell)
        if pos is None or not p.seeds or any(s not in pos for s in p.seeds) or taken[p.cell] & set(p.seeds):
            continue
        taken[p.cell] |= set(p.seeds)
        out.append(p)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def merge_cells(stage: str, cells: Sequence[tuple[int, tuple[int, ...]]], parts: Sequence[Partial]) -> list[Partial]:
    """One Partial per cell, rows in the requested seed order. Raises RuntimeError unless the parts
    cover every requested seed of every cell exactly once and agree on the shared outputs."""
    merged = []
    for cell, seeds in cells:
        mine = [p for p in parts if p.cell == cell]
        pos = {s: i for i, s in enumerate(seeds)}
        got = [s for p in mine for s in p.seeds]
        extra = sorted({s for s in got if s not in pos})
        twice = sorted({s for s in got if got.count(s) > 1})
        missing = [s for s in seeds if s not in set(got)]
        if extra or twice or missing:
            raise RuntimeError(f"stage {stage!r} cell {cell}: shards do not cover the requested seeds exactly once "
                               f"(not requested: {extra}, counted twice: {twice}, missing: {missing})")
        if not mine:  # a cell without seeds
            merged.append(Partial(rows={}, cell=cell))
            continue
        mine.sort(key=lambda p: pos[p.seeds[0]])
        for p in mine[1:]:
            for k in mine[0].shared.keys() | p.shared.keys():
                if not _same(mine[0].shared.get(k), p.shared.get(k)):
                    raise RuntimeError(f"stage {stage!r} cell {cell}: shared output {k!r} differs between shards "
                                       f"(seeds {_seed_text(mine[0].seeds)} and {_seed_text(p.seeds)})")
        order = np.argsort([pos[s] for p in mine for s in p.seeds], kind="stable")
        rows = {k: np.concatenate([np.asarray(p.rows[k]) for p in mine])[order] for k in mine[0].rows}
        totals = {k: sum(p.totals[k] for p in mine) for k in mine[0].totals}
        merged.append(Partial(rows=rows, shared=dict(mine[0].shared), totals=totals, first=dict(mine[0].first),
                              cell=cell, seeds=tuple(seeds), meta={"shards": len(mine)}))
    return merged
