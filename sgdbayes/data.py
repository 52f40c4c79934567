"""Datasets for sgdbayes: generated (moons, MNIST-1D, digits) or read from local files.

Everything is offline. ``load_dataset(name, **options)`` returns a
:class:`Dataset` with float features ``[n, d]`` and int64 labels ``[n]`` already
split into train and test and placed on the requested device.

=================  ==============================================================
name               options (defaults)
=================  ==============================================================
``moons``          ``n=512`` (train size), ``n_test=512``, ``noise=0.2``, ``seed=0``
                   -- ``sklearn.datasets.make_moons(n + n_test, noise, random_state=seed)``,
                   first ``n`` points train, the rest test.
``mnist1d``        ``num_samples=5000``, ``train_split=0.8``, ``seed=42`` and any other
                   key of ``mnist1d.data.get_dataset_args()`` -- generated with
                   ``mnist1d.data.make_dataset`` (never downloaded). 40 features, 10 classes.
``digits``         ``test_fraction=0.2``, ``seed=0`` -- scikit-learn's bundled 8x8 digits,
                   pixels / 16, stratified split. 64 features, 10 classes.
``mnist``,         ``path=`` (required): a directory holding the four IDX files
``fashion_mnist``  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
                   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
                   ``.gz``), or an ``.npz`` with ``x_train, y_train, x_test, y_test``.
                   Pixels / 255, flattened to 784.
=================  ==============================================================

Common options: ``device="cpu"`` (``"auto"`` = CUDA when available), ``dtype=torch.float32``.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "load_dataset", "available_datasets", "resolve_device", "read_idx"]


@dataclass
class Dataset:
    """A classification data set split into train and test tensors.

    ``x_*`` are float ``[n, d]``, ``y_*`` are int64 ``[n]`` with values in
    ``0..n_classes-1``; ``meta`` records how it was made (JSON-serializable).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str
    n_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device=None, dtype=None) -> "Dataset":
        """A copy on ``device`` with features cast to ``dtype`` (labels stay int64)."""
        dev = resolve_device(device) if device is not None else self.device
        dt = dtype or self.x_train.dtype
        return Dataset(self.x_train.to(dev, dt), self.y_train.to(dev), self.x_test.to(dev, dt),
                       self.y_test.to(dev), self.name, self.n_classes, dict(self.meta))


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; anything else via ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------- loaders
def _moons(n: int = 512, n_test: int = 512, noise: float = 0.2, seed: int = 0):
    from sklearn.datasets import make_moons
    if n <= 0 or n_test < 0:
        raise ValueError(f"moons needs n > 0 and n_test >= 0, got n={n}, n_test={n_test}")
    if noise < 0:
        raise ValueError(f"moons noise must be >= 0, got {noise}")
    x, y = make_moons(n_samples=n + n_test, noise=noise, random_state=seed)
    meta = dict(n=n, n_test=n_test, noise=noise, seed=seed,
                source="sklearn.datasets.make_moons(n + n_test), first n = train")
    return x[:n], y[:n], x[n:], y[n:], 2, meta


def _mnist1d(**args):
    from mnist1d.data import get_dataset_args, make_dataset
    a = get_dataset_args(as_dict=True)
    unknown = set(args) - set(a)
    if unknown:
        raise ValueError(f"unknown mnist1d option(s) {sorted(unknown)}; known: {sorted(a)}")
    a.update(args)
    a.pop("url", None)
    # make_dataset seeds numpy's/python's global RNGs: restore them afterwards.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        from mnist1d.data import ObjectView
        d = make_dataset(ObjectView(dict(a, url=None)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    meta = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in a.items()}
    meta["source"] = "mnist1d.data.make_dataset (generated offline)"
    return d["x"], d["y"], d["x_test"], d["y_test"], 10, meta


def _digits(test_fraction: float = 0.2, seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    if not 0 < test_fraction < 1:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data / 16.0, d.target, test_size=test_fraction,
                                          random_state=seed, stratify=d.target)
    return xtr, ytr, xte, yte, 10, dict(test_fraction=test_fraction, seed=seed,
                                        source="sklearn.datasets.load_digits, pixels/16")


_IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
              "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says shape {shape}, file holds {data.size} values")
    return data.reshape(shape)


def _image_files(name: str, path=None):
    hint = (f"pass path=<directory with {', '.join(f + '[.gz]' for f in _IDX_FILES.values())}> "
            f"or path=<file.npz with x_train, y_train, x_test, y_test>")
    if path is None:
        raise ValueError(f"dataset {name!r} is read from local files; {hint}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset {name!r}: {p} does not exist; {hint}")
    if p.is_file():
        if p.suffix != ".npz":
            raise ValueError(f"dataset {name!r}: {p} is a file but not .npz; {hint}")
        with np.load(p) as z:
            missing = [k for k in _IDX_FILES if k not in z]
            if missing:
                raise ValueError(f"{p} lacks array(s) {missing}; it holds {sorted(z.files)}")
            arrays = {k: z[k] for k in _IDX_FILES}
    else:
        arrays = {}
        for key, stem in _IDX_FILES.items():
            cands = [p / stem, p / (stem + ".gz")]
            found = next((c for c in cands if c.exists()), None)
            if found is None:
                present = sorted(c.name for c in p.iterdir())
                raise FileNotFoundError(
                    f"dataset {name!r}: missing {stem}[.gz] in {p} (present: {present}); {hint}")
            arrays[key] = read_idx(found)
    x_train = arrays["x_train"].reshape(len(arrays["x_train"]), -1).astype(np.float64)
    x_test = arrays["x_test"].reshape(len(arrays["x_test"]), -1).astype(np.float64)
    scale = 255.0 if max(x_train.max(initial=0), x_test.max(initial=0)) > 1.0 else 1.0
    meta = dict(path=str(p), source="local files", scale=scale)
    return x_train / scale, arrays["y_train"], x_test / scale, arrays["y_test"], 10, meta


_LOADERS = {
    "moons": _moons,
    "mnist1d": _mnist1d,
    "digits": _digits,
    "mnist": lambda **kw: _image_files("mnist", **kw),
    "fashion_mnist": lambda **kw: _image_files("fashion_mnist", **kw),
}
_ALIASES = {"two_moons": "moons", "fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist",
            "mnist-1d": "mnist1d", "mnist_1d": "mnist1d"}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(_LOADERS)


def load_dataset(name: str, *, device="cpu", dtype=torch.float32, **options) -> Dataset:
    """Load data set ``name`` (see the module docstring for names and options)."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    try:
        xtr, ytr, xte, yte, n_classes, meta = _LOADERS[key](**options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise ValueError(f"dataset {key!r}: bad option ({e}); see sgdbayes.data docstring") from e
        raise
    dev = resolve_device(device)

    def fx(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype).to(dev)

    def fy(a):
        return torch.as_tensor(np.asarray(a).astype(np.int64)).to(dev)

    ds = Dataset(fx(xtr), fy(ytr), fx(xte), fy(yte), key, int(n_classes), meta)
    for part, y in (("train", ds.y_train), ("test", ds.y_test)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise ValueError(f"{key}: {part} labels outside 0..{n_classes - 1}")
    if not (torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()):
        raise ValueError(f"{key}: features contain non-finite values")
    return ds
