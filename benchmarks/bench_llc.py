"""Benchmark: batched LLC estimation vs devinterp 1.3.2, paper settings.

Workload (docs/methods.md#posterior-concentration / paper App G.4, Table 3): moons n = 512, noise 0.2;
MLP 2-64-64-2 ReLU trained with the sgdbayes engine (SGD lr 0.01, batch 128,
800 steps = 200 epochs); LLC with ε = 1e-5, γ = 100, 1 chain, 400 draws,
0 burn-in, 1 step between draws, nβ = B/log B with B = 128 (Table 3 gives no
SGLD batch size; we use the training batch size).

Threads: both backends run with the same torch intra-op thread count, 1 by
default. On this shared 2-core CPU one thread is the faster setting for both:
devinterp's per-model matmuls are too small to gain from 2 OpenMP threads, and
with other processes running, OpenMP spin-waiting made 2-thread runs of either
backend up to 15x slower. The batched backend then uses the second core by
running two row shards in Python threads (torch ops release the GIL).

The batched backend runs all models at once. devinterp runs model by model;
it is timed model by model on a subset of ``--devinterp-models`` models and the
median time per model is scaled linearly to all models (its cost is per model,
nothing is shared between models); the batched time is the median of 3 runs.
The batched runs and the devinterp models are interleaved, so that both sides
see the same phases of a shared machine. The output says so. Both use the same torch thread setting. The last line is
``ratio: X`` = (devinterp time scaled to all models) / (batched time).

The batched backend uses the compiled MLP kernel when it was built (printed;
``SGDBAYES_KERNEL=numpy`` measures the numpy/torch path instead).

    python benchmarks/bench_llc.py            # 100 models, devinterp on 10
    python benchmarks/bench_llc.py --quick    # 100 models, devinterp on 3
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--devinterp-models", type=int, default=None, help="subset timed with devinterp (default 10, quick 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both backends (default 1; 0 = torch's default)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_dev = args.devinterp_models or (3 if args.quick else 10)
    n_dev = min(n_dev, args.models)

    from sgdbayes.data import load_dataset
    from sgdbayes.engine import EnsembleConfig, train_ensemble
    from sgdbayes.sampling import LLCConfig, estimate_llc

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}")
    from sgdbayes._fused_mlp import c_kernel_available
    print("MLP kernel: " + ("C (sgdbayes/_ckernels.c)" if c_kernel_available() else
                            "numpy/torch (C kernel not built, or SGDBAYES_KERNEL=numpy)"))
    ds = load_dataset("moons", n=512, noise=0.2)
    ecfg = EnsembleConfig(dataset="moons", dataset_options=dict(n=512, noise=0.2), widths=(None, 64, 64, None),
                          lr=0.01, batch_size=128, steps=800, seeds=args.models, progress=False)
    t = time.perf_counter()
    res = train_ensemble(ecfg, data=ds)
    print(f"trained {args.models} moons MLPs (2-64-64-2, 800 SGD steps) in {time.perf_counter() - t:.1f} s")

    cfg = LLCConfig.paper()
    # warm-up (allocator, MKL init) on 2 models, 5 draws
    estimate_llc(res.w_final[:2], ds, spec=res.spec, config=LLCConfig.paper(num_draws=5))
    # Batched runs and devinterp models are interleaved (B, D..., B, D..., B) so that both see
    # the same phases of this shared machine, whose speed drifts by +-20 % over minutes;
    # each side is summarized by its median.
    times, per_model, llc_dev = [], [], []
    groups = np.array_split(np.arange(n_dev), 2)

    def batched_run():
        t = time.perf_counter()
        out = estimate_llc(res, ds, config=cfg)
        times.append(time.perf_counter() - t)
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in [*groups, None]:
            a = batched_run()
            for k in ([] if g is None else g.tolist()):
                t = time.perf_counter()
                b = estimate_llc(res.w_final[k:k + 1], ds, spec=res.spec, config=cfg, backend="devinterp",
                                 model_ids=[int(res.seeds[k])])
                per_model.append(time.perf_counter() - t)
                llc_dev.append(float(b.llc[0]))
    t_batched = float(np.median(times))
    print(f"batched : {args.models} models x 1 chain x 400 draws: median {t_batched:.2f} s "
          f"({1e3 * t_batched / args.models:.1f} ms/model; runs {', '.join(f'{v:.2f}' for v in times)} s)")
    t_model = float(np.median(per_model))  # robust to transient load (and devinterp's first-call cost)
    t_dev = t_model * args.models
    print(f"devinterp: {n_dev} models timed one by one: total {sum(per_model):.2f} s, median "
          f"{1e3 * t_model:.0f} ms/model (min {1e3 * min(per_model):.0f}, max {1e3 * max(per_model):.0f}); "
          f"scaled linearly to {args.models} models: {t_dev:.1f} s")
    print(f"llc (batched, all {args.models}): mean {np.nanmean(a.llc):.3f}, sd {np.nanstd(a.llc):.3f}, "
          f"negative {int(a.negative.sum())}, trend-flagged {int(a.trend_flag.sum())}, "
          f"diverged chains {int(a.diverged.sum())}, nbeta {a.nbeta:.3f}")
    print(f"llc on the {n_dev}-model subset: batched mean {np.nanmean(a.llc[:n_dev]):.3f} vs devinterp mean "
          f"{np.nanmean(llc_dev):.3f} (1 chain each: different random streams, compare in distribution)")
    print(f"ratio: {t_dev / t_batched:.1f}")


if __name__ == "__main__":
    main()
