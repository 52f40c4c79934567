"""The batched engine against plain nn.Module + torch.optim, one seed at a time."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgdbayes.data import load_dataset
from sgdbayes.engine import (EnsembleConfig, Hook, batch_indices, record_grid, train_ensemble)
from sgdbayes.models import MLPSpec


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n=64, n_test=32, noise=0.2, seed=3, dtype=torch.float64)


def _cfg(**kw):
    base = dict(dataset="moons", widths=(2, 8, 6, 2), batch_size=16, steps=30, seeds=4,
                lr=0.1, record_every=5, record_log_points=6, dtype="float64", progress=False)
    base.update(kw)
    return EnsembleConfig(**base)


def reference_run(cfg: EnsembleConfig, data, seed: int, spec: MLPSpec):
    """Seed ``seed`` trained alone: nn.Module + torch.optim, same init and batch order."""
    torch.manual_seed(seed)
    model = spec._build_module().double()
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
    idx = torch.from_numpy(batch_indices(seed, data.n_train, cfg.batch_size, cfg.steps,
                                         cfg.batch_stream))
    losses, disps = [], []
    model.train()
    for t in range(cfg.steps):
        xb, yb = data.x_train[idx[t]], data.y_train[idx[t]]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        w = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        disps.append((w - w0).norm().item())
    return model, np.array(losses), np.array(disps)


OPTS = {
    "sgd": dict(optimizer="sgd"),
    "sgd_momentum_wd": dict(optimizer="sgd", momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": dict(optimizer="sgd", momentum=0.8, nesterov=True),
    "adam": dict(optimizer="adam", lr=0.01, weight_decay=1e-3),
}


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("opt", sorted(OPTS))
def test_matches_plain_module(moons, opt, bn, mlp_kernel):
    cfg = _cfg(batchnorm=bn, **OPTS[opt])
    res = train_ensemble(cfg, moons)
    for i in (0, 3):
        seed = int(res.seeds[i])
        model, losses, disps = reference_run(cfg, moons, seed, res.spec)
        w_ref = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        assert torch.allclose(res.w_final[i], w_ref, rtol=1e-9, atol=1e-10), opt
        # displacement R(t) on the grid
        assert np.allclose(res.displacement[i], disps[res.steps - 1], rtol=1e-9, atol=1e-12)
        # train-loss curve = mean of minibatch losses since previous grid point
        prev = np.concatenate([[0], res.steps[:-1]])
        ref_curve = [losses[a:b].mean() for a, b in zip(prev, res.steps)]
        assert np.allclose(res.train_loss[i], ref_curve, rtol=1e-9)
        if bn:
            ref_bn = res.spec.bn_state_from_module(model)
            assert torch.allclose(res.bn_state[i], ref_bn, rtol=1e-9, atol=1e-12)
        # final test metrics in eval mode
        model.eval()
        with torch.no_grad():
            z = model(moons.x_test)
        assert res.final.test_loss[i] == pytest.approx(F.cross_entropy(z, moons.y_test).item(), rel=1e-9)
        assert res.final.test_acc[i] == pytest.approx((z.argmax(1) == moons.y_test).double().mean().item())
    assert not res.final.diverged.any()
    # init is PyTorch default init per seed
    assert torch.equal(res.w_init, res.spec.init(res.seeds, dtype=torch.float64))


@pytest.mark.parametrize("bn", [False, True])
def test_seed_result_independent_of_K_and_chunk(moons, bn, mlp_kernel):
    full = train_ensemble(_cfg(seeds=(0, 1, 2, 3, 4), momentum=0.9, batchnorm=bn), moons)
    alone = train_ensemble(_cfg(seeds=(3,), momentum=0.9, batchnorm=bn), moons)
    chunked = train_ensemble(_cfg(seeds=(0, 1, 2, 3, 4), momentum=0.9, chunk_size=2, batchnorm=bn), moons)
    i = full.index_of(3)
    assert torch.allclose(full.w_final[i], alone.w_final[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(full.w_final, chunked.w_final, rtol=1e-12, atol=1e-14)
    assert np.allclose(full.displacement[i], alone.displacement[0], rtol=1e-12)
    assert np.allclose(full.train_loss, chunked.train_loss, rtol=1e-12)
    # different seeds really differ
    assert not torch.allclose(full.w_final[0], full.w_final[1])
    # chunks run side by side in worker threads give the same per-seed results as one after another
    serial = train_ensemble(_cfg(seeds=(0, 1, 2, 3, 4), momentum=0.9, chunk_size=2, workers=1, batchnorm=bn), moons)
    threaded = train_ensemble(_cfg(seeds=(0, 1, 2, 3, 4), momentum=0.9, chunk_size=2, workers=3, batchnorm=bn), moons)
    assert threaded.meta["workers"] == 3 and serial.meta["workers"] == 1
    assert torch.equal(serial.w_final, threaded.w_final)
    assert torch.equal(serial.w_init, threaded.w_init)
    assert np.array_equal(serial.displacement, threaded.displacement, equal_nan=True)


def test_record_grid_is_geometric_union_regular():
    g = record_grid(800, 100, 20)
    assert g[0] == 1 and g[-1] == 800
    assert set(range(100, 801, 100)) <= set(g.tolist())
    assert np.all(np.diff(g) > 0)
    assert (g < 10).sum() >= 4      # dense early in log t


def test_batch_indices_are_epoch_permutations():
    idx = batch_indices(7, 50, 16, 9)          # 3 steps/epoch, 2 dropped per epoch
    assert idx.shape == (9, 16)
    epoch = idx[:3].reshape(-1)
    assert len(set(epoch.tolist())) == 48
    assert not np.array_equal(idx[:3], idx[3:6])
    assert not np.array_equal(idx, batch_indices(8, 50, 16, 9))


def test_hook_records_and_divergence(moons):
    """A hook corrupts seed 2's weights at step 10: it is marked diverged at step 11,
    frozen, its curve NaN afterwards; the other seeds are unaffected."""
    def corrupt(state):
        if state.step == 10:
            w = state.w
            w[list(state.seeds).index(2)] = float("inf")
            state.set_weights(w)

    def norm(state):
        return {"wnorm": state.w.norm(dim=1), "step_x2": torch.full((len(state.seeds),), 2.0 * state.step)}

    cfg = _cfg(seeds=(0, 1, 2, 3))
    clean = train_ensemble(cfg, moons)
    res = train_ensemble(cfg, moons, hooks=[Hook(10, corrupt, "corrupt"), Hook(5, norm, "norm", at_start=True)])
    fin = res.final.set_index("seed")
    assert fin.loc[2, "diverged"] and fin.loc[2, "diverged_step"] == 11
    assert not fin.drop(index=2).diverged.any()
    assert (fin.drop(index=2).diverged_step == -1).all()
    i2 = res.index_of(2)
    assert np.isnan(res.train_loss[i2][res.steps > 10]).all()
    assert np.isfinite(res.train_loss[i2][res.steps <= 10]).all()
    others = [res.index_of(s) for s in (0, 1, 3)]
    assert torch.equal(res.w_final[others], clean.w_final[others])
    assert torch.isinf(res.w_final[i2]).all()   # frozen at the (corrupted) pre-divergence values
    tab = res.hooks["norm"]
    assert sorted(tab.step.unique()) == [0, 5, 10, 15, 20, 25, 30]
    assert len(tab) == 7 * 4 and set(tab.columns) == {"step", "seed", "wnorm", "step_x2"}
    assert (tab.step_x2 == 2 * tab.step).all()
    r0 = tab[(tab.step == 0) & (tab.seed == 1)].wnorm.item()
    assert r0 == pytest.approx(res.w_init[res.index_of(1)].norm().item())
    assert res.hooks["corrupt"].empty


def test_huge_lr_diverges_some_seeds_are_marked(moons):
    # float32, lr 1e8: some seeds overflow to a non-finite loss, some (dead ReLUs) do not
    res = train_ensemble(_cfg(lr=1e8, seeds=8, steps=20, dtype="float32"), moons)
    div = res.final.diverged.to_numpy()
    assert div.any() and (~div).any()
    for i in np.nonzero(div)[0]:
        t = res.final.diverged_step[i]
        assert 1 <= t <= 20
        assert np.isnan(res.train_loss[i][res.steps >= t]).all()
    for i in np.nonzero(~div)[0]:
        assert np.isfinite(res.train_loss[i]).all()


@pytest.mark.parametrize("bad, match", [
    (dict(seeds=0), "K > 0"),
    (dict(seeds=()), "K > 0"),
    (dict(widths=(2, 0, 2)), "width 1"),
    (dict(widths=(2, -3, 2)), "width 1"),
    (dict(lr=0.0), "lr"),
    (dict(lr=-1.0), "lr"),
    (dict(batch_size=0), "batch_size"),
    (dict(steps=None), "exactly one"),
    (dict(epochs=3), "exactly one"),
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(momentum=1.5), "momentum"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(seeds=(1, 1)), "distinct"),
])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**bad)


def test_bad_config_against_data(moons):
    with pytest.raises(ValueError, match="features"):
        train_ensemble(_cfg(widths=(3, 4, 2)), moons)
    with pytest.raises(ValueError, match="batch_size"):
        train_ensemble(_cfg(batch_size=1000), moons)
    with pytest.raises(ValueError, match="unknown dataset"):
        train_ensemble(_cfg(dataset="nope"))


def test_epochs_and_dataset_by_name():
    cfg = EnsembleConfig(dataset="moons", dataset_options=dict(n=64, n_test=16), widths=(None, 5, None),
                         epochs=3, batch_size=16, seeds=2, progress=False)
    res = train_ensemble(cfg)
    assert res.meta["n_steps"] == 12 and res.steps[-1] == 12
    assert res.spec.widths == (2, 5, 2)
    assert res.w_final.dtype == torch.float32
    assert np.all(res.displacement[:, -1] > 0)
    assert EnsembleConfig.from_dict(cfg.to_dict()) == cfg


def test_workers_with_hooks_is_refused(moons):
    with pytest.raises(ValueError, match="workers > 1 with hooks"):
        train_ensemble(_cfg(seeds=(0, 1), workers=2), moons, hooks=[Hook(every=5, fn=lambda st: None)])
