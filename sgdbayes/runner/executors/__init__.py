"""Executors: where the shards of a sharded stage run (docs/scale_out.md).

``local`` runs them one after another in this process, ``ray`` on a Ray cluster (``ray.init(address=...)``
or a local cluster it starts), ``slurm`` as submitit jobs (``submitit.AutoExecutor``; its ``local`` and
``debug`` clusters run on this machine). Every executor runs the same worker function
(:func:`sgdbayes.runner.shards.execute_shard`), so a shard's numbers do not depend on where it ran.

The protocol is small (:class:`Executor`): ``start``, ``submit(task) -> handle``, ``wait(handles) ->
[(token, Partial or exception)]``, ``cancel``, ``close``; :func:`run_shards` drives it: at most
``capacity()`` shards in flight, a failed shard resubmitted up to ``retries`` times (Ray retries by
itself: ``max_retries``, ``retry_exceptions``), one progress bar over the seeds, and a
:class:`ShardFailed` naming the shard and its seeds once its retries are used up.

The settings are the ``[executor]`` section (:class:`ExecutorConfig`), typed like every section but
not part of the cache key: an executor changes where numbers are computed, never the numbers.
"""
from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from ..._validation import check_float, check_int
from ..shards import FaultPlan, Partial, ShardTask
from ..typed import ConfigError

__all__ = ["ExecutorConfig", "Executor", "ShardFailed", "make_executor", "run_shards", "require"]


@dataclass(frozen=True)
class ExecutorConfig:
    """``[executor]`` (not part of the cache key). Keys of one executor are ignored by the others.

    ``name``: ``local`` (this process), ``ray`` or ``slurm`` (submitit). ``shard_size``: seeds per
    shard (0: one shard per cell, i.e. the whole ensemble as one computation). ``retries``: how often
    a failed shard is run again before the study fails. ``workers``: most shards running at once (0:
    ray: as many as the cluster's CPUs allow; slurm: no limit; submitit's local cluster: cores //
    cpus_per_worker). ``cpus_per_worker``: cores each shard uses (the engine's worker threads; 0: local:
    all cores, ray and slurm: 1). ``gpus_per_worker``: GPUs each shard asks for (Ray may share one:
    0.5). ``address``: Ray cluster to join (``""``: start a local one, ``"auto"``: the running one);
    ``num_cpus``: CPUs of that local cluster (0: all). ``cluster``: submitit's cluster (``slurm``, or
    ``local`` / ``debug`` on this machine); ``partition``, ``account``, ``qos``, ``time_min`` (minutes
    per shard job), ``mem_gb`` (0: the cluster's default), ``folder`` (submitit's logs; ``""``: inside
    the stage's cache entry; on Slurm a folder the compute nodes see).
    """

    name: Literal["local", "ray", "slurm"] = "local"
    shard_size: int = 0
    retries: int = 2
    workers: int = 0
    cpus_per_worker: int = 0
    gpus_per_worker: float = 0.0
    address: str = ""
    num_cpus: int = 0
    cluster: Literal["slurm", "local", "debug"] = "slurm"
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 60
    mem_gb: float = 0.0
    folder: str = ""

    def __post_init__(self):
        for k in ("shard_size", "retries", "workers", "cpus_per_worker", "num_cpus"):
            check_int(k, getattr(self, k), 0)
        check_float("gpus_per_worker", self.gpus_per_worker, 0.0)
        check_int("time_min", self.time_min, 1)
        check_float("mem_gb", self.mem_gb, 0.0)
        if self.name == "slurm" and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker must be a whole number with slurm, got {self.gpus_per_worker}")


class ShardFailed(RuntimeError):
    """A shard failed on every attempt; names the stage, the shard, its seeds and the last error."""

    def __init__(self, task: ShardTask, attempts: int, cause: BaseException):
        super().__init__(f"{task.label} failed {attempts} time(s) (1 attempt + {attempts - 1} retries); last "
                         f"error: {type(cause).__name__}: {str(cause).strip()[-2000:]}. Finished shards are "
                         f"cached: rerun to compute only the missing ones")
        self.task, self.attempts, self.cause = task, attempts, cause


def require(module: str, extra: str):
    """Import an optional dependency or raise a ConfigError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"--executor {extra} needs the optional package {module!r}, which cannot be imported "
                          f"({exc}); install it with: pip install 'sgdbayes[{extra}]'") from None


class Executor:
    """Base of the executors (see the module docstring). ``fault`` is a test hook
    (:class:`~sgdbayes.runner.shards.FaultPlan`) given to every task."""

    name = "local"
    native_retries = False  # True: the backend reruns a failed shard itself (``retries`` times)

    def __init__(self, config: ExecutorConfig, fault: Optional[FaultPlan] = None):
        self.config, self.fault = config, fault
        self.started = False

    def check(self) -> None:
        """Raise ConfigError when the executor cannot be used here (checked before any stage runs)."""

    def start(self, log: Callable[[str], None], folder) -> None:
        self.started = True

    def capacity(self) -> int:
        return 1

    def task_device(self, requested: str, resolved: str) -> str:
        """The device a task names: workers elsewhere resolve ``auto`` themselves."""
        return requested

    def task_cpus(self) -> Optional[int]:
        return self.config.cpus_per_worker or 1

    def submit(self, task: ShardTask) -> Any:
        raise NotImplementedError

    def wait(self, handles: dict[int, Any]) -> list[tuple[int, Any]]:
        """At least one finished ``(token, Partial or exception)``."""
        raise NotImplementedError

    def cancel(self, handles: dict[int, Any]) -> None:
        pass

    def close(self) -> None:
        self.started = False

    def describe(self) -> str:
        return self.name


def make_executor(config: ExecutorConfig, fault: Optional[FaultPlan] = None) -> Executor:
    if config.name == "ray":
        from .ray import RayExecutor
        ex: Executor = RayExecutor(config, fault)
    elif config.name == "slurm":
        from .slurm import SubmititExecutor
        ex = SubmititExecutor(config, fault)
    else:
        from .local import LocalExecutor
        ex = LocalExecutor(config, fault)
    ex.check()
    return ex


def run_shards(executor: Executor, tasks: list[ShardTask], on_done: Callable[[ShardTask, Partial], None],
               log: Callable[[str], None], desc: str) -> int:
    """Run every task on ``executor``; ``on_done`` receives each finished shard (in this process).
    Returns how many retries were run here. A shard failing after its retries: the other shards in
    flight are finished (and passed to ``on_done``), then :class:`ShardFailed` is raised."""
    retries = executor.config.retries
    queue, inflight = deque(tasks), {}
    failed: Optional[ShardFailed] = None
    n_retried, token = 0, 0
    bar = _bar(sum(len(t.seeds) for t in tasks), desc, len(tasks))
    try:
        while queue or inflight:
            while queue and failed is None and len(inflight) < executor.capacity():
                task = queue.popleft()
                inflight[token] = (task, 1, executor.submit(task))
                token += 1
            if not inflight:
                break
            for tok, outcome in executor.wait({t: h for t, (_, _, h) in inflight.items()}):
                task, attempt, _ = inflight.pop(tok)
                if isinstance(outcome, Partial):
                    on_done(task, outcome)
                    if bar is not None:
                        bar.update(len(task.seeds))
                    continue
                if not executor.native_retries and attempt <= retries and failed is None:
                    log(f"    {task.label} failed ({type(outcome).__name__}: {_short(outcome)}); "
                        f"retry {attempt} of {retries}")
                    inflight[token] = (task, attempt + 1, executor.submit(task))
                    token, n_retried = token + 1, n_retried + 1
                    continue
                failed = failed or ShardFailed(task, retries + 1 if executor.native_retries else attempt, outcome)
                log(f"    {task.label} failed after its retries; finishing the shards in flight")
    except BaseException:
        executor.cancel({t: h for t, (_, _, h) in inflight.items()})
        raise
    finally:
        if bar is not None:
            bar.close()
    if failed is not None:
        raise failed
    return n_retried


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else "")[:200]


def _bar(total: int, desc: str, n_shards: int):
    """One tqdm bar over the seeds of every shard (none for a single shard or off a terminal)."""
    if n_shards < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{desc} ({n_shards} shards)", unit="seed", disable=None)
