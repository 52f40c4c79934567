"""Batched seed-ensemble training: K independent MLPs advanced as one computation.

``train_ensemble(config, data=None, hooks=()) -> EnsembleResult``.

What is computed (per seed i, independent of K and of ``chunk_size``):

* **Init**: PyTorch default init after ``torch.manual_seed(seed_i)``
  (:meth:`sgdbayes.models.MLPSpec.init`).
* **Minibatch order**: :func:`batch_indices` -- a per-seed numpy generator
  ``default_rng([seed_i, batch_stream])``; each epoch is the argsort of ``n``
  uniform keys (a uniform random permutation), cut into ``n // B`` batches of
  exactly ``B`` examples (**drop_last=True**: the ``n mod B`` left-over
  examples of an epoch are not used in that epoch; every step sees a full batch,
  which keeps the batched computation one fixed shape). For the paper's moons
  workload (n = 512, B = 128) nothing is dropped: 4 steps per epoch.
* **Loss**: mean cross-entropy of the minibatch, L_B(w) = (1/B) sum_b CE(f_w(x_b), y_b).
* **Optimizers** (constant learning rate), the exact update rules of
  ``torch.optim.SGD`` (momentum, dampening 0, optional Nesterov, L2 weight decay
  added to the gradient) and ``torch.optim.Adam`` (L2 weight decay added to the
  gradient, bias-corrected moments, ``eps`` outside the square root), applied
  in place to flat buffers holding all K models.
* **Displacement** (docs/methods.md#measured-quantities): R(t) = ||w_t - w_0||_2 over all trainable
  parameters, t = number of optimizer steps taken, recorded on the step grid of
  :func:`record_grid` (geometric in t, union every ``record_every`` steps, plus the last).
* **Train loss / accuracy** along training: at grid step t, the mean over the
  steps s in (t_prev, t] of the minibatch loss (accuracy) evaluated at the
  weights *before* update s (the loss the optimizer differentiated).
* **At the end**: loss and accuracy on the full train and test sets (eval mode:
  batch norm uses its running statistics), initial and final weights.
* **Divergence**: a seed whose minibatch loss is non-finite at step t is marked
  diverged at step t; its weights (and optimizer state) stay frozen at the last
  finite values, its later curve entries are NaN and its ``diverged_step`` is t.
  The other seeds go on unaffected.

Hooks: :class:`Hook` ``(every, fn, name)`` calls ``fn(state)`` after every
``every``-th step (and at step 0 if ``at_start``); ``state`` is an
:class:`EnsembleState`. ``fn`` returns ``None``, a per-seed ``[k]`` tensor/array,
or a dict of them; values are recorded in ``result.hooks[name]`` (columns step,
seed, and one per value).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ._fused_mlp import AugmentedLayout, FusedMLP, augment_inputs
from ._linalg import single_threaded_blas
from .data import Dataset, load_dataset, resolve_device
from .models import MLPSpec

__all__ = ["EnsembleConfig", "EnsembleResult", "EnsembleState", "Hook", "train_ensemble",
           "batch_indices", "record_grid", "displacement"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ============================================================================ config
@dataclass
class EnsembleConfig:
    """Everything that defines an ensemble run (validated on construction).

    Exactly one of ``steps`` / ``epochs`` is given (epochs x (n // batch_size) steps).
    ``seeds`` is a sequence of non-negative ints or an int K meaning ``range(K)``.
    ``widths`` includes input and output; ``None`` at either end is filled from
    the data (features, classes). ``device="auto"`` picks CUDA when available.
    ``num_threads`` (None: unchanged) sets torch's intra-op threads for the
    duration of the run only. ``chunk_size`` bounds how many seeds run at
    once (``None``: all). ``workers`` chunks run side by side in Python threads,
    each with one torch intra-op thread (``None``: automatic, one per CPU core
    on the CPU when no hooks are given, else 1; torch's own bmm threading
    scales poorly on small per-model matrices: 500 moons models, 200 steps took
    9.9 s with 2 intra-op threads, 7.0 s as 2 workers x 1 thread). Per-seed
    results do not depend on chunks or workers. ``record_every`` / ``record_log_points`` define the
    displacement grid (:func:`record_grid`).
    """

    dataset: str = "moons"
    dataset_options: dict = field(default_factory=dict)
    widths: tuple = (None, 64, 64, None)
    batchnorm: bool = False
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 128
    steps: int | None = None
    epochs: int | None = None
    seeds: Any = 8
    record_every: int = 10
    record_log_points: int = 100
    device: str = "auto"
    dtype: str = "float32"
    chunk_size: int | None = None
    batch_stream: int = 0
    progress: bool = True
    num_threads: int | None = None
    workers: int | None = None

    def __post_init__(self):
        if isinstance(self.seeds, (int, np.integer)) and not isinstance(self.seeds, bool):
            if self.seeds <= 0:
                raise ValueError(f"seeds: need K > 0 seeds, got {self.seeds}")
            self.seeds = tuple(range(int(self.seeds)))
        else:
            self.seeds = tuple(int(s) for s in self.seeds)
        if len(self.seeds) == 0:
            raise ValueError("seeds: need K > 0 seeds, got an empty sequence")
        if min(self.seeds) < 0:
            raise ValueError(f"seeds must be >= 0, got {min(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        self.widths = tuple(None if w is None else w for w in self.widths)
        if len(self.widths) < 2:
            raise ValueError(f"widths needs (in, ..., out), got {self.widths}")
        for i, w in enumerate(self.widths):
            if w is None and i not in (0, len(self.widths) - 1):
                raise ValueError(f"width {i} is None; only the input/output widths may be None")
            if w is not None and (isinstance(w, bool) or int(w) != w or w <= 0):
                raise ValueError(f"width {i} of {self.widths} is {w!r}; widths must be integers > 0")
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer='sgd' and momentum > 0")
        if self.optimizer == "adam" and self.momentum:
            raise ValueError("momentum is an SGD option; Adam uses betas")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if int(self.batch_size) != self.batch_size or self.batch_size <= 0:
            raise ValueError(f"batch_size must be an integer > 0, got {self.batch_size}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps= or epochs=")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v <= 0):
                raise ValueError(f"{name} must be an integer > 0, got {v}")
        if self.record_every <= 0 or self.record_log_points < 0:
            raise ValueError("record_every must be > 0 and record_log_points >= 0")
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0 or None, got {self.chunk_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise ValueError(f"num_threads must be > 0 or None, got {self.num_threads}")
        if self.workers is not None and (int(self.workers) != self.workers or self.workers <= 0):
            raise ValueError(f"workers must be an integer > 0 or None, got {self.workers}")
        if self.batch_stream < 0:
            raise ValueError("batch_stream must be >= 0")
        self.dataset_options = dict(self.dataset_options)

    @property
    def K(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["widths"] = list(self.widths)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EnsembleConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EnsembleConfig field(s) {sorted(unknown)}")
        d = dict(d)
        for k in ("seeds", "widths", "betas"):
            if k in d and isinstance(d[k], list):
                d[k] = tuple(d[k])
        return cls(**d)


# ============================================================================ grids, batches
def record_grid(n_steps: int, every: int, n_log: int) -> np.ndarray:
    """Sorted unique steps in [1, n_steps]: ``n_log`` geometric points
    round(geomspace(1, n_steps)), every ``every``-th step, and ``n_steps``."""
    parts = [np.arange(every, n_steps + 1, every), [n_steps]]
    if n_log > 0:
        parts.append(np.rint(np.geomspace(1, n_steps, n_log)))
    g = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
    return g[(g >= 1) & (g <= n_steps)]


def _epoch_keys(rngs: Sequence[np.random.Generator], n_epochs: int, n: int) -> np.ndarray:
    return np.stack([r.random((n_epochs, n)) for r in rngs])


def batch_indices(seed: int, n: int, batch_size: int, n_steps: int, stream: int = 0) -> np.ndarray:
    """Minibatch indices ``[n_steps, batch_size]`` of one seed (drop_last=True).

    Epoch e's order is ``argsort`` of ``default_rng([seed, stream]).random((E, n))[e]``.
    The engine generates the same stream in blocks of epochs for many seeds at once.
    """
    spe = n // batch_size
    if spe == 0:
        raise ValueError(f"batch_size {batch_size} > number of training examples {n}")
    n_epochs = -(-n_steps // spe)
    keys = np.random.default_rng([seed, stream]).random((n_epochs, n))
    perm = np.argsort(keys, axis=1, kind="stable")[:, : spe * batch_size]
    return perm.reshape(n_epochs * spe, batch_size)[:n_steps]


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, axis=-1, kind="stable")``, faster: numpy's default (SIMD) argsort,
    whose order can differ from the stable one only between equal keys, so it is kept
    when every sorted row is strictly increasing (measured 0.11 vs 0.17 s for [250, 32, 512])."""
    perm = np.argsort(keys, axis=-1)
    s = np.take_along_axis(keys, perm, axis=-1)
    if (s[..., 1:] > s[..., :-1]).all():
        return perm
    return np.argsort(keys, axis=-1, kind="stable")


class _BatchStream:
    """Per-seed minibatch indices for a chunk of seeds, generated a block of epochs at a time."""

    def __init__(self, seeds, n, batch_size, stream, device, max_bytes=2 ** 25):
        self.rngs = [np.random.default_rng([s, stream]) for s in seeds]
        self.n, self.B = n, batch_size
        self.spe = n // batch_size
        self.block_epochs = max(1, max_bytes // (8 * n * len(seeds)))
        self.device = device
        self.buf: Tensor | None = None
        self.pos = 0

    def next(self) -> Tensor:
        """Indices ``[k * B]`` (flattened ``[k, B]``) of the next step."""
        if self.buf is None or self.pos >= self.buf.shape[0]:
            keys = _epoch_keys(self.rngs, self.block_epochs, self.n)      # [k, E, n]
            perm = _stable_argsort(keys)[:, :, : self.spe * self.B]
            k = perm.shape[0]
            perm = perm.reshape(k, self.block_epochs * self.spe, self.B).transpose(1, 0, 2)
            self.buf = torch.from_numpy(np.ascontiguousarray(perm).reshape(perm.shape[0], -1)).to(self.device)
            self.pos = 0
        out = self.buf[self.pos]
        self.pos += 1
        return out


def displacement(w: Tensor, w0: Tensor) -> Tensor:
    """R(t) = ||w_t - w_0||_2 per model (docs/methods.md#measured-quantities), rows of ``[K, P]`` -> ``[K]``."""
    return torch.linalg.vector_norm(w - w0, dim=1)


# ============================================================================ blocked storage
class _EntryLayout:
    """One block ``[*shape]`` per trainable tensor of the spec (used with batch norm)."""

    def __init__(self, spec: MLPSpec):
        self.spec = spec
        self.shapes = [shape for _, shape, _ in spec.layout]
        self.numels = [int(np.prod(s)) for s in self.shapes]
        self.n_params = spec.n_params

    def views(self, flat: Tensor, k: int) -> list[Tensor]:
        out, off = [], 0
        for shape, n in zip(self.shapes, self.numels):
            out.append(flat[off:off + k * n].view(k, *shape))
            off += k * n
        return out

    def pack(self, blocks: list[Tensor]) -> Tensor:
        return torch.cat([v.reshape(v.shape[0], -1) for v in blocks], dim=1)

    def unpack(self, w: Tensor, blocks: list[Tensor]) -> None:
        for v, (_, shape, off) in zip(blocks, self.spec.layout):
            v.copy_(w[:, off:off + int(np.prod(shape))].reshape(v.shape))


class _Blocked:
    """K models' parameters in a *blocked* layout: one flat buffer in which each block
    of the layout (:class:`sgdbayes._fused_mlp.AugmentedLayout` for plain MLPs: one
    ``[k, out, in + 1]`` block per layer; :class:`_EntryLayout` with batch norm) is
    contiguous over the k models.

    Elementwise optimizer updates act on the whole flat buffer; products read and
    write contiguous blocks. ``pack`` / ``unpack`` convert to the row layout ``[k, P]``.
    """

    def __init__(self, layout, k: int, device, dtype):
        self.layout, self.k = layout, k
        self.flat = torch.zeros(k * layout.n_params, device=device, dtype=dtype)
        self.views = layout.views(self.flat, k)

    def rows(self, flat: Tensor) -> list[Tensor]:
        """``[k, n_block]`` views, one per block, of a buffer with this layout."""
        return [v.reshape(self.k, -1) for v in self.layout.views(flat, self.k)]

    def pack(self) -> Tensor:
        return self.layout.pack(self.views)

    def unpack(self, w: Tensor) -> None:
        self.layout.unpack(w, self.views)


# ============================================================================ optimizers
class _Optimizer:
    """torch.optim.SGD / Adam update rules on one flat parameter buffer (in place)."""

    def __init__(self, cfg: EnsembleConfig, flat: Tensor):
        self.cfg = cfg
        self.t = 0
        self.buf = None
        self.m = self.v = None
        if cfg.optimizer == "sgd" and cfg.momentum > 0:
            self.buf = torch.zeros_like(flat)
        if cfg.optimizer == "adam":
            self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)

    def state_tensors(self) -> list[Tensor]:
        return [t for t in (self.buf, self.m, self.v) if t is not None]

    def step(self, w: Tensor, g: Tensor) -> None:
        c = self.cfg
        self.t += 1
        if c.weight_decay:
            g.add_(w, alpha=c.weight_decay)
        if c.optimizer == "sgd":
            if self.buf is not None:
                if self.t == 1:
                    self.buf.copy_(g)
                else:
                    self.buf.mul_(c.momentum).add_(g)
                if c.nesterov:
                    g.add_(self.buf, alpha=c.momentum)
                else:
                    g = self.buf
            w.add_(g, alpha=-c.lr)
        else:
            b1, b2 = c.betas
            self.m.lerp_(g, 1 - b1)
            self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1 = 1 - b1 ** self.t
            bc2_sqrt = math.sqrt(1 - b2 ** self.t)
            denom = (self.v.sqrt() / bc2_sqrt).add_(c.eps)
            w.addcdiv_(self.m, denom, value=-c.lr / bc1)


# ============================================================================ state, hooks
@dataclass
class Hook:
    """Call ``fn(state)`` after every ``every``-th step (and at step 0 if ``at_start``)."""

    every: int
    fn: Callable[["EnsembleState"], Any]
    name: str = "hook"
    at_start: bool = False

    def __post_init__(self):
        if int(self.every) != self.every or self.every <= 0:
            raise ValueError(f"Hook.every must be an integer > 0, got {self.every}")


class EnsembleState:
    """What a hook sees: the current chunk of seeds at ``step``.

    ``w`` is a copy ``[k, P]`` of the current weights in the row layout of
    :class:`MLPSpec`; ``set_weights`` writes new ones. ``bn_state`` is ``[k, S]``
    or None; ``diverged`` a bool ``[k]`` tensor.
    """

    def __init__(self, run: "_ChunkRun"):
        self._run = run

    step = property(lambda self: self._run.t)
    seeds = property(lambda self: self._run.seeds)
    spec = property(lambda self: self._run.spec)
    data = property(lambda self: self._run.data)
    config = property(lambda self: self._run.cfg)
    bn_state = property(lambda self: self._run.bn_state)
    diverged = property(lambda self: ~self._run.active)

    @property
    def w(self) -> Tensor:
        return self._run.params.pack()

    @property
    def w0(self) -> Tensor:
        return self._run.w0

    def set_weights(self, w: Tensor) -> None:
        self._run.params.unpack(w)


def _normalize_hook_output(out, k: int, name: str) -> dict[str, np.ndarray] | None:
    if out is None:
        return None
    if not isinstance(out, dict):
        out = {"value": out}
    res = {}
    for key, v in out.items():
        a = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
        if a.shape != (k,):
            raise TypeError(f"hook {name!r} returned {key!r} with shape {a.shape}; "
                            f"hooks return None, a per-seed [k={k}] array, or a dict of them")
        res[str(key)] = a
    return res


# ============================================================================ result
@dataclass
class EnsembleResult:
    """Outcome of :func:`train_ensemble` (see :mod:`sgdbayes.storage` to save/load).

    ``steps [G]`` is the record grid; ``displacement``, ``train_loss``,
    ``train_acc`` are ``[K, G]`` (row i = ``seeds[i]``; NaN after divergence);
    ``final`` has one row per seed (seed, diverged, diverged_step (-1 = never),
    train_loss, train_acc, test_loss, test_acc, displacement); ``w_init``,
    ``w_final`` are ``[K, P]`` CPU tensors; ``hooks`` maps hook names to long
    tables (step, seed, values...).
    """

    config: EnsembleConfig
    spec: MLPSpec
    seeds: np.ndarray
    steps: np.ndarray
    displacement: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    final: pd.DataFrame
    w_init: Tensor
    w_final: Tensor
    bn_state: Tensor | None = None
    hooks: dict[str, pd.DataFrame] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return len(self.seeds)

    def curves(self) -> pd.DataFrame:
        """Long table: seed, step, displacement, train_loss, train_acc."""
        K, G = self.displacement.shape
        return pd.DataFrame({
            "seed": np.repeat(self.seeds, G),
            "step": np.tile(self.steps, K),
            "displacement": self.displacement.reshape(-1),
            "train_loss": self.train_loss.reshape(-1),
            "train_acc": self.train_acc.reshape(-1),
        })

    def index_of(self, seed: int) -> int:
        hits = np.nonzero(self.seeds == seed)[0]
        if len(hits) == 0:
            raise KeyError(f"seed {seed} not in this ensemble")
        return int(hits[0])


# ============================================================================ training
@torch.no_grad()
def evaluate(spec: MLPSpec, w: Tensor, x: Tensor, y: Tensor, bn_state: Tensor | None = None,
             max_elems: int = 2 ** 24) -> tuple[Tensor, Tensor]:
    """Full-data mean cross-entropy and accuracy ``([K], [K])`` in eval mode, in data chunks."""
    K, n = w.shape[0], x.shape[0]
    if n == 0:
        nan = torch.full((K,), float("nan"), dtype=w.dtype, device=w.device)
        return nan, nan
    per = max(1, max_elems // (K * max(spec.widths)))
    tot_loss = torch.zeros(K, dtype=torch.float64, device=w.device)
    tot_acc = torch.zeros(K, dtype=torch.float64, device=w.device)
    for s in range(0, n, per):
        xb, yb = x[s:s + per], y[s:s + per]
        z = spec.forward(w, xb, bn_state=bn_state, train=False)
        logp = torch.log_softmax(z, dim=2)
        tot_loss -= logp.gather(2, yb.expand(K, -1).unsqueeze(2)).squeeze(2).sum(1).double()
        tot_acc += (z.argmax(2) == yb).sum(1).double()
    return (tot_loss / n).to(w.dtype), (tot_acc / n).to(w.dtype)


class _ChunkRun:
    def __init__(self, cfg, spec, data, seeds, n_steps, grid, hooks, device, dtype, pbar):
        self.cfg, self.spec, self.data, self.seeds = cfg, spec, data, list(seeds)
        self.n_steps, self.grid, self.hooks, self.pbar = n_steps, grid, hooks, pbar
        k = len(self.seeds)
        self.k = k
        self.t = 0
        self.w0 = spec.init(self.seeds, device=device, dtype=dtype)
        self.layout = _EntryLayout(spec) if spec.batchnorm else AugmentedLayout(spec)
        self.params = _Blocked(self.layout, k, device, dtype)
        self.params.unpack(self.w0)
        self.grads = _Blocked(self.layout, k, device, dtype)
        self.bn_state = spec.init_bn_state(k, device=device, dtype=dtype)
        self.opt = _Optimizer(cfg, self.params.flat)
        self.active = torch.ones(k, dtype=torch.bool, device=device)
        self.diverged_step = np.full(k, -1, dtype=np.int64)
        self.fused = None if spec.batchnorm else FusedMLP(spec, k, cfg.batch_size, device, dtype)
        self.batches = _BatchStream(self.seeds, data.n_train, cfg.batch_size, cfg.batch_stream, device)
        self.hook_rows: dict[str, list] = {h.name: [] for h in hooks}
        self.state = EnsembleState(self)

    def _loss_grad(self, xb, yb):
        if self.fused is not None:
            return self.fused.loss_and_grad(self.params.views, self.grads.views, xb, yb)
        w = self.params.pack().requires_grad_(True)
        with torch.enable_grad():
            z = self.spec.forward(w, xb, bn_state=self.bn_state, train=True)
            logp = torch.log_softmax(z, dim=2)
            loss = -logp.gather(2, yb.unsqueeze(2)).squeeze(2).mean(1)
            (g,) = torch.autograd.grad(loss.sum(), w)
        self.grads.unpack(g)
        return loss.detach(), (z.detach().argmax(2) == yb).sum(1)

    def _call_hooks(self):
        for h in self.hooks:
            if (self.t == 0 and h.at_start) or (self.t > 0 and self.t % h.every == 0):
                out = _normalize_hook_output(h.fn(self.state), self.k, h.name)
                if out is not None:
                    self.hook_rows[h.name].append((self.t, out))

    def run(self):
        k, B = self.k, self.cfg.batch_size
        G = len(self.grid)
        disp = np.full((G, k), np.nan)
        tl = np.full((G, k), np.nan)
        ta = np.full((G, k), np.nan)
        x_all, y_all = self.data.x_train, self.data.y_train
        if self.fused is not None:  # inputs with a ones column (the bias enters the products)
            x_all = augment_inputs(x_all)
        d_in = x_all.shape[1]
        # minibatches are gathered into fixed buffers
        xb = torch.empty(k, B, d_in, device=x_all.device, dtype=x_all.dtype)
        yb = torch.empty(k, B, device=y_all.device, dtype=y_all.dtype)
        w0_blocked = _Blocked(self.layout, k, x_all.device, x_all.dtype)
        w0_blocked.unpack(self.w0)
        diff = _Blocked(self.layout, k, x_all.device, x_all.dtype)
        loss_sum = torch.zeros(k, dtype=torch.float64, device=x_all.device)
        corr_sum = torch.zeros(k, dtype=torch.float64, device=x_all.device)
        n_acc = 0
        gi = 0
        self._call_hooks()
        frozen = None
        for t in range(1, self.n_steps + 1):
            idx = self.batches.next()
            torch.index_select(x_all, 0, idx, out=xb.view(k * B, d_in))
            torch.index_select(y_all, 0, idx, out=yb.view(k * B))
            if frozen is not None:
                saved = [s.index_select(0, frozen) for s in self._row_tensors()]
            bn_prev = None if self.bn_state is None else self.bn_state.clone()
            loss, correct = self._loss_grad(xb, yb)
            finite = torch.isfinite(loss)
            if not bool(finite.all()):
                newly = (~finite) & self.active
                if bool(newly.any()):
                    self.diverged_step[torch.nonzero(newly).flatten().cpu().numpy()] = t
                    self.active &= finite
                    frozen = torch.nonzero(~self.active).flatten()
                    if bn_prev is not None:  # undo this step's running-stat update
                        self.bn_state.copy_(torch.where(self.active[:, None], self.bn_state, bn_prev))
                    # parameters and optimizer state are still at their pre-step values
                    saved = [s.index_select(0, frozen) for s in self._row_tensors()]
            self.opt.step(self.params.flat, self.grads.flat)
            if frozen is not None:
                for s, v in zip(self._row_tensors(), saved):
                    s.index_copy_(0, frozen, v)
            self.t = t
            loss_sum += loss.double()
            corr_sum += correct.double()
            n_acc += 1
            if gi < G and self.grid[gi] == t:
                act = self.active.cpu().numpy()
                # R(t) = ||w_t - w_0||_2 (docs/methods.md): per-block norms in the parameter
                # dtype (no float64 copy of the weights), combined over blocks in float64
                torch.sub(self.params.flat, w0_blocked.flat, out=diff.flat)
                d2 = torch.zeros(k, dtype=torch.float64, device=x_all.device)
                for v in diff.views:
                    d2 += torch.linalg.vector_norm(v.reshape(k, -1), dim=1).double().square()
                disp[gi] = np.where(act, d2.sqrt().cpu().numpy(), np.nan)
                tl[gi] = np.where(act, (loss_sum / n_acc).cpu().numpy(), np.nan)
                ta[gi] = np.where(act, (corr_sum / (n_acc * B)).cpu().numpy(), np.nan)
                loss_sum.zero_(); corr_sum.zero_(); n_acc = 0
                gi += 1
            self._call_hooks()
            if self.pbar is not None and (t % 20 == 0 or t == self.n_steps):
                self.pbar.update(20 if t % 20 == 0 else t % 20)
        return disp.T, tl.T, ta.T

    def _row_tensors(self) -> list[Tensor]:
        """Per-seed state tensors (first dim k): parameter and optimizer blocks, BN stats."""
        out = list(self.params.views)
        for s in self.opt.state_tensors():
            out += self.params.rows(s)
        if self.bn_state is not None:
            out.append(self.bn_state)
        return out


def _resolve_data(cfg: EnsembleConfig, data: Dataset | None, device, dtype) -> Dataset:
    if data is None:
        data = load_dataset(cfg.dataset, device=device, dtype=dtype, **cfg.dataset_options)
    else:
        data = data.to(device, dtype)
    return data


def _resolve_workers(cfg: EnsembleConfig, device, hooks) -> int:
    """Python worker threads for chunks: ``cfg.workers``, or automatically one per CPU
    core on the CPU when there are no hooks (hooks see chunks one at a time), else 1."""
    if cfg.workers is not None:
        if hooks and cfg.workers > 1:
            raise ValueError("workers > 1 with hooks: hooks are called chunk by chunk and are not "
                             "assumed thread-safe; use workers=1 (or None)")
        return min(int(cfg.workers), cfg.K)
    if hooks or torch.device(device).type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, cfg.K))


def train_ensemble(config: EnsembleConfig, data: Dataset | None = None,
                   hooks: Iterable[Hook | tuple] = ()) -> EnsembleResult:
    """Train ``config.K`` independent seeds (see the module docstring for the exact semantics)."""
    cfg = config
    device = resolve_device(cfg.device)
    dtype = _DTYPES[cfg.dtype]
    data = _resolve_data(cfg, data, device, dtype)
    widths = list(cfg.widths)
    widths[0] = data.n_features if widths[0] is None else widths[0]
    widths[-1] = data.n_classes if widths[-1] is None else widths[-1]
    if widths[0] != data.n_features:
        raise ValueError(f"widths[0]={widths[0]} but data {data.name!r} has {data.n_features} features")
    if widths[-1] < data.n_classes:
        raise ValueError(f"widths[-1]={widths[-1]} < {data.n_classes} classes of {data.name!r}")
    spec = MLPSpec(tuple(widths), batchnorm=cfg.batchnorm)
    if cfg.batch_size > data.n_train:
        raise ValueError(f"batch_size {cfg.batch_size} > {data.n_train} training examples")
    if cfg.batchnorm and cfg.batch_size < 2:
        raise ValueError("batchnorm needs batch_size >= 2")
    spe = data.n_train // cfg.batch_size
    n_steps = int(cfg.steps if cfg.steps is not None else cfg.epochs * spe)
    grid = record_grid(n_steps, cfg.record_every, cfg.record_log_points)
    hooks = [h if isinstance(h, Hook) else Hook(*h) for h in hooks]
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ValueError(f"hook names must be distinct, got {names}")

    seeds = list(cfg.seeds)
    workers = _resolve_workers(cfg, device, hooks)
    chunk = cfg.chunk_size or len(seeds)
    if workers > 1:
        chunk = min(chunk, -(-len(seeds) // workers))
    chunks = [seeds[s:s + chunk] for s in range(0, len(seeds), chunk)]
    pbar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=n_steps * len(chunks), desc=f"ensemble K={len(seeds)}", unit="step")

    init_lock = threading.Lock()

    def run_chunk(chunk_seeds) -> dict:
        # MLPSpec.init seeds torch's global RNG (inside fork_rng): one chunk at a time
        with init_lock:
            run = _ChunkRun(cfg, spec, data, chunk_seeds, n_steps, grid, hooks, device, dtype, pbar)
        disp, tl, ta = run.run()
        w_final = run.params.pack()
        tr_l, tr_a = evaluate(spec, w_final, data.x_train, data.y_train, run.bn_state)
        te_l, te_a = evaluate(spec, w_final, data.x_test, data.y_test, run.bn_state)
        return dict(seeds=run.seeds, disp=disp, tl=tl, ta=ta, w0=run.w0.cpu(),
                    w=w_final.cpu(), bn=None if run.bn_state is None else run.bn_state.cpu(),
                    div=run.diverged_step, trl=tr_l.cpu(), tra=tr_a.cpu(),
                    tel=te_l.cpu(), tea=te_a.cpu(), hooks=run.hook_rows)

    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    elif cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        # the per-model products are far too small for BLAS threads (they only add syncs)
        with single_threaded_blas():
            if workers > 1:
                # torch, numpy and the C kernel release the GIL; chunks are independent
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    parts = list(pool.map(run_chunk, chunks))
            else:
                parts = [run_chunk(c) for c in chunks]
    finally:
        torch.set_num_threads(threads_before)
        if pbar is not None:
            pbar.close()
    elapsed = time.perf_counter() - t0

    cat = lambda key: np.concatenate([p[key] for p in parts])
    tcat = lambda key: torch.cat([p[key] for p in parts])
    disp_all = cat("disp")
    div = cat("div")
    final = pd.DataFrame({
        "seed": np.asarray(seeds, dtype=np.int64),
        "diverged": div >= 0,
        "diverged_step": div,
        "train_loss": tcat("trl").double().numpy(),
        "train_acc": tcat("tra").double().numpy(),
        "test_loss": tcat("tel").double().numpy(),
        "test_acc": tcat("tea").double().numpy(),
        "displacement": disp_all[:, -1],
    })
    hook_tables = {}
    for h in hooks:
        rows = []
        for p in parts:
            for step, vals in p["hooks"][h.name]:
                df = pd.DataFrame({"step": step, "seed": np.asarray(p["seeds"], dtype=np.int64), **vals})
                rows.append(df)
        hook_tables[h.name] = (pd.concat(rows, ignore_index=True) if rows
                               else pd.DataFrame(columns=["step", "seed"]))
    meta = dict(n_steps=n_steps, num_threads=1 if workers > 1 else (cfg.num_threads or threads_before),
                workers=workers,
                steps_per_epoch=spe, elapsed_s=elapsed, device=str(device),
                torch=torch.__version__, data=dict(name=data.name, n_train=data.n_train,
                                                   n_test=int(data.x_test.shape[0]),
                                                   n_classes=data.n_classes, meta=data.meta),
                widths=list(spec.widths), n_params=spec.n_params, drop_last=True,
                train_curve="mean minibatch loss/acc over steps since previous grid point, "
                            "at pre-update weights")
    return EnsembleResult(
        config=cfg, spec=spec, seeds=np.asarray(seeds, dtype=np.int64), steps=grid,
        displacement=disp_all, train_loss=cat("tl"), train_acc=cat("ta"), final=final,
        w_init=tcat("w0"), w_final=tcat("w"),
        bn_state=None if parts[0]["bn"] is None else tcat("bn"),
        hooks=hook_tables, meta=meta)
