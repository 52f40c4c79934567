"""What training returns (:class:`EnsembleResult`) and what a hook sees (:class:`EnsembleState`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
from torch import Tensor, nn

from .._validation import check_int
from ..models.protocol import state_select
from .config import EnsembleConfig

__all__ = ["Hook", "EnsembleState", "EnsembleResult", "normalize_hook_output"]


@dataclass
class Hook:
    """Call ``fn(state)`` after every ``every``-th step (and at step 0 if ``at_start``)."""

    every: int
    fn: Callable[["EnsembleState"], Any]
    name: str = "hook"
    at_start: bool = False

    def __post_init__(self):
        try:
            self.every = check_int("Hook.every", self.every, 1)
        except ValueError as e:
            raise ValueError(f"{e} (Hook.every must be an integer > 0)") from None


class EnsembleState:
    """What a hook sees: the current chunk of seeds at ``step``.

    ``w`` is a copy ``[k, P]`` of the current weights (row k = ``parameters_to_vector`` of
    seed k's module); ``set_weights`` writes new ones. ``spec`` is the model family,
    ``model_state`` the per-seed state (buffers, e.g. BatchNorm running statistics;
    ``bn_state`` the MLP's ``[k, S]`` tensor), ``diverged`` a bool ``[k]`` tensor.
    """

    def __init__(self, run):
        self._run = run

    step = property(lambda self: self._run.t)
    seeds = property(lambda self: self._run.seeds)
    spec = property(lambda self: self._run.family)
    data = property(lambda self: self._run.data)
    config = property(lambda self: self._run.cfg)
    model_state = property(lambda self: self._run.state)
    diverged = property(lambda self: ~self._run.active)

    @property
    def bn_state(self) -> Optional[Tensor]:
        st = self._run.state
        return None if st is None else st.get("bn")

    @property
    def w(self) -> Tensor:
        return self._run.params.pack()

    @property
    def w0(self) -> Tensor:
        return self._run.w0

    def set_weights(self, w: Tensor) -> None:
        self._run.params.unpack(w)


def normalize_hook_output(out, k: int, name: str) -> dict[str, np.ndarray] | None:
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


@dataclass
class EnsembleResult:
    """Outcome of :func:`sgdbayes.engine.train_ensemble` (:mod:`sgdbayes.storage` saves/loads it).

    ``spec`` is the model family (an ``MLPSpec``, or a ``ModuleSpec`` for any other module);
    ``steps [G]`` the record grid; ``displacement``, ``train_loss``, ``train_acc`` are
    ``[K, G]`` (row i = ``seeds[i]``; NaN after divergence); ``final`` has one row per seed
    (seed, diverged, diverged_step (-1 = never), train_loss, train_acc, test_loss, test_acc,
    displacement); ``w_init``, ``w_final`` are ``[K, P]`` CPU tensors, row k flat in
    ``parameters()`` order (:meth:`module` rebuilds seed k); ``state`` the final per-seed
    buffers (``{name: [K, ...]}``, e.g. BatchNorm running statistics) or None; ``hooks`` maps
    hook names to long tables (step, seed, values...); ``data_source`` says how to rebuild
    the training data (``{"name", "options"}`` of :func:`sgdbayes.data.load_dataset`) or is
    None for data passed in as tensors.
    """

    config: EnsembleConfig
    spec: Any
    seeds: np.ndarray
    steps: np.ndarray
    displacement: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    final: pd.DataFrame
    w_init: Tensor
    w_final: Tensor
    state: Optional[dict] = None
    hooks: dict[str, pd.DataFrame] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    data_source: Optional[dict] = None

    @property
    def K(self) -> int:
        return len(self.seeds)

    @property
    def model(self):
        """The model family (same object as ``spec``)."""
        return self.spec

    @property
    def bn_state(self) -> Optional[Tensor]:
        """The MLP's batch-norm running statistics ``[K, S]`` (None without)."""
        return None if self.state is None else self.state.get("bn")

    @property
    def diverged(self) -> np.ndarray:
        return self.final["diverged"].to_numpy(bool)

    def module(self, k: int, initial: bool = False) -> nn.Module:
        """Seed ``seeds[k]`` (row k) as a plain ``nn.Module``: final weights and state, or its
        initialization with ``initial=True``."""
        k = check_int("k", k, 0, self.K - 1)
        w = (self.w_init if initial else self.w_final)[k]
        st = None if (initial or self.state is None) else state_select(self.state, k)
        if initial and self.state is not None:
            st = state_select(self.spec.initialize([int(self.seeds[k])], dtype=w.dtype)[1], 0)
        return self.spec.module(w, st)

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
