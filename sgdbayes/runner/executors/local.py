"""``--executor local``: the shards run one after another in this process (each one batched
computation on all of this machine's cores, as without shards)."""
from __future__ import annotations

from typing import Any, Optional

from ..shards import ShardTask, execute_shard
from . import Executor

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    name = "local"

    def task_device(self, requested: str, resolved: str) -> str:
        return resolved

    def task_cpus(self) -> Optional[int]:
        return self.config.cpus_per_worker or None  # None: the engine uses every core

    def submit(self, task: ShardTask) -> Any:
        return task  # run when waited for

    def wait(self, handles: dict[int, Any]) -> list[tuple[int, Any]]:
        token, task = next(iter(handles.items()))
        try:
            return [(token, execute_shard(task))]
        except Exception as exc:  # a failed shard (KeyboardInterrupt and SystemExit end the run)
            return [(token, exc)]

    def describe(self) -> str:
        return "local (this process)"
