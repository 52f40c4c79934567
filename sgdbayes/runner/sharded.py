"""Computing a sharded stage (:class:`~sgdbayes.runner.shards.Sharding`): reuse cached shards, run
the missing ones on the executor, merge by seed id (docs/scale_out.md).

Finished shards are cached one by one under the stage's cache entry, ``<cache>/<hash>/<stage>/shards/
<key>/`` (the files of a stage entry: ``arrays.npz``, ``data.json``, ``_done.json`` with sizes and
checksums), written by this process only, under the cache entry's lock that the run holds. A shard's
identity is the stage's (configuration hash, sgdbayes version, the computations of the earlier stages
it read) plus its cell and seeds; a rerun reuses every cached shard with the same identity whose seeds
are requested and not already covered, and computes only the rest. Once the stage itself is cached
its shard folder is removed with the rest of the old entry (the stage entry then holds every seed).
With a single shard nothing is cached per shard (it would be the stage entry twice).
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cache import CacheEntryError, StageCache
from .executors import Executor, run_shards
from .shards import Partial, ShardTask, disjoint_cover, merge_cells, plan_shards

__all__ = ["ShardRun", "run_sharded_stage"]


@dataclass
class ShardRun:
    """What a run needs to compute sharded stages: the executor, the device asked for (``auto``,
    ``cpu``, ``cuda``), the run's torch threads and whether cached shards may be reused."""

    executor: Executor
    device: str
    threads: int
    reuse: bool = True


def _key(cell: int, seeds: tuple[int, ...]) -> str:
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).hexdigest()[:10]
    return f"c{cell}-s{seeds[0]}-{seeds[-1]}-n{len(seeds)}-{digest}"


class ShardStore:
    """The cached shards of one stage (a :class:`StageCache` whose entries are shards)."""

    def __init__(self, root: Path, identity: dict):
        self.cache, self.identity = StageCache(root), identity

    def cached(self, log: Callable[[str], None]) -> list[Partial]:
        """Every readable shard of this identity (temporaries of an interrupted write are removed)."""
        root = self.cache.root
        if not root.is_dir():
            return []
        for stray in [*root.glob(".*.tmp-*"), *root.glob(".*.old-*")]:
            shutil.rmtree(stray, ignore_errors=True)
        out = []
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not self.cache.is_done(d.name):
                continue
            try:
                info = self.cache.info(d.name)
                if info.get("identity") != self.identity:
                    continue
                out.append(Partial.from_store(self.cache.load(d.name), info.get("meta", {})))
            except (CacheEntryError, KeyError, ValueError, TypeError) as exc:
                log(f"    cached shard {d.name} not used ({exc}); its seeds are computed again")
        return out

    def save(self, part: Partial) -> Partial:
        """Cache a finished shard; returns it as read back (what is cached is what is merged)."""
        key = _key(part.cell, part.seeds)
        self.cache.save(key, part.to_store(), {"identity": self.identity, "cell": part.cell,
                                               "seeds": list(part.seeds), "meta": part.meta})
        return Partial.from_store(self.cache.load(key), part.meta)


def run_sharded_stage(ctx, stage, expected: dict, run: ShardRun) -> tuple[dict, dict]:
    """The stage's outputs and what the report says about how they were computed (executor, shards,
    workers, retries)."""
    from .. import __version__

    sh = stage.shard
    cells = [(int(c), tuple(int(s) for s in seeds)) for c, seeds in sh.cells(ctx)]
    store = ShardStore(ctx.cache.stage_dir(stage.name) / "shards", {**expected, "stage": stage.name})
    reused = disjoint_cover(cells, store.cached(ctx.log)) if run.reuse else []
    todo = plan_shards(cells, reused, run.executor.config.shard_size)
    n_shards = len(reused) + len(todo)
    parts, fresh = list(reused), []
    if reused:
        ctx.log(f"    {len(reused)} of {n_shards} shards loaded from the cache; computing {len(todo)}")
    n_retried, t0 = 0, time.perf_counter()
    if todo:
        ex = run.executor
        ex.start(ctx.log, ctx.cache.stage_dir(stage.name) / "submitit")
        tasks = [ShardTask(stage.name, i, cell, seeds, ctx.config, ex.task_device(run.device, ctx.device),
                           sh.compute, sh.inputs(ctx, cell, seeds) if sh.inputs else {}, ex.task_cpus(),
                           run.threads, progress=n_shards == 1 and ex.name == "local", fault=ex.fault)
                 for i, (cell, seeds) in enumerate(todo)]

        def done(task: ShardTask, part: Partial) -> None:
            if part.meta.get("sgdbayes") != __version__:
                raise RuntimeError(f"{task.label} was computed by sgdbayes {part.meta.get('sgdbayes')} on "
                                   f"{part.meta.get('worker')}; this is {__version__}: install the same version on "
                                   f"every worker")
            part = store.save(part) if n_shards > 1 else part
            parts.append(part)
            fresh.append(part)

        n_retried = run_shards(ex, tasks, done, ctx.log, f"[{stage.name}] {ex.name}")
    outputs = sh.merge(ctx, merge_cells(stage.name, cells, parts))
    return outputs, _info(run.executor, cells, reused, fresh, n_shards, n_retried, time.perf_counter() - t0)


def _info(ex: Executor, cells, reused, fresh, n_shards: int, n_retried: int, wall: float) -> dict[str, Any]:
    every = [*reused, *fresh]
    return {"executor": ex.name, "description": ex.describe() if fresh else "(every shard from the cache)",
            "shards": n_shards, "computed": len(fresh), "reused": len(reused),
            "shard_size": ex.config.shard_size, "seeds": sum(len(s) for _, s in cells), "cells": len(cells),
            "workers": len({p.meta.get("worker") for p in fresh}), "retries": ex.config.retries,
            "retried": n_retried, "native_retries": ex.native_retries, "shards_wall_s": wall,
            "devices": sorted({str(p.meta.get("device")) for p in every}) or [],
            "torch_threads": sorted({int(p.meta["torch_threads"]) for p in every if "torch_threads" in p.meta})}
