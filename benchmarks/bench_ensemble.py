"""Benchmark: batched seed ensemble vs one nn.Module at a time (the natural baseline).

Paper's posterior-concentration workload (docs/methods.md#posterior-concentration): moons n=512, noise 0.2,
MLP 2-64-64-2 ReLU, batch 128, SGD lr 0.01, 200 epochs (800 steps), 500 seeds.
The baseline (nn.Module + torch.optim.SGD + DataLoader, one seed after another)
is timed on a subset of seeds (half before and half after the batched run, so
that both see the same phases of a shared machine) and scaled to all seeds. The last line printed is
``ratio: X`` = scaled baseline time / batched time.

The batched engine uses the compiled MLP kernel when it was built (printed);
``SGDBAYES_KERNEL=numpy python benchmarks/bench_ensemble.py`` measures the
numpy/torch path instead.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sgdbayes.data import load_dataset
from sgdbayes.engine import EnsembleConfig, train_ensemble
from sgdbayes.models import MLPSpec


def baseline_one(seed: int, data, spec: MLPSpec, epochs: int, lr: float, batch: int, device) -> float:
    torch.manual_seed(seed)
    model = spec._build_module().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch, shuffle=True,
                        drop_last=True, generator=g)
    loss = None
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(loss.detach())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small version (100 seeds, 50 epochs)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 500; quick 100)")
    ap.add_argument("--baseline-seeds", type=int, default=None,
                    help="seeds actually timed for the baseline (default 10; quick 4)")
    args = ap.parse_args(argv)
    K = args.seeds or (100 if args.quick else 500)
    epochs = 50 if args.quick else 200
    nb = min(K, args.baseline_seeds or (4 if args.quick else 10))
    data = load_dataset("moons", n=512, n_test=512, noise=0.2, seed=0, device=args.device)
    device = data.device
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    from sgdbayes._fused_mlp import c_kernel_available
    print("MLP kernel: " + ("C (sgdbayes/_ckernels.c)" if c_kernel_available() else
                            "numpy/torch (C kernel not built, or SGDBAYES_KERNEL=numpy)"))
    print(f"workload: {K} seeds, moons n=512, 2-64-64-2 ReLU, batch 128, SGD lr 0.01, "
          f"{epochs} epochs = {epochs * 4} steps")
    cfg = EnsembleConfig(dataset="moons", widths=(2, 64, 64, 2), batch_size=128, epochs=epochs,
                         lr=0.01, seeds=K, device=str(device), progress=False)
    # warm-up (small) so one-time costs don't count
    train_ensemble(EnsembleConfig(widths=(2, 64, 64, 2), batch_size=128, steps=5, seeds=4,
                                  device=str(device), progress=False), data)
    spec = MLPSpec((2, 64, 64, 2))
    baseline_one(10_000, data, spec, 1, 0.01, 128, device)    # warm-up
    # half of the baseline seeds before the batched run, half after: both sides see the same
    # phases of a shared machine, whose speed drifts by +-20 % over minutes
    halves = [list(range(nb // 2)), list(range(nb // 2, nb))]
    t_sub = 0.0

    def baseline(seeds):
        nonlocal t_sub
        t = time.perf_counter()
        for s in seeds:
            baseline_one(s, data, spec, epochs, 0.01, 128, device)
        t_sub += time.perf_counter() - t

    baseline(halves[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = train_ensemble(cfg, data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_batched = time.perf_counter() - t
    print(f"batched engine: {t_batched:.2f} s for {K} seeds "
          f"(mean final train acc {res.final.train_acc.mean():.3f}, diverged {int(res.final.diverged.sum())})")
    baseline(halves[1])
    t_base = t_sub / nb * K
    print(f"baseline (nn.Module + DataLoader, one seed at a time; half before, half after the batched run): "
          f"{t_sub:.2f} s for {nb} seeds = {t_sub / nb:.3f} s/seed; SCALED to {K} seeds: {t_base:.1f} s")
    print(f"ratio: {t_base / t_batched:.1f}")


if __name__ == "__main__":
    main()
