"""Configuration sections shared by several studies (one frozen dataclass per TOML table).

Each class is a section of a study's typed configuration (:mod:`sgdbayes.runner.typed`):
its field names are the TOML keys, ``__post_init__`` rejects out-of-range values with a
message that starts with the field name (the runner prefixes the section, e.g.
``train.lr must be > 0, got -1``). Library dataclasses are used as sections directly where
they exist (``[llc]`` is :class:`sgdbayes.sampling.LLCConfig`, ``[sgld]`` is
:class:`sgdbayes.sampling.PosteriorConfig`); the classes here cover what the library has no
dataclass for. A study's own sections live in its pipeline module.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from .._validation import check_choice, check_float, check_int, check_level, check_seed

__all__ = ["MODEL_KINDS", "ModelConfig", "MoonsData", "MNISTFamilyData", "TrainConfig", "FitConfig",
           "LLCSchedule", "H7Config", "BootstrapConfig", "ReportConfig", "CurvesReport", "sgd_ensemble"]

# model families a study can train; a new family adds its kind here (and its sizes below)
MODEL_KINDS = ("mlp",)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the model family and its sizes.

    ``kind = "mlp"``: fully connected ReLU network with hidden widths ``hidden``; the input
    and output widths come from the data (features, classes).
    """

    kind: str = "mlp"
    hidden: tuple[int, ...] = (64, 64)

    def __post_init__(self):
        check_choice("kind", self.kind, MODEL_KINDS)
        object.__setattr__(self, "hidden", tuple(check_int(f"hidden[{i}]", h, 1) for i, h in enumerate(self.hidden)))

    def widths(self) -> tuple:
        """Layer widths for :class:`sgdbayes.engine.EnsembleConfig` (``None`` = from the data)."""
        return (None, *self.hidden, None)

    def spec(self, n_features: int, n_classes: int):
        """The :class:`sgdbayes.models.MLPSpec` for data with these input/output sizes."""
        from ..models import MLPSpec

        return MLPSpec((n_features, *self.hidden, n_classes))


@dataclass(frozen=True)
class MoonsData:
    """``[data]`` of the moons studies: ``sklearn.datasets.make_moons`` (train size ``n``)."""

    name: Literal["moons"] = "moons"
    n: int = 512
    noise: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_int("n", self.n, 2)
        check_float("noise", self.noise, 0.0)
        check_seed(self.seed, "seed")

    @property
    def n_train(self) -> int:
        return self.n

    def dataset_options(self) -> dict:
        """Options of :func:`sgdbayes.data.load_dataset` that rebuild this data."""
        return {"n": self.n, "noise": self.noise, "seed": self.seed}

    def load(self, device: str = "cpu"):
        from ..data import load_dataset

        return load_dataset(self.name, device=device, **self.dataset_options())


@lru_cache(maxsize=4)
def _load_mnist_family(data: "MNISTFamilyData"):
    import numpy as np
    import torch

    from ..data import Dataset, load_dataset

    if data.name == "mnist1d":
        return load_dataset("mnist1d", **data.dataset_options())
    full = load_dataset(data.name, path=data.path)
    x = torch.cat([full.x_train, full.x_test])
    y = torch.cat([full.y_train, full.y_test])
    n = min(data.subset, x.shape[0]) if data.subset > 0 else x.shape[0]
    g = np.random.default_rng(data.seed)
    idx = torch.as_tensor(g.permutation(x.shape[0])[:n])
    n_tr = int(round(data.train_fraction * n))
    meta = dict(full.meta, subset=n, train_fraction=data.train_fraction, subset_seed=data.seed,
                source=f"{full.meta.get('source', 'local files')}; random subset of {n} of the "
                       f"{x.shape[0]} train+test images, {n_tr} train / {n - n_tr} test")
    return Dataset(x[idx[:n_tr]], y[idx[:n_tr]], x[idx[n_tr:]], y[idx[n_tr:]], data.name, full.n_classes, meta)


@dataclass(frozen=True)
class MNISTFamilyData:
    """``[data]`` of the MNIST-family studies (App G.1).

    ``mnist1d``: ``mnist1d_samples`` generated offline, ``train_fraction`` of them train (seed
    ``seed``). ``mnist``/``fashion_mnist``: the local files at ``path`` (four IDX files or an
    .npz); a random subset of ``subset`` images (paper: 10000; 0 = all) split
    ``train_fraction`` train (paper: 50/50), drawn with seed ``seed``.
    """

    name: Literal["mnist1d", "mnist", "fashion_mnist"] = "mnist1d"
    path: str = ""
    subset: int = 10000
    train_fraction: float = 0.5
    mnist1d_samples: int = 10000
    seed: int = 0

    def __post_init__(self):
        check_int("subset", self.subset, 0)
        check_float("train_fraction", self.train_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
        check_int("mnist1d_samples", self.mnist1d_samples, 10)
        check_seed(self.seed, "seed")
        if self.name != "mnist1d" and not self.path:
            raise ValueError(f"path: name = {self.name!r} reads local files: give --set data.path=DIR "
                             f"(IDX files) or a .npz with x_train, y_train, x_test, y_test")

    def dataset_options(self) -> dict:
        """Options of :func:`sgdbayes.data.load_dataset` for this data.

        For the local MNIST files the subset options are recorded too; ``load_dataset`` does
        not take them (yet), so rebuilding such data without ``data=`` fails loudly instead of
        silently loading the full set.
        """
        if self.name == "mnist1d":
            return {"num_samples": self.mnist1d_samples, "train_split": self.train_fraction, "seed": self.seed}
        return {"path": self.path, "subset": self.subset, "train_fraction": self.train_fraction,
                "subset_seed": self.seed}

    def input_files(self) -> tuple[Path, ...]:
        """The local files read (their content is part of the cache key)."""
        if self.name == "mnist1d":
            return ()
        p = Path(self.path).expanduser()
        if p.is_dir():
            return tuple(sorted(f for f in p.iterdir() if f.is_file() and "idx" in f.name))
        return (p,)

    def load(self, device: str = "cpu"):
        """The data set (cached in memory per configuration), on ``device``."""
        return _load_mnist_family(self).to(device)


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the SGD ensemble (names as in :class:`sgdbayes.engine.EnsembleConfig`).

    ``seeds`` models with init/shuffle seeds ``seed_offset .. seed_offset + seeds - 1``;
    exactly one of ``steps`` / ``epochs`` is > 0 (``epochs`` x (n_train // batch_size) steps).
    """

    seeds: int = 8
    seed_offset: int = 0
    lr: float = 0.01
    momentum: float = 0.0
    batch_size: int = 128
    steps: int = 0
    epochs: int = 0
    record_every: int = 10
    record_log_points: int = 100

    def __post_init__(self):
        check_int("seeds", self.seeds, 1)
        check_seed(self.seed_offset, "seed_offset")
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_float("momentum", self.momentum, 0.0, 1.0, strict_max=True)
        check_int("batch_size", self.batch_size, 1)
        check_int("steps", self.steps, 0)
        check_int("epochs", self.epochs, 0)
        if (self.steps > 0) == (self.epochs > 0):
            raise ValueError(f"steps = {self.steps}, epochs = {self.epochs}: exactly one of train.steps and "
                             f"train.epochs must be > 0 (0 = not used)")
        check_int("record_every", self.record_every, 1)
        check_int("record_log_points", self.record_log_points, 0)

    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seed_offset, self.seed_offset + self.seeds))

    def n_steps(self, n_train: int) -> int:
        """``steps``, or ``epochs`` x (n_train // batch_size)."""
        return self.steps if self.steps > 0 else self.epochs * (n_train // self.batch_size)

    def check_data(self, n_train: int, source: str) -> None:
        """ValueError when a minibatch is larger than the training set (``source`` names its key)."""
        if self.batch_size > n_train:
            raise ValueError(f"train.batch_size = {self.batch_size} exceeds the {n_train} training examples "
                             f"({source}); lower train.batch_size or use more data")


def sgd_ensemble(data, model: ModelConfig, train: TrainConfig, n_train: int, device: str):
    """The :class:`sgdbayes.engine.EnsembleConfig` of a plain-SGD study: ``data`` (a data section:
    ``name``, ``dataset_options()``), ``model``, ``train``; ``n_train`` sets the steps of ``epochs``."""
    from ..engine import EnsembleConfig

    return EnsembleConfig(
        dataset=data.name, dataset_options=data.dataset_options(), widths=model.widths(), optimizer="sgd",
        lr=train.lr, momentum=train.momentum, batch_size=train.batch_size, steps=train.n_steps(n_train),
        seeds=train.seed_list(), record_every=train.record_every, record_log_points=train.record_log_points,
        device=device, progress=False,
    )


@dataclass(frozen=True)
class FitConfig:
    """``[fit]``: how each run's displacement curve is fitted (names of
    :func:`sgdbayes.stats.fit_diffusion`)."""

    method: Literal["ar1-boot", "ar1", "hac", "ols"] = "ar1-boot"
    n_boot: int = 199
    n_grid: int = 64
    level: float = 0.95
    seed: int = 0

    def __post_init__(self):
        check_int("n_boot", self.n_boot, 1)
        check_int("n_grid", self.n_grid, 5)
        check_level(self.level, "level")
        check_seed(self.seed, "seed")


@dataclass(frozen=True)
class LLCSchedule:
    """``[llc_schedule]``: λ̂ along training every ``every`` steps (the estimator is ``[llc]``);
    final λ = mean of the last ``last`` estimates (App G.1: 10)."""

    every: int = 100
    last: int = 10

    def __post_init__(self):
        check_int("every", self.every, 1)
        check_int("last", self.last, 1)


@dataclass(frozen=True)
class H7Config:
    """``[h7]``: eq 17 fitted on t <= ``split``·T predicts R(t) beyond; 'predictable' when the
    upper bound of the median |relative error| is below ``margin``."""

    split: float = 0.5
    margin: float = 0.1

    def __post_init__(self):
        check_float("split", self.split, 0.0, 1.0, strict_min=True, strict_max=True)
        check_float("margin", self.margin, 0.0, strict_min=True)


@dataclass(frozen=True)
class BootstrapConfig:
    """``[analysis]``: bootstrap resamples over runs and their seed."""

    n_boot: int = 2000
    seed: int = 1

    def __post_init__(self):
        check_int("n_boot", self.n_boot, 1)
        check_seed(self.seed, "seed")


@dataclass(frozen=True)
class ReportConfig:
    """``[report]`` (presentational: not part of the cache key): figure resolution."""

    dpi: int = 110

    def __post_init__(self):
        check_int("dpi", self.dpi, 10)


@dataclass(frozen=True)
class CurvesReport(ReportConfig):
    """``[report]`` with the number of individual curves drawn."""

    max_curves: int = 60

    def __post_init__(self):
        super().__post_init__()
        check_int("max_curves", self.max_curves, 1)
