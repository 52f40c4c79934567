"""The model protocol: what the engine, the SGLD samplers, the LLC hook, storage and the
clustering helper need from a model family (docs/models.md).

A *family* describes one architecture. K models of it are held as flat weights
``w [K, P]`` whose row k is model k's ``parameters_to_vector`` (``parameters()``
order), plus an optional per-seed *state*: a dict of tensors ``[K, *shape]`` (the
module's buffers, e.g. BatchNorm running statistics), or ``None``.

Capabilities are declared as attributes (``stateful``, ``stochastic``), never
discovered with ``getattr``. Training goes through :meth:`ModelFamily.kernel`, which
returns a :class:`ModelKernel` for a chunk of k models: the MLP's is its hand-written
fused kernel, every other family's is the batched ``torch`` path of
:mod:`sgdbayes.models.module`.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["State", "ModelFamily", "ModelKernel", "ParamLayout", "SeedGenerators", "state_rows",
           "state_select", "state_cat", "state_repeat", "state_to"]

#: per-seed non-trainable state: ``{name: [K, *shape]}`` or None
State = Optional[dict]


@runtime_checkable
class ParamLayout(Protocol):
    """How the rows ``[k, P]`` of k models map onto a *blocked* flat buffer of ``k * P``
    numbers (each block contiguous over the k models)."""

    n_params: int

    def views(self, flat: Tensor, k: int) -> list[Tensor]:  # pragma: no cover - protocol
        """Block views of a flat buffer (first dim k)."""

    def pack(self, blocks: list[Tensor]) -> Tensor:  # pragma: no cover
        """Row layout ``[k, P]`` from block views."""

    def unpack(self, w: Tensor, blocks: list[Tensor]) -> None:  # pragma: no cover
        """Write rows ``w [k, P]`` into block views."""


@runtime_checkable
class ModelKernel(Protocol):
    """Minibatch loss and gradient of a chunk of k models (the engine's workhorse).

    ``loss_and_grad(P, G, xb, yb, state, rng)``: ``P`` / ``G`` are the block views of
    ``layout`` holding the parameters / receiving the gradients; ``xb [k, B, ...]`` and
    ``yb [k, B, ...]`` one minibatch per model (inputs already passed through
    :meth:`prepare`); ``state`` the chunk's state, updated in place (train mode);
    ``rng`` the chunk's :class:`SeedGenerators` (dropout). Returns the mean loss of
    each model ``[k]`` and its number of correct predictions ``[k]``.
    """

    layout: ParamLayout

    def prepare(self, x: Tensor) -> Tensor:  # pragma: no cover
        """The full input tensor ``[n, ...]`` in the form minibatches are gathered from."""

    def loss_and_grad(self, P: list[Tensor], G: list[Tensor], xb: Tensor, yb: Tensor, state: State,
                      rng: Optional["SeedGenerators"]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        ...


@runtime_checkable
class ModelFamily(Protocol):
    """One architecture, K models at a time (see the module docstring).

    Attributes: ``kind`` (``"mlp"``, ``"cnn"``, ``"resnet"``, ``"transformer"`` or
    ``"module"``), ``n_params`` (P), ``stateful`` (per-seed buffers, e.g. BatchNorm running
    statistics, which train mode updates), ``stochastic`` (train mode draws random numbers:
    dropout), ``has_batchnorm``, ``backend`` (which batched implementation runs: ``"fused"``
    for the MLP kernel, ``"lowered"`` or ``"vmap"`` for modules).
    """

    kind: str
    n_params: int
    stateful: bool
    stochastic: bool
    has_batchnorm: bool
    backend: str

    def initialize(self, seeds: Sequence[int], device=None,
                   dtype=torch.float32) -> tuple[Tensor, State]:  # pragma: no cover
        """``(w [K, P], state)``: row i is the model built right after ``torch.manual_seed(seeds[i])``."""

    def apply(self, w: Tensor, x: Tensor, state: State = None, train: bool = False,
              rng: Optional["SeedGenerators"] = None, shared: Optional[bool] = None) -> Tensor:  # pragma: no cover
        """Outputs ``[K, B, ..., n_outputs]`` of K models on ``x [B, ...]`` (``shared``) or
        ``[K, B, ...]``; differentiable w.r.t. ``w``. Train mode updates ``state`` in place."""

    def module(self, w_k: Tensor, state_k: Optional[dict] = None) -> nn.Module:  # pragma: no cover
        """Model k as a plain ``nn.Module`` (parameters copied from ``w_k [P]``)."""

    def kernel(self, k: int, batch_size: int, device, dtype, input_shape: Sequence[int] = None,
               input_dtype=torch.float32) -> ModelKernel:  # pragma: no cover
        """The training kernel for chunks of ``k`` models, minibatches of ``batch_size``
        examples of ``input_shape``."""

    def describe(self) -> dict:  # pragma: no cover
        """JSON-able description; for built-in families ``build_model(**describe())`` rebuilds it."""

    def output_shape(self, input_shape: Sequence[int], input_dtype=torch.float32) -> tuple:  # pragma: no cover
        """Per-example output shape for per-example inputs of ``input_shape``."""

    def activation_bytes(self, batch_size: int, dtype, input_shape: Sequence[int] = (),
                         input_dtype=torch.float32) -> int:  # pragma: no cover
        """Estimated memory of one model's training step (activations kept for the backward)."""


class SeedGenerators:
    """One ``torch.Generator`` per seed for the random numbers of train-mode forwards
    (dropout masks). Seed s's generator is seeded with
    ``SeedSequence([s, stream, 0x64726f70]).generate_state(2)`` only, so its masks do not
    depend on the other seeds of the batch."""

    def __init__(self, seeds: Sequence[int], stream: int = 0, device=None):
        import numpy as np

        self.seeds = [int(s) for s in seeds]
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.gens = []
        for s in self.seeds:
            st = np.random.SeedSequence([s, int(stream), 0x64726F70]).generate_state(2, dtype=np.uint32)
            self.gens.append(torch.Generator(device=dev).manual_seed((int(st[0]) << 32) | int(st[1])))

    def __len__(self) -> int:
        return len(self.gens)

    def subset(self, a: int, b: int) -> "SeedGenerators":
        """The generators of seeds ``a..b-1`` (shared, not copied)."""
        out = object.__new__(SeedGenerators)
        out.seeds, out.gens = self.seeds[a:b], self.gens[a:b]
        return out

    def uniform(self, shape: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
        """``[K, *shape]`` uniform numbers in [0, 1), row i from seed i's generator."""
        gens = self.gens
        out = torch.empty(len(gens), *shape, dtype=dtype, device=device or gens[0].device)
        for i, g in enumerate(gens):
            torch.rand(*shape, generator=g, out=out[i], dtype=dtype)
        return out


# ------------------------------------------------------------------------- state helpers
def state_rows(state: State) -> list[Tensor]:
    """The state's tensors (first dim K), in a fixed order."""
    return [] if state is None else [state[k] for k in sorted(state)]


def state_select(state: State, index: Tensor | slice) -> State:
    """Rows ``index`` of every state tensor."""
    if state is None:
        return None
    return {k: v[index] for k, v in state.items()}


def state_cat(parts: list) -> State:
    """Concatenate the states of consecutive chunks of seeds."""
    if not parts or parts[0] is None:
        return None
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def state_repeat(state: State, r: int) -> State:
    """Each model's state repeated ``r`` times (rows ``k * r + c``: chains of model k)."""
    if state is None or r == 1:
        return state
    return {k: v.repeat_interleave(r, dim=0) for k, v in state.items()}


def state_to(state: State, device=None, dtype=None) -> State:
    """State on ``device``; floating tensors cast to ``dtype`` (integer counters stay)."""
    if state is None:
        return None
    out = {}
    for k, v in state.items():
        out[k] = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
    return out
