"""The :class:`Dataset` every sgdbayes layer consumes, and the conversions into it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["Dataset", "resolve_device", "as_dataset", "check_finite_inputs"]


@dataclass
class Dataset:
    """A classification (or next-token) data set split into train and test tensors.

    ``x_*`` are ``[n, ...]`` (float features or images ``[n, C, H, W]``, or int64 tokens
    ``[n, T]``); ``y_*`` int64 labels ``[n]`` (or ``[n, T]`` next tokens) in
    ``0..n_classes-1``. ``meta`` records how it was made (JSON-serializable); ``source``
    is ``{"name": ..., "options": {...}}`` when ``load_dataset(name, **options)`` rebuilds
    it exactly, None for data passed in as tensors.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str
    n_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    source: Optional[dict] = None

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(64,)``, ``(1, 8, 8)`` or ``(T,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        return int(math.prod(self.feature_shape))

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device=None, dtype=None) -> "Dataset":
        """A copy on ``device`` with floating features cast to ``dtype`` (labels and tokens stay
        int64)."""
        dev = resolve_device(device) if device is not None else self.device

        def fx(t):
            return t.to(dev, dtype or t.dtype) if t.is_floating_point() else t.to(dev)

        return Dataset(fx(self.x_train), self.y_train.to(dev), fx(self.x_test), self.y_test.to(dev), self.name,
                       self.n_classes, dict(self.meta), None if self.source is None else dict(self.source))


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cuda..."`` without CUDA is a ValueError;
    anything else via ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                         f"built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA); use --device cpu")
    return dev


def check_finite_inputs(x: Tensor, what: str = "training inputs") -> None:
    """Float inputs must be finite; the error blames the data (not the model) and locates it."""
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = torch.nonzero(bad.reshape(x.shape[0], -1).any(1)).flatten()
        raise ValueError(f"the data is at fault, not the model: {what} hold {int(bad.sum())} NaN/inf value(s) in "
                         f"{rows.numel()} example(s), the first at example {int(rows[0])}; clean or drop them")


def as_dataset(data, n_classes: Optional[int] = None) -> Dataset:
    """A :class:`Dataset` from a Dataset, an ``(x, y)`` pair of tensors (train only; no test
    split) or a torch ``Dataset`` of ``(x, y)`` pairs (read once, in order). ``n_classes``
    defaults to ``y.max() + 1``."""
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        name = "tensors"
    elif isinstance(data, (TorchDataset, DataLoader)):
        ds = data.dataset if isinstance(data, DataLoader) else data
        batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("the dataset must yield (x, y) pairs")
        x, y = batch
        name = type(ds).__name__
    else:
        raise ValueError(f"data must be an sgdbayes Dataset, an (x, y) pair of tensors or a torch Dataset, "
                         f"got {type(data).__name__}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
    if y.is_floating_point():
        raise ValueError(f"labels y are {y.dtype}: the ensemble trains classifiers with cross-entropy, so y must "
                         f"hold integer class labels 0..C-1")
    y = y.long()
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels y must be >= 0 (class indices), found {int(y.min())}")
    C = int(y.max()) + 1 if n_classes is None and y.numel() else int(n_classes or 1)
    empty_x, empty_y = x[:0], y[:0]
    return Dataset(x, y, empty_x, empty_y, name, C, {"source": "tensors passed in"}, None)
