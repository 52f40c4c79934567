""":class:`EnsembleConfig`: everything that defines an ensemble run, validated on construction."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import check_choice, check_float, check_int, check_seeds

__all__ = ["EnsembleConfig", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class EnsembleConfig:
    """Everything that defines an ensemble run (validated on construction).

    ``model``: what to train -- ``None`` (the built-in MLP of ``widths`` / ``batchnorm``),
    a zero-argument callable returning an ``nn.Module`` (seed i's init is ``model()`` right
    after ``torch.manual_seed(seed_i)``), a family object (``MLPSpec``, ``ModuleSpec``,
    :func:`sgdbayes.models.build_model`) or a dict ``{"kind": "cnn", **sizes}``.
    Exactly one of ``steps`` / ``epochs`` is given (epochs x (n // batch_size) steps).
    ``seeds`` is a sequence of distinct non-negative ints or an int K meaning ``range(K)``.
    ``widths`` includes input and output; ``None`` at either end is filled from the data
    (features, classes). ``device="auto"`` picks CUDA when available. ``num_threads`` (None:
    unchanged) sets torch's intra-op threads for the run only. ``chunk_size`` bounds how many
    seeds run at once (``None``: automatic, from ``memory_budget_bytes`` -- default a quarter
    of the free device memory -- and the family's activation estimate). ``workers`` chunks run
    side by side in Python threads, one torch intra-op thread each (``None``: one per CPU core
    on the CPU when no hooks are given, else 1). Per-seed results do not depend on chunks or
    workers. ``record_every`` / ``record_log_points`` define the displacement grid.
    ``batch_stream`` selects the minibatch (and dropout) streams of every seed.
    """

    dataset: str = "moons"
    dataset_options: dict = field(default_factory=dict)
    widths: tuple = (None, 64, 64, None)
    batchnorm: bool = False
    model: Any = None
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
    memory_budget_bytes: int | None = None

    def __post_init__(self):
        if (isinstance(self.seeds, numbers.Integral) and self.seeds <= 0) or (
                isinstance(self.seeds, (tuple, list)) and len(self.seeds) == 0):
            raise ValueError(f"seeds: need K > 0 seeds, got {self.seeds!r}")
        self.seeds = check_seeds(self.seeds)
        self._check_widths()
        if self.model is not None and self.batchnorm:
            raise ValueError("batchnorm is an option of the built-in MLP; with model= put BatchNorm into the model")
        self.optimizer = check_choice("optimizer", str(self.optimizer).lower(), ("sgd", "adam"))
        self.lr = check_float("lr", self.lr, 0.0, strict_min=True)
        self.momentum = check_float("momentum", self.momentum, 0.0, 1.0, strict_max=True)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer='sgd' and momentum > 0")
        if self.optimizer == "adam" and self.momentum:
            raise ValueError("momentum is an SGD option; Adam uses betas")
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self.eps = check_float("eps", self.eps, 0.0, strict_min=True)
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps= or epochs=")
        for name in ("steps", "epochs"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(name, getattr(self, name), 1))
        self.record_every = check_int("record_every", self.record_every, 1)
        self.record_log_points = check_int("record_log_points", self.record_log_points, 0)
        for name in ("chunk_size", "num_threads", "workers", "memory_budget_bytes"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(name, getattr(self, name), 1))
        self.dtype = check_choice("dtype", self.dtype, sorted(DTYPES))
        self.batch_stream = check_int("batch_stream", self.batch_stream, 0)
        self.dataset_options = dict(self.dataset_options)

    def _check_widths(self) -> None:
        self.widths = tuple(self.widths)
        if len(self.widths) < 2:
            raise ValueError(f"widths needs (in, ..., out), got {self.widths}")
        for i, w in enumerate(self.widths):
            if w is None and i not in (0, len(self.widths) - 1):
                raise ValueError(f"width {i} is None; only the input/output widths may be None")
            if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or int(w) != w or w <= 0):
                raise ValueError(f"width {i} of {self.widths} is {w!r}; widths must be integers > 0")

    @property
    def K(self) -> int:
        return len(self.seeds)

    def n_steps(self, n_train: int) -> int:
        spe = n_train // self.batch_size
        return int(self.steps if self.steps is not None else self.epochs * spe)

    def to_dict(self) -> dict:
        """JSON-able fields; ``model`` as its family's description (``describe()``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["seeds"], d["widths"], d["betas"] = list(self.seeds), list(self.widths), list(self.betas)
        d["dataset_options"] = dict(self.dataset_options)
        if self.model is not None:
            from ..models import as_family

            d["model"] = self.model if isinstance(self.model, dict) else as_family(self.model).describe()
        return d

    @classmethod
    def from_dict(cls, d: dict, model: Any = None) -> "EnsembleConfig":
        """Inverse of :meth:`to_dict`; ``model`` replaces the stored description (needed for a
        user's own module, whose factory a description cannot rebuild)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EnsembleConfig field(s) {sorted(unknown)}")
        d = dict(d)
        for k in ("seeds", "widths", "betas"):
            if k in d and isinstance(d[k], list):
                d[k] = tuple(d[k])
        if model is not None:
            d["model"] = model
        return cls(**d)
