"""Data sets read from local files (never downloaded): MNIST / Fashion-MNIST IDX files,
CIFAR-10's python-pickle batches folder, any ``.npz`` with ``x`` and ``y``. A missing path
is an error naming it."""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "idx_images", "cifar10", "npz"]

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


def _existing(name: str, path, hint: str) -> Path:
    if path is None or str(path) == "":
        raise ValueError(f"dataset {name!r} is read from local files; {hint}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset {name!r}: {p} does not exist; {hint}")
    return p


def idx_images(name: str, path=None, images: bool = False):
    """MNIST-format data: a directory with the four IDX files (optionally ``.gz``), or an
    ``.npz`` with ``x_train, y_train, x_test, y_test``. Pixels / 255 (when > 1); flat
    ``[n, 784]`` or, with ``images=True``, ``[n, 1, 28, 28]``."""
    hint = (f"pass path=<directory with {', '.join(f + '[.gz]' for f in _IDX_FILES.values())}> "
            f"or path=<file.npz with x_train, y_train, x_test, y_test>")
    p = _existing(name, path, hint)
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
            found = next((c for c in (p / stem, p / (stem + ".gz")) if c.exists()), None)
            if found is None:
                present = sorted(c.name for c in p.iterdir())
                raise FileNotFoundError(
                    f"dataset {name!r}: missing {stem}[.gz] in {p} (present: {present}); {hint}")
            arrays[key] = read_idx(found)
    xs = []
    for key in ("x_train", "x_test"):
        a = arrays[key].astype(np.float64)
        if images and a.ndim == 3:
            a = a[:, None]
        xs.append(a if images else a.reshape(len(a), -1))
    scale = 255.0 if max(xs[0].max(initial=0), xs[1].max(initial=0)) > 1.0 else 1.0
    meta = dict(path=str(p), source="local files", scale=scale, images=bool(images))
    return xs[0] / scale, arrays["y_train"], xs[1] / scale, arrays["y_test"], 10, meta


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: plain containers and numpy arrays, no other classes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _cifar_batch(path: Path):
    with open(path, "rb") as f:
        d = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data' / b'labels')")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"{path}: data has shape {x.shape}, expected [n, 3072]")
    return x.reshape(-1, 3, 32, 32), np.asarray(d[b"labels"], dtype=np.int64)


def _subset(x, y, n, seed):
    if n is None or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=int(n), replace=False))
    return x[idx], y[idx]


def cifar10(path=None, n: int | None = None, n_test: int | None = None, seed: int = 0):
    """CIFAR-10 from its standard python-pickle folder ``cifar-10-batches-py`` (``path`` is
    that folder or its parent): ``data_batch_1..5`` and ``test_batch``. Images
    ``[n, 3, 32, 32]``, pixels / 255. ``n`` / ``n_test``: a random subset (seeded by
    ``seed``; the paper uses 10,000 training images)."""
    hint = "pass path=<the cifar-10-batches-py folder (data_batch_1..5, test_batch)>"
    p = _existing("cifar10", path, hint)
    if p.is_dir() and (p / "cifar-10-batches-py").is_dir():
        p = p / "cifar-10-batches-py"
    train_files = sorted(p.glob("data_batch_*"))
    if not train_files or not (p / "test_batch").exists():
        present = sorted(c.name for c in p.iterdir()) if p.is_dir() else [p.name]
        raise FileNotFoundError(f"dataset 'cifar10': {p} lacks data_batch_* or test_batch (present: {present}); "
                                f"{hint}")
    parts = [_cifar_batch(f) for f in train_files]
    xtr, ytr = np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    xte, yte = _cifar_batch(p / "test_batch")
    xtr, ytr = _subset(xtr, ytr, n, seed)
    xte, yte = _subset(xte, yte, n_test, seed + 1)
    meta = dict(path=str(p), n=len(xtr), n_test=len(xte), seed=seed, source="CIFAR-10 python batches, pixels/255")
    return xtr / 255.0, ytr, xte / 255.0, yte, 10, meta


def npz(path=None, test_fraction: float = 0.2, seed: int = 0, n_classes: int | None = None):
    """Any ``.npz`` holding ``x`` and ``y`` (split into train / test by ``test_fraction``,
    seeded) or ``x_train, y_train, x_test, y_test``. uint8 inputs are pixels (/ 255); other
    integer inputs are tokens (kept as int64); float inputs are used as they are."""
    p = _existing("npz", path, "pass path=<file.npz with arrays x and y>")
    with np.load(p) as z:
        keys = set(z.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            xtr, ytr, xte, yte = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        elif {"x", "y"} <= keys:
            x, y = z["x"], z["y"]
            if len(x) != len(y):
                raise ValueError(f"{p}: x has {len(x)} examples but y has {len(y)}")
            perm = np.random.default_rng(seed).permutation(len(x))
            n_te = int(round(test_fraction * len(x)))
            xte, yte, xtr, ytr = x[perm[:n_te]], y[perm[:n_te]], x[perm[n_te:]], y[perm[n_te:]]
        else:
            raise ValueError(f"{p} holds {sorted(keys)}; expected arrays x and y "
                             f"(or x_train, y_train, x_test, y_test)")
    if np.issubdtype(np.asarray(ytr).dtype, np.floating):
        raise ValueError(f"{p}: y holds floats; sgdbayes trains classifiers, y must be integer labels")
    scale = None
    if xtr.dtype == np.uint8:
        scale = 255.0
        xtr, xte = xtr / scale, xte / scale
    C = int(n_classes) if n_classes is not None else int(max(np.max(ytr, initial=0), np.max(yte, initial=0))) + 1
    meta = dict(path=str(p), test_fraction=test_fraction, seed=seed, scale=scale, source="local .npz")
    return xtr, ytr, xte, yte, C, meta
