"""Data sets generated in-process (nothing is downloaded): moons, MNIST-1D, scikit-learn's
digits (flat or as ``[n, 1, 8, 8]`` images) and integer token sequences."""

from __future__ import annotations

import random

import numpy as np

__all__ = ["moons", "mnist1d", "digits", "sequences", "modular"]


def moons(n: int = 512, n_test: int = 512, noise: float = 0.2, seed: int = 0):
    from sklearn.datasets import make_moons
    if n <= 0 or n_test < 0:
        raise ValueError(f"moons needs n > 0 and n_test >= 0, got n={n}, n_test={n_test}")
    if noise < 0:
        raise ValueError(f"moons noise must be >= 0, got {noise}")
    x, y = make_moons(n_samples=n + n_test, noise=noise, random_state=seed)
    meta = dict(n=n, n_test=n_test, noise=noise, seed=seed,
                source="sklearn.datasets.make_moons(n + n_test), first n = train")
    return x[:n], y[:n], x[n:], y[n:], 2, meta


def mnist1d(**args):
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


def digits(test_fraction: float = 0.2, seed: int = 0, images: bool = False):
    """scikit-learn's bundled 8x8 digits, pixels / 16, stratified split; ``images=True``
    gives ``[n, 1, 8, 8]`` instead of ``[n, 64]``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    if not 0 < test_fraction < 1:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data / 16.0, d.target, test_size=test_fraction,
                                          random_state=seed, stratify=d.target)
    if images:
        xtr, xte = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
    return xtr, ytr, xte, yte, 10, dict(test_fraction=test_fraction, seed=seed, images=bool(images),
                                        source="sklearn.datasets.load_digits, pixels/16")


def sequences(p: int = 11, length: int = 16, n: int = 1024, n_test: int = 256, seed: int = 0):
    """Modular Fibonacci sequences for a next-token transformer: ``s_0, s_1`` uniform in
    ``0..p-1``, ``s_{t+1} = (s_t + s_{t-1}) mod p``; inputs ``s_0..s_{L-1}``, targets
    ``s_1..s_L`` (``[n, L]`` int64 each; every target after the first is determined by the
    two tokens before it). Deterministic in ``seed``."""
    from .._validation import check_int

    p, length = check_int("p", p, 2), check_int("length", length, 2)
    n, n_test = check_int("n", n, 1), check_int("n_test", n_test, 0)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    s = np.zeros((n + n_test, length + 1), dtype=np.int64)
    s[:, :2] = rng.integers(0, p, size=(n + n_test, 2))
    for t in range(2, length + 1):
        s[:, t] = (s[:, t - 1] + s[:, t - 2]) % p
    x, y = s[:, :-1], s[:, 1:]
    meta = dict(p=p, length=length, n=n, n_test=n_test, seed=seed,
                source="modular Fibonacci s_{t+1} = (s_t + s_{t-1}) mod p, generated in-process")
    return x[:n], y[:n], x[n:], y[n:], p, meta


def modular(p: int = 23, op: str = "add", train_fraction: float = 0.6, seed: int = 0):
    """Modular arithmetic for grokking: every pair ``(a, b)`` of ``0..p-1`` with label
    ``(a + b) mod p`` (``op="add"``), ``(a - b) mod p`` (``"sub"``) or ``(a * b) mod p``
    (``"mul"``); inputs are the two one-hot codes side by side (``[p*p, 2p]`` floats). A
    random ``train_fraction`` of the ``p*p`` pairs (drawn with ``seed``) is the training
    set, the rest the test set."""
    from .._validation import check_choice, check_float, check_int

    p = check_int("p", p, 2)
    op = check_choice("op", op, ("add", "sub", "mul"))
    train_fraction = check_float("train_fraction", train_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
    a, b = (v.ravel() for v in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    y = {"add": a + b, "sub": a - b, "mul": a * b}[op] % p
    x = np.zeros((p * p, 2 * p), dtype=np.float32)
    x[np.arange(p * p), a] = 1.0
    x[np.arange(p * p), p + b] = 1.0
    perm = np.random.default_rng(check_int("seed", seed, 0)).permutation(p * p)
    n_tr = int(round(train_fraction * p * p))
    if not 0 < n_tr < p * p:
        raise ValueError(f"train_fraction {train_fraction} of {p * p} pairs leaves an empty train or test set")
    tr, te = perm[:n_tr], perm[n_tr:]
    sym = {"add": "+", "sub": "-", "mul": "*"}[op]
    meta = dict(p=p, op=op, train_fraction=train_fraction, seed=seed, n_pairs=p * p,
                source=f"all pairs (a, b) of 0..{p - 1}, label (a {sym} b) mod {p}, one-hot a and b concatenated; "
                       f"random {n_tr} pairs train, {p * p - n_tr} test (generated in-process)")
    return x[tr], y[tr], x[te], y[te], p, meta
