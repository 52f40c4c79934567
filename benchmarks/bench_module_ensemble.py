"""Benchmark: a CNN seed ensemble (sgdbayes) vs one nn.Module at a time, with the plain
torch.func vmap recipe timed in the same run.

Workload (issue 12 / docs/models.md): 64 seeds of the paper's Table-5 two-stage CNN
(:class:`sgdbayes.models.ConvNet`, channels 32, 64; 19,936 parameters on CIFAR, 19,360 on
one-channel 8x8 digits) on scikit-learn's digits as ``[n, 1, 8, 8]`` images, batch 64,
300 SGD steps (lr 0.01), every seed with its own minibatch order
(:func:`sgdbayes.engine.batch_indices`).

* **one at a time** (the natural baseline, ``ratio``'s numerator, as in
  ``bench_ensemble.py``): ``nn.Module`` + ``torch.optim.SGD`` + a shuffling ``DataLoader``,
  one seed after another, torch's default threads; timed on a few seeds (half before, half
  after the batched runs, so both see the same phases of a shared machine) and scaled to all
  seeds. The same loop with the minibatches indexed directly (no DataLoader, the seed's own
  :func:`~sgdbayes.engine.batch_indices` order) is timed beside it and its ratio printed too.
* **plain vmap recipe**: ``torch.func.stack_module_state`` + ``vmap(grad(loss))`` over the
  stacked parameters with per-seed minibatches and an SGD update of the stacked tensors
  (torch's default threads);
  timed on ``--recipe-steps`` steps and scaled to all steps.
* **sgdbayes**: ``train_ensemble(EnsembleConfig(model=ConvNet-family, ...))``, all steps.

Prints one line per side and finally ``ratio: X`` = one-at-a-time / sgdbayes (and the
recipe's ratio beside it).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sgdbayes.data import load_dataset
from sgdbayes.engine import EnsembleConfig, batch_indices, train_ensemble
from sgdbayes.models import ConvNet, build_model

CHANNELS = (32, 64)


def one_at_a_time(seeds, data, steps: int, batch: int, lr: float, loader: bool = True) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    t0 = time.perf_counter()
    for s in seeds:
        torch.manual_seed(s)
        model = ConvNet(CHANNELS, in_channels=1, n_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        if loader:
            dl = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(s))
            batches = (b for _ in range(-(-steps // len(dl))) for b in dl)
        else:
            idx = torch.from_numpy(batch_indices(s, data.n_train, batch, steps))
            batches = ((data.x_train[i], data.y_train[i]) for i in idx)
        for t, (xb, yb) in zip(range(steps), batches):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def vmap_recipe(K: int, data, steps: int, batch: int, lr: float) -> float:
    from torch.func import functional_call, grad, stack_module_state, vmap

    mods = []
    for s in range(K):
        torch.manual_seed(s)
        mods.append(ConvNet(CHANNELS, in_channels=1, n_classes=10))
    params, buffers = stack_module_state(mods)
    params = {k: v.detach() for k, v in params.items()}
    base = ConvNet(CHANNELS, in_channels=1, n_classes=10).to("meta")

    def loss_fn(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    g = vmap(grad(loss_fn))
    idx = torch.stack([torch.from_numpy(batch_indices(s, data.n_train, batch, steps)) for s in range(K)], 1)
    t0 = time.perf_counter()
    for t in range(steps):
        xb, yb = data.x_train[idx[t]], data.y_train[idx[t]]
        grads = g(params, buffers, xb, yb)
        for k in params:
            params[k].sub_(grads[k], alpha=lr)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small version (16 seeds, 60 steps)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 64; quick 16)")
    ap.add_argument("--steps", type=int, default=None, help="SGD steps (default 300; quick 60)")
    ap.add_argument("--baseline-seeds", type=int, default=4, help="seeds timed one at a time (scaled)")
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="torch threads of the one-at-a-time and recipe runs (default: torch's default; on a "
                         "loaded machine 2 OpenMP threads spin-wait, 1 is the fairer baseline)")
    ap.add_argument("--recipe-steps", type=int, default=None,
                    help="steps timed for the vmap recipe, scaled to all steps (default: a fifth)")
    args = ap.parse_args(argv)
    K = args.seeds or (16 if args.quick else 64)
    steps = args.steps or (60 if args.quick else 300)
    rsteps = args.recipe_steps or max(1, steps // 5)
    batch, lr = 64, 0.01
    if args.baseline_threads:
        torch.set_num_threads(args.baseline_threads)
    data = load_dataset("digits", images=True, device=args.device)
    fam = build_model("cnn", channels=CHANNELS, in_channels=1, n_classes=10)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {data.device}")
    print(f"workload: {K} seeds, ConvNet channels {CHANNELS} ({fam.n_params} parameters) on digits "
          f"[n={data.n_train}, 1, 8, 8], batch {batch}, {steps} SGD steps; sgdbayes backend {fam.backend}")
    cfg = EnsembleConfig(model=fam, batch_size=batch, steps=steps, seeds=K, lr=lr, device=str(data.device),
                         progress=False)
    train_ensemble(EnsembleConfig(model=fam, batch_size=batch, steps=3, seeds=2, progress=False), data)  # warm-up
    one_at_a_time([10_000], data, 3, batch, lr)
    nb = max(2, min(K, args.baseline_seeds))
    half = [range(nb // 2), range(nb // 2, nb)]
    t_base = one_at_a_time(half[0], data, steps, batch, lr)
    t_idx = one_at_a_time(half[0], data, steps, batch, lr, loader=False)
    t0 = time.perf_counter()
    res = train_ensemble(cfg, data)
    t_ours = time.perf_counter() - t0
    t_recipe = vmap_recipe(K, data, rsteps, batch, lr) * steps / rsteps
    t_base += one_at_a_time(half[1], data, steps, batch, lr)
    t_idx += one_at_a_time(half[1], data, steps, batch, lr, loader=False)
    t_one, t_one_idx = t_base / nb * K, t_idx / nb * K
    print(f"one nn.Module at a time (DataLoader): {t_base / nb:.2f} s per seed -> {t_one:.1f} s for {K} seeds")
    print(f"one nn.Module at a time (indexed minibatches, no DataLoader): {t_idx / nb:.2f} s per seed -> "
          f"{t_one_idx:.1f} s; ratio vs sgdbayes {t_one_idx / t_ours:.2f}")
    print(f"plain torch.func vmap recipe: {t_recipe:.1f} s ({rsteps} of {steps} steps timed, scaled)")
    print(f"sgdbayes: {t_ours:.1f} s (chunks of {res.meta['chunk_size']}, {res.meta['workers']} workers); "
          f"{t_recipe / t_ours:.2f}x the vmap recipe")
    print(f"recipe ratio (one at a time / vmap recipe): {t_one / t_recipe:.2f}")
    print(f"ratio: {t_one / t_ours:.2f}")


if __name__ == "__main__":
    main()
