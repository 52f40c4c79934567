"""Datasets for sgdbayes: generated in-process or read from local files (docs/models.md).

Everything is offline. ``load_dataset(name, **options)`` returns a :class:`Dataset` with
inputs ``[n, ...]`` (float features, images ``[n, C, H, W]``, or int64 tokens) and int64
labels, split into train and test and placed on the requested device.

=================  ==============================================================
name               options (defaults)
=================  ==============================================================
``moons``          ``n=512`` (train size), ``n_test=512``, ``noise=0.2``, ``seed=0``
                   -- ``sklearn.datasets.make_moons(n + n_test, noise, random_state=seed)``,
                   first ``n`` points train, the rest test.
``mnist1d``        ``num_samples=5000``, ``train_split=0.8``, ``seed=42`` and any other
                   key of ``mnist1d.data.get_dataset_args()`` -- generated with
                   ``mnist1d.data.make_dataset`` (never downloaded). 40 features, 10 classes.
``digits``         ``test_fraction=0.2``, ``seed=0``, ``images=False`` -- scikit-learn's
                   bundled 8x8 digits, pixels / 16, stratified split. 64 features
                   (``images=True``: ``[n, 1, 8, 8]``), 10 classes.
``mnist``,         ``path=`` (required): a directory holding the four IDX files
``fashion_mnist``  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
                   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
                   ``.gz``), or an ``.npz`` with ``x_train, y_train, x_test, y_test``.
                   Pixels / 255, flattened to 784 (``images=True``: ``[n, 1, 28, 28]``).
``cifar10``        ``path=`` (required): the ``cifar-10-batches-py`` folder (or its parent);
                   ``n``, ``n_test`` (random subsets), ``seed=0``. ``[n, 3, 32, 32]``, / 255.
``npz``            ``path=`` (required): an ``.npz`` with ``x`` and ``y`` (``test_fraction=0.2``,
                   ``seed=0``) or ``x_train, y_train, x_test, y_test``; ``n_classes``.
``sequences``      ``p=11``, ``length=16``, ``n=1024``, ``n_test=256``, ``seed=0`` -- modular
                   Fibonacci token sequences for a next-token model (``x, y [n, length]``).
``modular``        ``p=23``, ``op="add"`` (``sub``, ``mul``), ``train_fraction=0.6``, ``seed=0``
                   -- all pairs (a, b), label (a op b) mod p, one-hot a and b side by side
                   (``[p*p, 2p]``); a random ``train_fraction`` of the pairs is train (grokking).
=================  ==============================================================

Common options: ``device="cpu"`` (``"auto"`` = CUDA when available), ``dtype=torch.float32``.
"""

from __future__ import annotations

import numpy as np
import torch

from . import builtin, files
from .dataset import Dataset, as_dataset, check_finite_inputs, resolve_device
from .files import read_idx

__all__ = ["Dataset", "load_dataset", "available_datasets", "resolve_device", "read_idx", "as_dataset",
           "check_finite_inputs"]

_LOADERS = {
    "moons": builtin.moons,
    "mnist1d": builtin.mnist1d,
    "digits": builtin.digits,
    "sequences": builtin.sequences,
    "modular": builtin.modular,
    "mnist": lambda **kw: files.idx_images("mnist", **kw),
    "fashion_mnist": lambda **kw: files.idx_images("fashion_mnist", **kw),
    "cifar10": files.cifar10,
    "npz": files.npz,
}
_ALIASES = {"two_moons": "moons", "fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist",
            "mnist-1d": "mnist1d", "mnist_1d": "mnist1d", "cifar-10": "cifar10", "cifar_10": "cifar10"}


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
        a = np.ascontiguousarray(a)
        if np.issubdtype(a.dtype, np.integer):
            return torch.as_tensor(a.astype(np.int64)).to(dev)    # tokens
        return torch.as_tensor(a, dtype=dtype).to(dev)

    def fy(a):
        return torch.as_tensor(np.asarray(a).astype(np.int64)).to(dev)

    source = {"name": key, "options": {k: (str(v) if k == "path" else v) for k, v in options.items()}}
    ds = Dataset(fx(xtr), fy(ytr), fx(xte), fy(yte), key, int(n_classes), meta, source)
    for part, y in (("train", ds.y_train), ("test", ds.y_test)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise ValueError(f"{key}: {part} labels outside 0..{n_classes - 1}")
    check_finite_inputs(ds.x_train, f"{key} training inputs")
    check_finite_inputs(ds.x_test, f"{key} test inputs")
    return ds
