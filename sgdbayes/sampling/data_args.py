"""What sampling accepts as data: ``(x, y)`` tensors, a torch ``Dataset`` or ``DataLoader``
(tuples or dict batches), an :class:`sgdbayes.data.Dataset` (its train split), or a dict of
tensors. All of it is read once, in order; SGLD draws its own minibatches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from torch import Tensor

__all__ = ["SamplingData", "sampling_data", "dataset_tensors"]


@dataclass
class SamplingData:
    """The training set as columns: ``(x, y)`` (or any tuple of tensors) or ``{name: [n, ...]}``
    (dict batches);
    ``batch_size`` is the DataLoader's when the data came as one (None otherwise)."""

    columns: Union[tuple, dict]
    n: int
    batch_size: Optional[int] = None

    @property
    def is_dict(self) -> bool:
        return isinstance(self.columns, dict)

    def _pair(self) -> tuple:
        if self.is_dict or len(self.columns) != 2:
            raise ValueError(f"this needs (x, y) data; the data has "
                             f"{'dict batches' if self.is_dict else f'{len(self.columns)} columns'} (pass "
                             f"evaluate=(model, batch) -> mean loss with a list of modules)")
        return self.columns

    @property
    def x(self) -> Tensor:
        return self._pair()[0]

    @property
    def y(self) -> Tensor:
        return self._pair()[1]

    def to(self, device) -> "SamplingData":
        move = (lambda v: v.to(device))
        cols = {k: move(v) for k, v in self.columns.items()} if self.is_dict else tuple(map(move, self.columns))
        return SamplingData(cols, self.n, self.batch_size)

    def chunks(self, size: int):
        """Consecutive batches of at most ``size`` examples: ``(batch, count)``."""
        for a in range(0, self.n, size):
            yield self.select(slice(a, a + size)), min(size, self.n - a)

    def select(self, idx: Optional[Tensor]):
        """The batch of rows ``idx`` (any shape; None = every row) in the data's own form."""
        if idx is None:
            return self.columns
        if self.is_dict:
            return {k: v[idx] for k, v in self.columns.items()}
        return tuple(c[idx] for c in self.columns)


def _collate_all(ds):
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))


def sampling_data(data) -> SamplingData:
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    from ..data import Dataset

    batch_size = None
    if isinstance(data, SamplingData):
        return data
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        cols = tuple(data)
    elif isinstance(data, dict) and data and all(isinstance(v, Tensor) for v in data.values()):
        cols = dict(data)
    elif isinstance(data, Dataset):
        cols = (data.x_train, data.y_train)  # the training split
    elif isinstance(data, (DataLoader, TorchDataset)):
        if isinstance(data, DataLoader):
            batch_size = data.batch_size
            data = data.dataset
        batch = _collate_all(data)
        if isinstance(batch, dict):
            cols = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
        elif isinstance(batch, (tuple, list)) and batch and all(isinstance(t, Tensor) for t in batch):
            cols = tuple(batch)
        else:
            raise ValueError("the dataset must yield tuples of tensors (e.g. (x, y) pairs) or dicts of tensors")
    else:
        raise ValueError(f"data must be (x, y) tensors, a dict of tensors, a Dataset or a DataLoader, "
                         f"got {type(data).__name__}")
    from ..data import check_finite_inputs

    names = ("inputs x", "targets y") if len(cols) == 2 else [f"column {i}" for i in range(len(cols))]
    for name, v in (cols.items() if isinstance(cols, dict) else zip(names, cols)):
        check_finite_inputs(v, f"the data's {name}")
    sizes = {int(v.shape[0]) for v in (cols.values() if isinstance(cols, dict) else cols)}
    if len(sizes) != 1:
        raise ValueError(f"the data's columns have different numbers of examples: {sorted(sizes)}")
    return SamplingData(cols, sizes.pop(), batch_size)


def dataset_tensors(data) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the whole training set from a ``DataLoader``, a torch ``Dataset``, a
    :class:`sgdbayes.data.Dataset` (its train split) or an ``(x, y)`` pair."""
    d = sampling_data(data)
    if d.is_dict or len(d.columns) != 2:
        raise ValueError("this data does not yield (x, y) pairs; pass evaluate=(model, batch) -> loss to use it")
    return d.x, d.y
