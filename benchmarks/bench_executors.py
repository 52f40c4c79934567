"""Benchmark: the anomalous_diffusion training stage on Ray, 1 worker versus 2 (docs/scale_out.md).

1. **Scaling**: the stage's seeds in 2 shards on a local Ray cluster (``ray.init(num_cpus=2)``),
   ``executor.workers = 1`` (the shards one after another) versus ``workers = 2`` (both at once, one
   core each); every shard is one batched computation on one torch thread. ``ratio`` = wall time with 1
   worker / with 2 (goal >= 1.6 on a 2-core machine). Also printed: the same stage with the local
   executor on one core (``executor.cpus_per_worker = 1``), the natural baseline.
2. **Overhead per shard**: the quick preset's 12 seeds as 12 one-seed shards on Ray (1 worker) versus
   the local executor with the same shards; (Ray - local) / 12.

The numbers of every run are identical (tests/test_executors.py checks it); only wall time differs.
Each configuration runs ``--repeat`` times alternating, after one warm-up run that starts Ray's
workers (their start and imports are not counted); the median is printed.

    python benchmarks/bench_executors.py            # default: 200 seeds of the default preset's network
    python benchmarks/bench_executors.py --quick    # 64 seeds, 400 steps
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from sgdbayes.runner.executors import ExecutorConfig, make_executor
from sgdbayes.runner.orchestrate import run_study

STUDY = "anomalous_diffusion"


def stage_wall(sets: list[str], cfg: ExecutorConfig, executor=None) -> float:
    """Wall seconds of the training stage (a fresh cache each time: nothing is reused)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_study(STUDY, sets=sets, out=Path(tmp) / "out", threads=1, log=lambda s: None,
                  executor=executor if executor is not None else cfg)
        res = json.loads((Path(tmp) / "out" / "results.json").read_text())
    return float(res["executor"]["train"]["shards_wall_s"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    seeds, steps = (64, 400) if args.quick else (200, 800)
    sets = [f"train.seeds={seeds}", f"train.steps={steps}", "fit.n_boot=19", "analysis.n_boot=100"]

    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        ray_ex = {w: make_executor(ExecutorConfig(name="ray", shard_size=seeds // 2, workers=w, cpus_per_worker=1))
                  for w in (1, 2)}
        local1 = ExecutorConfig(name="local", shard_size=seeds // 2, cpus_per_worker=1)
        # warm-up: Ray's workers start and import torch and sgdbayes on their first task
        # (one-seed shards on 2 workers, so both workers are started before anything is timed)
        warm = make_executor(ExecutorConfig(name="ray", shard_size=1, workers=2, cpus_per_worker=1))
        for _ in range(2):
            stage_wall(["train.seeds=4", "train.steps=20", "fit.n_boot=19", "analysis.n_boot=100"], warm.config, warm)
        times: dict[str, list[float]] = {"ray-1": [], "ray-2": [], "local-1core": []}
        for _ in range(args.repeat):
            times["ray-1"].append(stage_wall(sets, ray_ex[1].config, ray_ex[1]))
            times["ray-2"].append(stage_wall(sets, ray_ex[2].config, ray_ex[2]))
            times["local-1core"].append(stage_wall(sets, local1))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"training stage, {seeds} seeds x {steps} steps in 2 shards (median of {args.repeat}):")
        for k, v in med.items():
            print(f"  {k:12s} {v:8.2f} s")
        print(f"ratio: {med['ray-1'] / med['ray-2']:.2f}  (1 Ray worker / 2 Ray workers; goal >= 1.6)")
        print(f"ratio vs local on one core: {med['local-1core'] / med['ray-2']:.2f}")

        one = make_executor(ExecutorConfig(name="ray", shard_size=1, workers=1, cpus_per_worker=1))
        small = ["train.seeds=12", "train.steps=200", "fit.n_boot=19", "analysis.n_boot=100"]
        r = statistics.median(stage_wall(small, one.config, one) for _ in range(args.repeat))
        loc = statistics.median(stage_wall(small, ExecutorConfig(shard_size=1, cpus_per_worker=1))
                                for _ in range(args.repeat))
        print(f"overhead per shard: {(r - loc) / 12 * 1e3:.0f} ms (12 one-seed shards: ray {r:.2f} s, local {loc:.2f} s)")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
