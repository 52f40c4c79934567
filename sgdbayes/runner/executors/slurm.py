"""``--executor slurm``: each shard is a submitit job (``pip install 'sgdbayes[slurm]'``).

``submitit.AutoExecutor(folder, cluster=executor.cluster)``: ``slurm`` submits to Slurm, ``local`` runs
each job as a subprocess of this machine, ``debug`` runs it in this process (both for trying a set-up
without a cluster). The job's resources come from ``update_parameters``: ``timeout_min =
executor.time_min``, ``cpus_per_task = cpus_per_worker`` (default 1), ``gpus_per_node =
gpus_per_worker``, ``mem_gb``, and ``slurm_partition`` / ``slurm_account`` / ``slurm_qos`` when set.
Jobs run the Python of this process and import the installed sgdbayes, so on Slurm both must be on a
file system the compute nodes share (and so must ``executor.folder`` and the cache).

submitit does not rerun a failed job (only a preempted or timed-out checkpointable one); a shard
whose job raised or died (``FailedJobError``, ``UncompletedJobError``) is submitted again by
:func:`sgdbayes.runner.executors.run_shards`, ``executor.retries`` times.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from ..shards import ShardTask, execute_shard
from . import Executor, require

__all__ = ["SubmititExecutor"]


class SubmititExecutor(Executor):
    name = "slurm"

    def check(self) -> None:
        require("submitit", "slurm")

    def start(self, log: Callable[[str], None], folder) -> None:
        if self.started:
            return
        submitit = require("submitit", "slurm")
        cfg = self.config
        self._folder = Path(cfg.folder).expanduser() if cfg.folder else Path(folder)
        self._ex = submitit.AutoExecutor(folder=str(self._folder / "%j"), cluster=cfg.cluster)
        params: dict[str, Any] = {"timeout_min": cfg.time_min, "cpus_per_task": self.task_cpus(),
                                  "gpus_per_node": int(cfg.gpus_per_worker), "name": "sgdbayes-shard"}
        if cfg.mem_gb:
            params["mem_gb"] = cfg.mem_gb
        for key in ("partition", "account", "qos"):
            if getattr(cfg, key):
                params[f"slurm_{key}"] = getattr(cfg, key)
        self._ex.update_parameters(**params)
        self._errors = (submitit.core.utils.UncompletedJobError,)
        self._poll = 5.0 if cfg.cluster == "slurm" else 0.2
        log(f"    submitit: cluster {cfg.cluster!r}, {self.task_cpus()} CPU(s) per shard job, logs in {self._folder}")
        self.started = True

    def capacity(self) -> int:
        if self.config.workers:
            return self.config.workers
        if self.config.cluster == "slurm":
            return 1 << 30  # Slurm queues the jobs
        return max(1, (os.cpu_count() or 1) // self.task_cpus())

    def submit(self, task: ShardTask) -> Any:
        return self._ex.submit(execute_shard, task)

    def _outcome(self, job) -> Any:
        try:
            exc = job.exception()  # the debug cluster runs the job here (its result() would open pdb)
        except self._errors as err:  # died without a result (killed, out of memory, time limit)
            return err
        return exc if exc is not None else job.result()

    def wait(self, handles: dict[int, Any]) -> list[tuple[int, Any]]:
        if self.config.cluster == "debug":
            token, job = next(iter(handles.items()))
            return [(token, self._outcome(job))]
        while True:
            done = [(tok, job) for tok, job in handles.items() if job.done()]
            if done:
                return [(tok, self._outcome(job)) for tok, job in done]
            time.sleep(self._poll)

    def cancel(self, handles: dict[int, Any]) -> None:
        for job in handles.values():
            try:
                job.cancel(check=False)
            except Exception:  # already finished or gone
                pass

    def describe(self) -> str:
        c = self.config
        where = f"Slurm partition {c.partition!r}" if c.cluster == "slurm" and c.partition else f"cluster {c.cluster!r}"
        return f"slurm via submitit ({where}, {self.task_cpus()} CPU(s) per shard job)"
