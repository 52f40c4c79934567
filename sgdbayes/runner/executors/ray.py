"""``--executor ray``: each shard is a Ray task (``pip install 'sgdbayes[ray]'``).

``executor.address = ""`` starts a local Ray cluster for the run (``ray.init(num_cpus=executor.num_cpus
or all, include_dashboard=False)``) and shuts it down at the end; ``"auto"`` or ``"ray://host:10001"``
joins a running cluster (every node needs the same sgdbayes installed: a shard computed by another
sgdbayes version is refused). A process already connected to Ray (``ray.is_initialized()``) is used
as it is and left connected.

Each task asks for ``num_cpus = cpus_per_worker`` (default 1) and ``num_gpus = gpus_per_worker``;
Ray's own fault tolerance reruns a shard whose worker died or that raised (``max_retries =
executor.retries``, ``retry_exceptions=True``).
"""
from __future__ import annotations

from typing import Any, Callable

from ..shards import ShardTask, execute_shard
from . import Executor, require

__all__ = ["RayExecutor"]


class RayExecutor(Executor):
    name = "ray"
    native_retries = True

    def check(self) -> None:
        require("ray", "ray")

    def start(self, log: Callable[[str], None], folder) -> None:
        if self.started:
            return
        ray = require("ray", "ray")
        self._ray, self._owned = ray, not ray.is_initialized()
        if self._owned:
            cfg = self.config
            kw: dict[str, Any] = {"include_dashboard": False}
            if cfg.address:
                kw["address"] = cfg.address
            elif cfg.num_cpus:
                kw["num_cpus"] = cfg.num_cpus
            ray.init(**kw)
        self._cpus = int(ray.cluster_resources().get("CPU", 0))
        self._where = ("a local Ray cluster" if self._owned and not self.config.address else
                       f"the Ray cluster at {self.config.address or 'this process connection'}")
        log(f"    ray: {self._where} with {self._cpus} CPUs; {self.task_cpus()} CPU(s) per shard")
        self._remote = ray.remote(execute_shard)
        self.started = True

    def capacity(self) -> int:
        return self.config.workers or 1 << 30  # Ray queues what its CPUs cannot run yet

    def submit(self, task: ShardTask) -> Any:
        return self._remote.options(num_cpus=self.task_cpus(), num_gpus=self.config.gpus_per_worker,
                                    max_retries=self.config.retries, retry_exceptions=True,
                                    name=f"sgdbayes {task.stage} shard {task.index}").remote(task)

    def wait(self, handles: dict[int, Any]) -> list[tuple[int, Any]]:
        ray = self._ray
        refs = {ref: tok for tok, ref in handles.items()}
        ready, _ = ray.wait(list(refs), num_returns=1)
        more, _ = ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - len(ready), timeout=0)
        out = []
        for ref in [*ready, *more]:
            try:
                out.append((refs[ref], ray.get(ref)))
            except ray.exceptions.RayTaskError as exc:  # the shard raised: report its own exception
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                out.append((refs[ref], cause))
            except ray.exceptions.RayError as exc:  # its worker died, or the task was lost
                out.append((refs[ref], exc))
        return out

    def cancel(self, handles: dict[int, Any]) -> None:
        for ref in handles.values():
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass

    def close(self) -> None:
        if self.started and self._owned:
            self._ray.shutdown()
        self.started = False

    def describe(self) -> str:
        if not self.started:
            return "ray"
        return f"ray ({self._where}, {self._cpus} CPUs, {self.task_cpus()} per shard)"
