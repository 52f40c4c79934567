import json

import numpy as np
import pytest
import torch

from sgdbayes._io import atomic_directory, atomic_write_json
from sgdbayes.data import load_dataset
from sgdbayes.engine import EnsembleConfig, Hook, train_ensemble
from sgdbayes.storage import IncompleteResultError, load_result, save_result


@pytest.fixture(scope="module")
def result():
    data = load_dataset("moons", n=32, n_test=16)
    cfg = EnsembleConfig(widths=(2, 4, 2), batch_size=8, steps=12, seeds=3, batchnorm=True,
                         record_every=4, progress=False)
    return train_ensemble(cfg, data, hooks=[Hook(4, lambda s: s.w.norm(dim=1), "wn")])


def test_roundtrip(result, tmp_path):
    p = save_result(result, tmp_path / "run")
    back = load_result(p)
    assert back.config == result.config and back.spec == result.spec
    assert np.array_equal(back.steps, result.steps) and np.array_equal(back.seeds, result.seeds)
    assert np.array_equal(back.displacement, result.displacement)
    assert np.array_equal(back.train_loss, result.train_loss)
    assert torch.equal(back.w_final, result.w_final) and torch.equal(back.bn_state, result.bn_state)
    assert back.final.equals(result.final)
    assert back.hooks["wn"].equals(result.hooks["wn"])
    assert not list(tmp_path.glob(".run.tmp-*"))       # no temporary left behind


def test_exists_and_overwrite(result, tmp_path):
    save_result(result, tmp_path / "run")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_result(result, tmp_path / "run")
    save_result(result, tmp_path / "run", overwrite=True)
    assert load_result(tmp_path / "run").K == 3


@pytest.mark.parametrize("victim", ["MANIFEST.json", "weights.pt", "curves.parquet"])
def test_incomplete_directory_names_missing_file(result, tmp_path, victim):
    p = save_result(result, tmp_path / "run")
    (p / victim).unlink()
    with pytest.raises(IncompleteResultError, match=victim.replace(".", r"\.")):
        load_result(p)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "a").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_json_rejects_nan(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "b.json", {"x": float("nan")})
    assert not (tmp_path / "b.json").exists()
