"""Where a study computes: the device and torch's CPU threads (the one place a study sets them).

Used by the runner in the driver process and by :func:`sgdbayes.runner.shards.execute_shard` in every
worker process, so that a shard computed on a Ray or Slurm worker runs under the same thread policy
as one computed here.
"""
from __future__ import annotations

__all__ = ["resolve_device", "configure_threads"]


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for but torch.cuda.is_available() is False")
    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_threads(device: str, threads: int = 0) -> int:
    """torch CPU threads for a study run (the one place a study sets them); returns the count.

    ``threads > 0`` sets that many intra-op threads; ``threads == 0`` (automatic)
    sets 1 on the CPU. sgdbayes parallelizes over models itself: the engine runs
    chunks of seeds in worker threads and the SGLD sampler runs row shards in
    worker threads, one per core, each with one torch thread; torch's OpenMP
    threads on top of that oversubscribe the cores. Measured on the 2-core
    machines this runs on: spectral_dimension's default preset took 79 s with
    1 thread and had not finished after 10 minutes with 2; batched SGLD under
    load ran 5x slower with 2 threads (14.7 s vs 2.7 s for 100 models x 40
    steps). Inter-op threads are limited to 1. Threads change speed (and the
    last bits of float sums), never the configuration: not part of the cache
    key, recorded in the report.
    """
    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started in this process
        pass
    if device != "cpu":
        return torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads > 0 else 1)
    return torch.get_num_threads()
