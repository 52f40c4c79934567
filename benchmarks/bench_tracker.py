"""Benchmark: the cost of sgdbayes.track.Tracker in a training loop.

1. **Overhead per training step with the LLC off**, for a small CNN on the 8x8 digits
   (SGD, batch 64) and a tiny randomly initialised GPT-2 (2 layers, width 64, vocab 256,
   sequences of 32 tokens, AdamW, batch 16): the same loop with ``tracker.step()`` after
   each optimizer step versus without it. The tracker records R(t) on its default grid
   (``total_steps`` given: 100 geometric points + every 10 steps), i.e. every step early
   on. Runs alternate (untracked, tracked, untracked, ...) so both see the same phases of a
   shared machine; ``ratio`` = median over pairs of tracked time / untracked time (goal
   <= 1.05). The time spent inside ``tracker.step()`` itself is printed too (a figure less
   sensitive to other processes).
2. **LLC snapshots**: K snapshots taken along training (of the moons MLP of the paper's
   App G.4, 2-64-64-2, and of the digits CNN), estimated at
   ``close()`` as one batched computation, versus calling
   :func:`sgdbayes.sampling.estimate_llc` on a copy of the model per snapshot (what a
   loop that estimates the LLC every N steps does); same settings and chain seeds, so
   the same numbers. Interleaved (half the per-snapshot calls, batched, the other half,
   batched); ``ratio`` = per-snapshot total / batched (median of 2) (goal >= 3).

Threads: one torch intra-op thread by default (``--threads``); on a shared 2-core CPU
two OpenMP threads of small models spin-wait on each other.

    python benchmarks/bench_tracker.py            # full
    python benchmarks/bench_tracker.py --quick    # fewer steps and snapshots
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 64, 10))


def _digits():
    from sgdbayes.data import load_dataset

    d = load_dataset("digits")
    return d.x_train.reshape(-1, 1, 8, 8), d.y_train


def _gpt2():
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    cfg = GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg)


class _Workload:
    def __init__(self, name, make_model, make_opt, batch_fn, loss_fn, steps):
        self.name, self.make_model, self.make_opt = name, make_model, make_opt
        self.batch_fn, self.loss_fn, self.steps = batch_fn, loss_fn, steps

    def run(self, tracked: bool, out) -> tuple[float, float]:
        """(wall time of the loop, time inside tracker.step())."""
        from sgdbayes.track import Tracker

        torch.manual_seed(0)
        model = self.make_model()
        opt = self.make_opt(model)
        tr = Tracker(model, run="b", out=out, total_steps=self.steps, overwrite=True) if tracked else None
        g = torch.Generator().manual_seed(0)
        in_tracker = 0.0
        t0 = time.perf_counter()
        for _ in range(self.steps):
            loss = self.loss_fn(model, self.batch_fn(g))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if tr is not None:
                s = time.perf_counter()
                tr.step()
                in_tracker += time.perf_counter() - s
        if tr is not None:
            s = time.perf_counter()
            tr.frame()  # bring the recorded values to the host, as close() would
            in_tracker += time.perf_counter() - s
        return time.perf_counter() - t0, in_tracker


def _overhead(w: _Workload, pairs: int, out) -> None:
    w.run(False, out), w.run(True, out)  # warm-up
    ratios, base, inside = [], [], []
    for _ in range(pairs):
        b, _ = w.run(False, out)
        t, i = w.run(True, out)
        ratios.append(t / b)
        base.append(b)
        inside.append(i)
    med_b = statistics.median(base)
    print(f"{w.name}: {w.steps} steps, untracked {1e3 * med_b / w.steps:.3f} ms/step; "
          f"inside tracker.step() {1e3 * statistics.median(inside) / w.steps:.4f} ms/step "
          f"({100 * statistics.median(inside) / med_b:.2f} % of the untracked loop)")
    print(f"ratio: {statistics.median(ratios):.3f}  (tracked / untracked wall time per step, {w.name}, "
          f"median of {pairs} interleaved pairs; goal <= 1.05)")


def _mlp():
    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def _moons():
    from sgdbayes.data import load_dataset

    d = load_dataset("moons")
    return d.x_train, d.y_train


def _llc(name, make_model, data, K: int, every: int, draws: int, tmp: str) -> None:
    from sgdbayes.sampling import LLCConfig, estimate_llc
    from sgdbayes.track import Tracker, snapshot_model_id

    x, y = data
    cfg = LLCConfig(step_size=1e-5, num_chains=4, num_draws=draws, batch_size=128)
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = os.path.join(tmp, "llc.csv")
    kw = dict(run="llc", out=out, data=(x, y), llc_every=every, llc=cfg, total_steps=K * every)
    tr = Tracker(model, **kw, overwrite=True)
    copies = []
    g = torch.Generator().manual_seed(1)
    for t in range(1, K * every + 1):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tr.step()
        if t % every == 0:
            copies.append((t, copy.deepcopy(model)))
    state = tr.state_dict()

    def batched() -> float:
        fresh = Tracker(model, **kw)
        fresh.load_state_dict(state)
        s = time.perf_counter()
        fresh.close()
        return time.perf_counter() - s

    def one_by_one(part) -> float:
        s = time.perf_counter()
        for t, m in part:
            estimate_llc([m], (x, y), config=cfg, model_ids=[snapshot_model_id("llc", t)])
        return time.perf_counter() - s

    half = len(copies) // 2
    loop = one_by_one(copies[:half])
    b1 = batched()
    loop += one_by_one(copies[half:])
    b2 = batched()
    b = statistics.median([b1, b2])
    n = sum(p.numel() for p in model.parameters())
    print(f"LLC of {K} snapshots of the {name} ({n} parameters; {cfg.num_chains} chains x {draws} draws, "
          f"batch 128): estimate_llc per snapshot {loop:.2f} s, batched at close() {b:.2f} s "
          f"(runs {b1:.2f}, {b2:.2f} s)")
    print(f"ratio: {loop / b:.2f}  (estimate_llc per snapshot / one batched estimate at close(), {name}; "
          f"goal >= 3)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; 0 = unchanged)")
    ap.add_argument("--pairs", type=int, default=None, help="interleaved untracked/tracked pairs (default 5)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    pairs = args.pairs or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpus={os.cpu_count()} "
          f"(timings on a shared machine: other processes distort them; pairs are interleaved)")
    x, y = _digits()
    cnn = _Workload("digits CNN", _cnn, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
                    lambda g: torch.randint(0, len(x), (64,), generator=g),
                    lambda m, idx: nn.functional.cross_entropy(m(x[idx]), y[idx]), 300 if args.quick else 1000)
    ids = torch.randint(0, 256, (512, 32), generator=torch.Generator().manual_seed(0))
    gpt = _Workload("tiny GPT-2", _gpt2, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
                    lambda g: ids[torch.randint(0, len(ids), (16,), generator=g)],
                    lambda m, b: m(input_ids=b, labels=b).loss, 100 if args.quick else 300)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "runs.csv")
        _overhead(cnn, pairs, out)
        _overhead(gpt, pairs, out)
        K, draws = (4, 50) if args.quick else (8, 100)
        _llc("moons MLP", _mlp, _moons(), K=K, every=100, draws=draws, tmp=tmp)
        _llc("digits CNN", _cnn, (x, y), K=K, every=25, draws=draws, tmp=tmp)


if __name__ == "__main__":
    main()
