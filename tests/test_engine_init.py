"""train_ensemble(init=...): continue training from given weights, seed by seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sgdbayes.engine import EnsembleConfig, batch_indices, train_ensemble


def _cfg(**kw):
    base = dict(dataset="moons", dataset_options={"n": 128, "n_test": 32}, widths=(None, 8, None), lr=0.05,
                batch_size=16, steps=30, seeds=(3, 5, 7), progress=False, device="cpu", dtype="float64")
    base.update(kw)
    return EnsembleConfig(**base)


def test_init_with_own_initialization_reproduces_the_run():
    a = train_ensemble(_cfg())
    b = train_ensemble(_cfg(), init=a.w_init.clone())
    torch.testing.assert_close(a.w_final, b.w_final, rtol=0, atol=0)
    np.testing.assert_array_equal(a.displacement, b.displacement)


def test_init_continues_from_given_weights_like_a_plain_loop():
    """Seed i started from row i equals plain SGD from that row on seed i's minibatch order, and
    does not depend on the chunking."""
    first = train_ensemble(_cfg(optimizer="adam", lr=0.01))
    start = first.w_final.clone()
    cont = train_ensemble(_cfg(batch_stream=1), init=start)
    alone = train_ensemble(_cfg(batch_stream=1, chunk_size=1), init=start)
    torch.testing.assert_close(cont.w_final, alone.w_final, rtol=0, atol=1e-12)
    torch.testing.assert_close(cont.w_init, start)
    from sgdbayes.data import load_dataset

    data = load_dataset("moons", n=128, n_test=32, dtype=torch.float64)
    for i, seed in enumerate((3, 5, 7)):
        m = first.module(i)
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        for idx in batch_indices(seed, 128, 16, 30, stream=1):
            loss = torch.nn.functional.cross_entropy(m(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        w = torch.nn.utils.parameters_to_vector(m.parameters()).detach()
        torch.testing.assert_close(cont.w_final[i], w, rtol=1e-9, atol=1e-10)
        R = float(torch.linalg.vector_norm(w - start[i]))
        assert cont.displacement[i, -1] == pytest.approx(R, rel=1e-9)


def test_init_shape_is_checked():
    with pytest.raises(ValueError, match=r"\[K=3, P="):
        train_ensemble(_cfg(), init=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="finite"):
        a = train_ensemble(_cfg(steps=1))
        train_ensemble(_cfg(), init=a.w_init * float("nan"))
