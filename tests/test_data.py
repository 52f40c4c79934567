import gzip

import numpy as np
import pytest
import torch

from sgdbayes.data import available_datasets, load_dataset, read_idx


def test_moons_shapes_and_determinism():
    a = load_dataset("moons", n=40, n_test=10, noise=0.1, seed=1)
    b = load_dataset("moons", n=40, n_test=10, noise=0.1, seed=1)
    c = load_dataset("moons", n=40, n_test=10, noise=0.1, seed=2)
    assert a.x_train.shape == (40, 2) and a.x_test.shape == (10, 2) and a.n_classes == 2
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert set(a.y_train.tolist()) == {0, 1}


def test_digits():
    d = load_dataset("digits", test_fraction=0.25, dtype=torch.float64)
    assert d.n_features == 64 and d.n_classes == 10 and d.x_train.dtype == torch.float64
    assert float(d.x_train.max()) <= 1.0
    assert len(d.y_train) + len(d.y_test) == 1797


def test_mnist1d_generated_offline_and_rng_restored():
    np.random.seed(123); expect = np.random.rand()
    np.random.seed(123)
    d = load_dataset("mnist1d", num_samples=200)
    assert np.random.rand() == expect          # global numpy RNG untouched
    assert d.x_train.shape == (160, 40) and d.x_test.shape == (40, 40) and d.n_classes == 10


def _write_idx(path, arr, gz):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    xs = {"train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
          "t10k": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)}
    for part, x in xs.items():
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte", x, gz)
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte", rng.integers(0, 10, len(x), dtype=np.uint8), gz)
    d = load_dataset("fashion_mnist", path=tmp_path)
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (5, 784)
    assert np.allclose(d.x_train[3].numpy(), xs["train"][3].reshape(-1) / 255.0)
    assert read_idx(next(tmp_path.glob("t10k-images*"))).shape == (5, 28, 28)


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", x_train=rng.random((6, 4)), y_train=np.arange(6) % 10,
             x_test=rng.random((2, 4)), y_test=np.array([1, 2]))
    d = load_dataset("mnist", path=tmp_path / "m.npz")
    assert d.x_train.shape == (6, 4) and d.y_test.tolist() == [1, 2]


def test_errors_say_what_exists(tmp_path):
    with pytest.raises(ValueError, match="available: .*moons"):
        load_dataset("cifar77")
    with pytest.raises(ValueError, match="path="):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing train-images-idx3-ubyte"):
        load_dataset("mnist", path=tmp_path)
    with pytest.raises(ValueError, match="unknown mnist1d option"):
        load_dataset("mnist1d", bogus=1)
    assert "mnist1d" in available_datasets()
