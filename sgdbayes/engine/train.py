"""``train_ensemble(config, data=None, hooks=()) -> EnsembleResult``: K seeds as one computation.

What is computed (per seed i, independent of K, of ``chunk_size`` and of ``workers``):

* **Init**: ``model()`` right after ``torch.manual_seed(seed_i)`` (the model protocol's
  ``initialize``; for the built-in MLP, :meth:`sgdbayes.models.MLPSpec.init`), or row i of
  ``init`` (weights ``[K, P]`` and optionally per-seed state) to continue training from
  given weights (e.g. a previous result's ``w_final`` and ``state``; R(t) is then measured
  from those weights).
* **Minibatch order**: :func:`sgdbayes.engine.batch_indices` (drop_last=True).
* **Loss**: mean cross-entropy of the minibatch over every output position (one label per
  example, or per token for sequence models), at the weights before the update.
* **Optimizers**: the exact update rules of ``torch.optim.SGD`` / ``Adam``
  (:mod:`sgdbayes.engine.optim`) on flat buffers holding all k models of a chunk.
* **State**: buffers (BatchNorm running statistics) per seed, updated as the plain
  module updates them; dropout masks from per-seed generators.
* **Displacement** (docs/methods.md): R(t) = ||w_t - w_0||_2 over all parameters, t = steps
  taken, on the grid of :func:`sgdbayes.engine.record_grid`, accumulated in float64.
* **Train loss / accuracy** at grid step t: the mean over the steps s in (t_prev, t] of the
  minibatch loss (accuracy) at the weights before update s.
* **At the end**: loss and accuracy on the full train and test sets in eval mode.
* **Divergence**: a seed whose minibatch loss is non-finite at step t, or whose recorded
  displacement is, is marked diverged at step t; its weights, optimizer state and model state
  stay frozen from then on, its later curve entries are NaN, ``diverged_step`` is t. The other
  seeds go on unaffected.

Hooks: :class:`~sgdbayes.engine.result.Hook` ``(every, fn, name)`` calls ``fn(state)`` after
every ``every``-th step (and at step 0 if ``at_start``); values are recorded in
``result.hooks[name]`` (columns step, seed, one per value).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._linalg import single_threaded_blas
from ..data import Dataset, as_dataset, check_finite_inputs, load_dataset, resolve_device
from ..models import MLPSpec, as_family
from ..models.protocol import SeedGenerators, state_cat, state_rows
from .batches import BatchStream, displacement_sq_blocks, record_grid
from .config import DTYPES, EnsembleConfig
from .optim import FlatOptimizer
from .result import EnsembleResult, EnsembleState, Hook, normalize_hook_output

__all__ = ["train_ensemble", "evaluate"]


class _Blocked:
    """k models' parameters in the kernel's blocked layout: one flat buffer whose blocks are
    contiguous over the models (elementwise optimizer updates act on the whole buffer)."""

    def __init__(self, layout, k: int, device, dtype):
        self.layout, self.k = layout, k
        self.flat = torch.zeros(k * layout.n_params, device=device, dtype=dtype)
        self.views = layout.views(self.flat, k)

    def rows(self, flat: Tensor) -> list[Tensor]:
        return [v.reshape(self.k, -1) for v in self.layout.views(flat, self.k)]

    def pack(self) -> Tensor:
        return self.layout.pack(self.views)

    def unpack(self, w: Tensor) -> None:
        self.layout.unpack(w, self.views)


@torch.no_grad()
def evaluate(family, w: Tensor, x: Tensor, y: Tensor, state=None, max_elems: int = 2 ** 24) -> tuple[Tensor, Tensor]:
    """Full-data mean cross-entropy and accuracy ``([K], [K])`` in eval mode, in data chunks."""
    K, n = w.shape[0], x.shape[0]
    if n == 0:
        nan = torch.full((K,), float("nan"), dtype=w.dtype, device=w.device)
        return nan, nan
    per = max(1, max_elems // (K * max(1, family.activation_bytes(1, torch.float32, tuple(x.shape[1:]), x.dtype)
                                        // 12)))
    tot_loss = torch.zeros(K, dtype=torch.float64, device=w.device)
    tot_acc = torch.zeros(K, dtype=torch.float64, device=w.device)
    for s in range(0, n, per):
        xb, yb = x[s:s + per], y[s:s + per]
        z = family.apply(w, xb, state, train=False, shared=True)
        yk = yb.unsqueeze(0).expand(K, *yb.shape)
        logp = torch.log_softmax(z, dim=-1)
        tot_loss -= logp.gather(-1, yk.unsqueeze(-1)).reshape(K, -1).double().sum(1)
        tot_acc += (z.argmax(-1) == yk).reshape(K, -1).sum(1).double()
    m = n * int(np.prod(y.shape[1:]))
    return (tot_loss / m).to(w.dtype), (tot_acc / m).to(w.dtype)


class _ChunkRun:
    """One chunk of seeds trained together (see the module docstring)."""

    def __init__(self, cfg, family, data, seeds, n_steps, grid, hooks, device, dtype, pbar, init=None):
        self.cfg, self.family, self.data, self.seeds = cfg, family, data, list(seeds)
        self.n_steps, self.grid, self.hooks, self.pbar = n_steps, grid, hooks, pbar
        self.k = k = len(self.seeds)
        self.t = 0
        self.w0, self.state = family.initialize(self.seeds, device=device, dtype=dtype)
        if init is not None:  # rows of the given start (same layout as initialize's)
            w, st = init
            self.w0 = w.to(device=device, dtype=dtype).clone()
            if st is not None:
                self.state = {name: v.to(device).clone() for name, v in st.items()}
        self.kernel = family.kernel(k, cfg.batch_size, device, dtype, data.feature_shape, data.x_train.dtype)
        self.params = _Blocked(self.kernel.layout, k, device, dtype)
        self.params.unpack(self.w0)
        self.grads = _Blocked(self.kernel.layout, k, device, dtype)
        self.opt = FlatOptimizer(cfg, self.params.flat)
        self.rng = SeedGenerators(self.seeds, cfg.batch_stream, device) if family.stochastic else None
        self.active = torch.ones(k, dtype=torch.bool, device=device)
        self.diverged_step = np.full(k, -1, dtype=np.int64)
        self.batches = BatchStream(self.seeds, data.n_train, cfg.batch_size, cfg.batch_stream, device,
                                   n_steps=n_steps)
        self.hook_rows: dict[str, list] = {h.name: [] for h in hooks}
        self.view = EnsembleState(self)

    def _call_hooks(self):
        for h in self.hooks:
            if (self.t == 0 and h.at_start) or (self.t > 0 and self.t % h.every == 0):
                out = normalize_hook_output(h.fn(self.view), self.k, h.name)
                if out is not None:
                    self.hook_rows[h.name].append((self.t, out))

    def _row_tensors(self) -> list[Tensor]:
        """Per-seed tensors (first dim k): parameter and optimizer blocks, model state."""
        out = list(self.params.views)
        for s in self.opt.state_tensors():
            out += self.params.rows(s)
        return out + state_rows(self.state)

    def _mark(self, bad: Tensor, t: int) -> bool:
        """Mark the active seeds in ``bad`` diverged at step t; True when there were any."""
        newly = bad & self.active
        if not bool(newly.any()):
            return False
        self.diverged_step[torch.nonzero(newly).flatten().cpu().numpy()] = t
        self.active &= ~bad
        return True

    def run(self):
        k, B = self.k, self.cfg.batch_size
        G = len(self.grid)
        curves = np.full((3, G, k), np.nan)           # displacement, train loss, train accuracy
        x_all = self.kernel.prepare(self.data.x_train)
        y_all = self.data.y_train
        xb = torch.empty(k, B, *x_all.shape[1:], device=x_all.device, dtype=x_all.dtype)
        yb = torch.empty(k, B, *y_all.shape[1:], device=y_all.device, dtype=y_all.dtype)
        w0b = _Blocked(self.kernel.layout, k, self.params.flat.device, self.params.flat.dtype)
        w0b.unpack(self.w0)
        diff = _Blocked(self.kernel.layout, k, w0b.flat.device, w0b.flat.dtype)
        sums = torch.zeros(2, k, dtype=torch.float64, device=w0b.flat.device)
        n_acc, gi, frozen = 0, 0, None
        self._call_hooks()
        for t in range(1, self.n_steps + 1):
            idx = self.batches.next()
            torch.index_select(x_all, 0, idx, out=xb.view(k * B, *x_all.shape[1:]))
            torch.index_select(y_all, 0, idx, out=yb.view(k * B, *y_all.shape[1:]))
            saved = None if frozen is None else [s.index_select(0, frozen) for s in self._row_tensors()]
            st_prev = None if self.state is None else [s.clone() for s in state_rows(self.state)]
            loss, correct = self.kernel.loss_and_grad(self.params.views, self.grads.views, xb, yb, self.state,
                                                      self.rng)
            finite = torch.isfinite(loss)
            if not bool(finite.all()) and self._mark(~finite, t):
                frozen = torch.nonzero(~self.active).flatten()
                if st_prev is not None:  # undo this step's state update of the newly diverged
                    for s, p in zip(state_rows(self.state), st_prev):
                        s.copy_(torch.where(self.active.view(-1, *[1] * (s.dim() - 1)), s, p))
                # parameters and optimizer state are still at their pre-step values
                saved = [s.index_select(0, frozen) for s in self._row_tensors()]
            self.opt.step(self.params.flat, self.grads.flat)
            if frozen is not None:
                for s, v in zip(self._row_tensors(), saved):
                    s.index_copy_(0, frozen, v)
            self.t = t
            sums[0] += loss.double()
            sums[1] += correct.double()
            n_acc += 1
            if gi < G and self.grid[gi] == t:
                frozen = self._record(curves, gi, sums, n_acc, w0b, diff, t, frozen)
                sums.zero_()
                n_acc, gi = 0, gi + 1
            self._call_hooks()
            if self.pbar is not None and (t % 20 == 0 or t == self.n_steps):
                self.pbar.update(20 if t % 20 == 0 else t % 20)
        return curves[0].T, curves[1].T, curves[2].T

    def _record(self, curves, gi, sums, n_acc, w0b, diff, t, frozen):
        """Grid point: R(t) accumulated in float64; a non-finite R(t) marks the seed diverged."""
        torch.sub(self.params.flat, w0b.flat, out=diff.flat)
        disp = displacement_sq_blocks(diff.views, self.k).sqrt()
        if not bool(torch.isfinite(disp).all()) and self._mark(~torch.isfinite(disp), t):
            frozen = torch.nonzero(~self.active).flatten()
        act = self.active.cpu().numpy()
        curves[0, gi] = np.where(act, disp.cpu().numpy(), np.nan)
        curves[1, gi] = np.where(act, (sums[0] / n_acc).cpu().numpy(), np.nan)
        curves[2, gi] = np.where(act, (sums[1] / (n_acc * self.cfg.batch_size * self._positions())).cpu().numpy(),
                                 np.nan)
        return frozen

    def _positions(self) -> int:
        return int(np.prod(self.data.y_train.shape[1:]))


# ------------------------------------------------------------------------ set-up
def _resolve_data(cfg: EnsembleConfig, data, device, dtype) -> Dataset:
    if data is None:
        return load_dataset(cfg.dataset, device=device, dtype=dtype, **cfg.dataset_options)
    ds = as_dataset(data).to(device, dtype)
    check_finite_inputs(ds.x_train, "training inputs")
    check_finite_inputs(ds.x_test, "test inputs")
    return ds


def _resolve_family(cfg: EnsembleConfig, data: Dataset):
    """The model family, checked against the data: inputs it accepts, one output per class."""
    if cfg.model is None:
        widths = list(cfg.widths)
        widths[0] = data.n_features if widths[0] is None else widths[0]
        widths[-1] = data.n_classes if widths[-1] is None else widths[-1]
        if widths[0] != data.n_features:
            raise ValueError(f"widths[0]={widths[0]} but data {data.name!r} has {data.n_features} features")
        family = MLPSpec(tuple(int(w) for w in widths), batchnorm=cfg.batchnorm)
    else:
        family = as_family(cfg.model)
    out = family.output_shape(data.feature_shape, data.x_train.dtype)
    if tuple(out[:-1]) != tuple(data.y_train.shape[1:]):
        raise ValueError(f"the model gives outputs {tuple(out)} per example but the labels are "
                         f"{tuple(data.y_train.shape[1:])} per example (expected labels + one axis of classes)")
    C = int(out[-1])
    if data.source is not None and C != data.n_classes:
        raise ValueError(f"the model's output width is {C} but data {data.name!r} has {data.n_classes} classes")
    for part, y in (("training", data.y_train), ("test", data.y_test)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
            raise ValueError(f"{part} labels span {int(y.min())}..{int(y.max())}, outside the model's "
                             f"{C} classes 0..{C - 1}")
    return family


def _resolve_workers(cfg: EnsembleConfig, device, hooks) -> int:
    """Python worker threads for chunks: ``cfg.workers``, or automatically one per CPU core on
    the CPU when there are no hooks (hooks see chunks one at a time), else 1."""
    if cfg.workers is not None:
        if hooks and cfg.workers > 1:
            raise ValueError("workers > 1 with hooks: hooks are called chunk by chunk and are not "
                             "assumed thread-safe; use workers=1 (or None)")
        return min(int(cfg.workers), cfg.K)
    if hooks or torch.device(device).type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, cfg.K))


def memory_budget(device) -> int:
    """Default bytes for one chunk of seeds: a quarter of the free device memory (CUDA) or of
    the available RAM (CPU; 4 GiB when unknown)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0] // 4)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def chunk_plan(cfg: EnsembleConfig, family, data: Dataset, device, dtype, workers: int) -> tuple[list, dict]:
    """Seeds per chunk: ``cfg.chunk_size``, else as many as fit ``memory_budget_bytes`` by the
    family's activation estimate (K x activations + parameters, gradients, optimizer state),
    split over ``workers``. Returns the chunks and what the plan was based on."""
    seeds = list(cfg.seeds)
    per_seed = family.activation_bytes(cfg.batch_size, dtype, data.feature_shape, data.x_train.dtype)
    per_seed += 6 * family.n_params * (torch.finfo(dtype).bits // 8)
    budget = cfg.memory_budget_bytes or memory_budget(device)
    chunk = cfg.chunk_size or max(1, min(len(seeds), budget // max(1, per_seed)))
    if workers > 1:
        chunk = min(chunk, -(-len(seeds) // workers))
    chunks = [seeds[s:s + chunk] for s in range(0, len(seeds), chunk)]
    return chunks, dict(chunk_size=chunk, bytes_per_seed=int(per_seed), memory_budget_bytes=int(budget))


def train_ensemble(config: EnsembleConfig, data=None, hooks: Iterable[Hook | tuple] = (),
                   init=None) -> EnsembleResult:
    """Train ``config.K`` independent seeds (the module docstring states the exact semantics).

    ``data``: an :class:`sgdbayes.data.Dataset`, an ``(x, y)`` pair of tensors (``x [n, ...]``
    of any shape, integer labels; no test split) or a torch ``Dataset`` of pairs; ``None``
    loads ``config.dataset``. The result's ``config`` and ``data_source`` name the data used.
    ``init``: start from given weights instead of the seeds' initializations -- a ``[K, P]``
    tensor (row i for ``config.seeds[i]``, the layout of ``EnsembleResult.w_final``) or a pair
    ``(w, state)`` with per-seed state ``{name: [K, ...]}`` (e.g. a previous result's
    ``(w_final, state)``); the seeds still choose the minibatch (and dropout) streams.
    """
    cfg = config
    if not isinstance(cfg, EnsembleConfig):
        raise ValueError(f"config must be an EnsembleConfig, got {type(cfg).__name__}")
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    data = _resolve_data(cfg, data, device, dtype)
    family = _resolve_family(cfg, data)
    if cfg.batch_size > data.n_train:
        raise ValueError(f"batch_size {cfg.batch_size} > {data.n_train} training examples")
    if family.has_batchnorm and cfg.batch_size < 2:
        raise ValueError("batch norm needs batch_size >= 2")
    n_steps = cfg.n_steps(data.n_train)
    grid = record_grid(n_steps, cfg.record_every, cfg.record_log_points)
    hooks = [h if isinstance(h, Hook) else Hook(*h) for h in hooks]
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ValueError(f"hook names must be distinct, got {names}")
    init = _check_init(init, cfg, family)
    workers = _resolve_workers(cfg, device, hooks)
    chunks, plan = chunk_plan(cfg, family, data, device, dtype, workers)
    t0 = time.perf_counter()
    parts = _run_chunks(cfg, family, data, chunks, n_steps, grid, hooks, device, dtype, workers, init)
    meta = _meta(cfg, family, data, n_steps, workers, plan, device, time.perf_counter() - t0)
    return _assemble(cfg, family, data, parts, grid, hooks, meta)


def _check_init(init, cfg: EnsembleConfig, family):
    """``init`` as ``(w [K, P], state or None)`` checked against the seeds and the family."""
    if init is None:
        return None
    w, st = init if isinstance(init, tuple) else (init, None)
    if not isinstance(w, Tensor) or w.shape != (cfg.K, family.n_params):
        raise ValueError(f"init weights must be a [K={cfg.K}, P={family.n_params}] tensor (row i for seed i), got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("init weights are not all finite")
    if family.stateful and st is None:
        raise ValueError("this model family has per-seed state (e.g. BatchNorm statistics): pass init=(w, state)")
    if st is not None and any(v.shape[0] != cfg.K for v in st.values()):
        raise ValueError(f"init state tensors need K={cfg.K} rows")
    return w, st


def _run_chunks(cfg, family, data, chunks, n_steps, grid, hooks, device, dtype, workers, init=None) -> list[dict]:
    pbar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=n_steps * len(chunks), desc=f"ensemble K={cfg.K}", unit="step")
    init_lock = threading.Lock()
    row_of = {int(s): i for i, s in enumerate(cfg.seeds)}

    def chunk_init(chunk_seeds):
        if init is None:
            return None
        rows = torch.as_tensor([row_of[int(s)] for s in chunk_seeds])
        return init[0][rows], None if init[1] is None else {k: v[rows] for k, v in init[1].items()}

    def run_chunk(chunk_seeds) -> dict:
        with init_lock:  # initialization seeds torch's global RNG (inside fork_rng): one chunk at a time
            run = _ChunkRun(cfg, family, data, chunk_seeds, n_steps, grid, hooks, device, dtype, pbar,
                            chunk_init(chunk_seeds))
        disp, tl, ta = run.run()
        w_final = run.params.pack()
        tr = evaluate(family, w_final, data.x_train, data.y_train, run.state)
        te = evaluate(family, w_final, data.x_test, data.y_test, run.state)
        return dict(seeds=run.seeds, disp=disp, tl=tl, ta=ta, w0=run.w0.cpu(), w=w_final.cpu(),
                    state=None if run.state is None else {k: v.cpu() for k, v in run.state.items()},
                    div=run.diverged_step, trl=tr[0].cpu(), tra=tr[1].cpu(), tel=te[0].cpu(), tea=te[1].cpu(),
                    hooks=run.hook_rows)

    threads_before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    elif cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        # the per-model products are far too small for BLAS threads (they only add syncs)
        with single_threaded_blas():
            if workers > 1:  # torch, numpy and the C kernel release the GIL; chunks are independent
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    return list(pool.map(run_chunk, chunks))
            return [run_chunk(c) for c in chunks]
    finally:
        torch.set_num_threads(threads_before)
        if pbar is not None:
            pbar.close()


def _meta(cfg, family, data, n_steps, workers, plan, device, elapsed) -> dict:
    meta = dict(n_steps=n_steps, num_threads=1 if workers > 1 else (cfg.num_threads or torch.get_num_threads()),
                workers=workers, steps_per_epoch=data.n_train // cfg.batch_size, elapsed_s=elapsed,
                device=str(device), torch=torch.__version__,
                data=dict(name=data.name, n_train=data.n_train, n_test=int(data.x_test.shape[0]),
                          n_classes=data.n_classes, meta=data.meta),
                model=family.describe(), n_params=family.n_params, drop_last=True,
                backend=family.backend, **plan,
                train_curve="mean minibatch loss/acc over steps since previous grid point, at pre-update weights")
    if isinstance(family, MLPSpec):
        meta["widths"] = list(family.widths)
    return meta


def _assemble(cfg, family, data, parts, grid, hooks, meta) -> EnsembleResult:
    def cat(key):
        return np.concatenate([p[key] for p in parts])

    def tcat(key):
        return torch.cat([p[key] for p in parts])

    disp_all, div = cat("disp"), cat("div")
    seeds = np.asarray(cfg.seeds, dtype=np.int64)
    final = pd.DataFrame({
        "seed": seeds, "diverged": div >= 0, "diverged_step": div,
        "train_loss": tcat("trl").double().numpy(), "train_acc": tcat("tra").double().numpy(),
        "test_loss": tcat("tel").double().numpy(), "test_acc": tcat("tea").double().numpy(),
        "displacement": disp_all[:, -1],
    })
    hook_tables = {}
    for h in hooks:
        rows = [pd.DataFrame({"step": step, "seed": np.asarray(p["seeds"], dtype=np.int64), **vals})
                for p in parts for step, vals in p["hooks"][h.name]]
        hook_tables[h.name] = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["step", "seed"])
    used = cfg
    if data.source is not None:  # the config names the data actually used (rebuildable by load_dataset)
        import dataclasses
        used = dataclasses.replace(cfg, dataset=data.source["name"], dataset_options=dict(data.source["options"]))
    return EnsembleResult(config=used, spec=family, seeds=seeds, steps=grid, displacement=disp_all,
                          train_loss=cat("tl"), train_acc=cat("ta"), final=final, w_init=tcat("w0"),
                          w_final=tcat("w"), state=state_cat([p["state"] for p in parts]), hooks=hook_tables,
                          meta=meta, data_source=None if data.source is None else dict(data.source))
