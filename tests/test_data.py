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


def _write_cifar(folder, n_per_batch=4, batches=2, seed=0):
    import pickle

    rng = np.random.default_rng(seed)
    folder.mkdir()
    made = {}
    for name in [f"data_batch_{i + 1}" for i in range(batches)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, n_per_batch).tolist(), b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        made[name] = d
    return made


def test_cifar10_python_batches(tmp_path):
    made = _write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", path=tmp_path)           # the parent folder works too
    assert d.x_train.shape == (8, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32) and d.n_classes == 10
    first = made["data_batch_1"][b"data"][0].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(d.x_train[0].numpy(), first, rtol=1e-6)
    assert d.y_train[:4].tolist() == made["data_batch_1"][b"labels"]
    sub = load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py", n=5, seed=1)
    assert sub.x_train.shape[0] == 5
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("cifar10", path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data_batch"):
        load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py" / ".." / "..")


def test_cifar_unpickler_refuses_code(tmp_path):
    import pickle

    folder = tmp_path / "evil"
    folder.mkdir()

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Boom(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", path=folder)


def test_idx_and_digits_as_images(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("t10k", 3)):
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), False)
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8), False)
    d = load_dataset("mnist", path=tmp_path, images=True)
    assert d.x_train.shape == (6, 1, 28, 28) and d.n_features == 784
    g = load_dataset("digits", images=True)
    flat = load_dataset("digits")
    assert g.x_train.shape[1:] == (1, 8, 8) and torch.equal(g.x_train.reshape(-1, 64), flat.x_train)


def test_any_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8), y=np.arange(20) % 3)
    d = load_dataset("npz", path=tmp_path / "img.npz", test_fraction=0.25)
    assert d.x_train.shape == (15, 1, 4, 4) and d.x_test.shape == (5, 1, 4, 4) and d.n_classes == 3
    assert float(d.x_train.max()) <= 1.0
    np.savez(tmp_path / "tok.npz", x=rng.integers(0, 7, (10, 5)), y=rng.integers(0, 7, (10, 5)))
    t = load_dataset("npz", path=tmp_path / "tok.npz")
    assert t.x_train.dtype == torch.int64 and t.y_train.shape[1:] == (5,)
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="expected arrays x and y"):
        load_dataset("npz", path=tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_dataset("npz", path=tmp_path / "missing.npz")


def test_token_sequences():
    d = load_dataset("sequences", p=7, length=5, n=20, n_test=4, seed=3)
    assert d.x_train.shape == (20, 5) and d.y_train.shape == (20, 5) and d.x_train.dtype == torch.int64
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1])          # targets are the next tokens
    assert torch.equal(d.y_train[:, 1:], (d.x_train[:, 1:] + d.x_train[:, :-1]) % 7)
    assert torch.equal(d.x_train, load_dataset("sequences", p=7, length=5, n=20, n_test=4, seed=3).x_train)
