"""LLC, the training hook, posterior SGLD, storage and the clustering probe on ensembles of
any model family (here a small CNN with BatchNorm on digits images)."""

import functools

import numpy as np
import pytest
import torch
from torch import nn

from sgdbayes.data import load_dataset
from sgdbayes.engine import EnsembleConfig, train_ensemble
from sgdbayes.models import MLPSpec, build_model, class_probabilities
from sgdbayes.models.cnn import ConvNet
from sgdbayes.sampling import (LLCConfig, LLCResult, LLCTrainingHook, PosteriorConfig, PosteriorResult,
                               estimate_llc, sample_posterior)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: OpenMP threads only add spin-waiting on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", images=True, test_fraction=0.5)


@pytest.fixture(scope="module")
def cnn_ens(digits):
    fam = build_model("cnn", channels=(4, 6), batchnorm=True)
    cfg = EnsembleConfig(model=fam, batch_size=32, steps=40, seeds=(3, 4, 5), lr=0.05, progress=False)
    return train_ensemble(cfg, digits)


LLC = LLCConfig(step_size=1e-4, num_chains=2, num_draws=10, batch_size=16)


def test_estimate_llc_on_a_cnn_ensemble_equals_its_modules_in_eval_mode(cnn_ens, digits):
    """estimate_llc(ensemble) (data rebuilt from the ensemble's source) == the same models as a
    list of eval-mode nn.Modules (ModulePotential), same seeds: the batched family path and the
    torch.func path of users' modules agree."""
    a = estimate_llc(cnn_ens, config=LLC, progress=False)
    assert list(a.model_ids) == [3, 4, 5] and a.mode.startswith("eval")
    mods = [cnn_ens.module(k).eval() for k in range(3)]
    b = estimate_llc(mods, (digits.x_train, digits.y_train), config=LLC, model_ids=[3, 4, 5], progress=False)
    np.testing.assert_allclose(a.init_loss, b.init_loss, rtol=1e-5)
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-4, atol=1e-5)
    assert np.isfinite(a.llc).all()


def test_row_shards_of_a_batchnorm_ensemble_keep_each_rows_own_state(cnn_ens, digits):
    """12 rows (3 models x 4 chains) on one torch thread are split over two row shards; each shard
    must evaluate its rows with their own models' running statistics (a shard of rows 0..5 is
    models 0 and 1, not the first six rows of every model's state repeated). Reference: the same
    modules as nn.Modules (ModulePotential, never sharded)."""
    from sgdbayes.sampling import ModelPotential
    from sgdbayes.sampling.chains import _auto_workers

    cfg = LLCConfig(step_size=1e-4, num_chains=4, num_draws=10, batch_size=16)
    w = cnn_ens.w_final
    pot = ModelPotential(cnn_ens.spec, digits.x_train, digits.y_train, cnn_ens.state)
    assert _auto_workers(pot, w.repeat_interleave(4, 0)) == 2          # the sharded path runs
    a = estimate_llc(cnn_ens, config=cfg, progress=False)
    mods = [cnn_ens.module(k).eval() for k in range(3)]
    b = estimate_llc(mods, (digits.x_train, digits.y_train), config=cfg, model_ids=[3, 4, 5], progress=False)
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-4, atol=1e-5)
    # the shard's potential is the full potential restricted to its rows
    rows = w.repeat_interleave(4, 0)
    full = pot(rows, None)
    torch.testing.assert_close(pot.rows(2, 9, 12)(rows[2:9], None), full[2:9])


def test_llc_result_vocabulary_round_trip(cnn_ens):
    r = estimate_llc(cnn_ens, config=LLC, progress=False)
    ci = r.conf_int(0.9)
    assert list(ci.columns) == ["ci_low", "ci_high"] and len(ci) == 3
    np.testing.assert_allclose((ci["ci_high"] - ci["ci_low"]).to_numpy(), 2 * 1.6448536 * r.llc_se, rtol=1e-6)
    back = LLCResult.from_dict(r.to_dict())
    np.testing.assert_array_equal(back.loss_traces, r.loss_traces)
    assert back.config == r.config and back.mode == r.mode
    assert {"llc", "llc_se", "llc_ci_low", "llc_ci_high", "trend_flag"} <= set(r.to_frame().columns)


def test_training_hook_on_a_cnn_matches_a_direct_estimate(digits):
    fam = build_model("cnn", channels=(4, 6), batchnorm=True)
    cfg = EnsembleConfig(model=fam, batch_size=32, steps=20, seeds=(1, 2), lr=0.05, progress=False)
    hook = LLCTrainingHook(LLC, every=10)
    res = train_ensemble(cfg, digits, hooks=[hook.as_engine_hook()])
    table = res.hooks["llc"]
    assert sorted(table["step"].unique().tolist()) == [10, 20] and set(table["seed"]) == {1, 2}
    from dataclasses import replace

    direct = estimate_llc(res, digits, config=replace(LLC, seed=LLC.seed + 20), progress=False)
    np.testing.assert_allclose(direct.llc, hook.llc_trace().loc[20].values, rtol=1e-4, atol=1e-4)


def test_posterior_on_a_cnn_ensemble(cnn_ens, digits):
    cfg = PosteriorConfig(step_size=1e-5, num_samples=6, num_burnin_steps=2, num_steps_bw_samples=2, batch_size=32)
    p = sample_posterior(cnn_ens.w_final[:2], spec=cnn_ens.spec, data=digits, state={k: v[:2] for k, v in
                         cnn_ens.state.items()}, config=cfg, start_ids=[3, 4], progress=False)
    assert p.samples.shape == (2, 6, cnn_ens.spec.n_params) and np.isfinite(p.loss_traces).all()
    back = PosteriorResult.from_dict(p.to_dict())
    assert torch.equal(back.samples, p.samples)
    assert set(p.estimates().columns) >= {"estimate", "se", "ci_low", "ci_high"}


def test_class_probabilities_binary_equals_the_p1_probe_and_multiclass_uses_every_class(cnn_ens, digits):
    """For a binary MLP the free probabilities are exactly today's P(y = 1) probe numbers;
    for 10 classes there are 9 free probabilities per point, rows of the full simplex sum to 1."""
    spec = MLPSpec((2, 8, 2))
    w = spec.init([0, 1, 2])
    x = torch.randn(7, 2)
    ref = torch.softmax(spec.forward(w, x, train=False), -1)[..., 1].float().numpy()
    got = class_probabilities(spec, w, x)
    assert got.shape == (3, 7, 1)
    np.testing.assert_array_equal(got[:, :, 0], ref)
    probs = class_probabilities(cnn_ens.spec, cnn_ens.w_final, digits.x_test[:11], cnn_ens.state, free=False)
    assert probs.shape == (3, 11, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    free = class_probabilities(cnn_ens.spec, cnn_ens.w_final, digits.x_test[:11], cnn_ens.state)
    np.testing.assert_array_equal(free, probs[..., 1:])
    from sgdbayes.stats.cluster import probe_inputs

    probe = probe_inputs(digits.x_train.numpy(), max_points=20, rng=0)
    assert probe.shape == (20, 1, 8, 8)


def test_cnn_ensemble_storage_round_trip(cnn_ens, tmp_path):
    from sgdbayes.storage import load_result, save_result

    back = load_result(save_result(cnn_ens, tmp_path / "cnn"))
    assert back.spec.describe() == cnn_ens.spec.describe() and back.data_source == cnn_ens.data_source
    assert torch.equal(back.w_final, cnn_ens.w_final)
    for k in cnn_ens.state:
        assert torch.equal(back.state[k], cnn_ens.state[k])
    x = load_dataset("digits", images=True).x_test[:5]
    m0, m1 = cnn_ens.module(1).eval(), back.module(1).eval()
    with torch.no_grad():
        torch.testing.assert_close(m0(x), m1(x))


def test_user_module_storage_needs_the_factory(digits, tmp_path):
    from sgdbayes.storage import load_result, save_result

    factory = functools.partial(ConvNet, channels=(3,))
    res = train_ensemble(EnsembleConfig(model=factory, batch_size=32, steps=4, seeds=2, progress=False), digits)
    assert res.spec.kind == "module"
    p = save_result(res, tmp_path / "mine")
    with pytest.raises(ValueError, match="model="):
        load_result(p)
    back = load_result(p, model=factory)
    assert torch.equal(back.w_final, res.w_final)


def test_config_names_the_data_actually_used(digits):
    """Issue 11 item 7: an ensemble trained on data passed in records that data, so that
    estimate_llc(result) without data= rebuilds the same set (not the config's default)."""
    data = load_dataset("moons", n=64, n_test=16, noise=0.1, seed=4)
    res = train_ensemble(EnsembleConfig(widths=(None, 8, None), batch_size=16, steps=8, seeds=2, progress=False), data)
    assert res.config.dataset == "moons" and res.config.dataset_options == dict(n=64, n_test=16, noise=0.1, seed=4)
    a = estimate_llc(res, config=LLCConfig(num_chains=2, num_draws=5, batch_size=16), progress=False)
    b = estimate_llc(res, data, config=LLCConfig(num_chains=2, num_draws=5, batch_size=16), progress=False)
    np.testing.assert_array_equal(a.init_loss, b.init_loss)
    res2 = train_ensemble(EnsembleConfig(model=build_model("cnn", channels=(3,)), batch_size=16, steps=2, seeds=2,
                                         progress=False), (digits.x_train[:64], digits.y_train[:64]))
    assert res2.data_source is None
    with pytest.raises(ValueError, match="pass data="):
        estimate_llc(res2, config=LLC, progress=False)


def test_seeds_chunked_by_memory_budget_give_the_same_result(digits):
    fam = build_model("cnn", channels=(4,))
    base = dict(model=fam, batch_size=32, steps=6, seeds=4, progress=False, workers=1, dtype="float64")
    one = train_ensemble(EnsembleConfig(**base), digits)
    tiny = train_ensemble(EnsembleConfig(**base, memory_budget_bytes=1), digits)
    assert one.meta["chunk_size"] == 4 and tiny.meta["chunk_size"] == 1
    torch.testing.assert_close(one.w_final, tiny.w_final, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["resnet", "transformer"])
def test_llc_and_posterior_on_resnet_and_transformer_ensembles(kind, digits):
    if kind == "resnet":
        fam, data = build_model("resnet", channels=(3, 4), blocks=1, batchnorm=True), digits
    else:
        fam = build_model("transformer", vocab=5, d_model=8, n_heads=2, n_layers=1, d_ff=8, max_len=6)
        data = load_dataset("sequences", p=5, length=6, n=64, n_test=8)
    res = train_ensemble(EnsembleConfig(model=fam, batch_size=16, steps=6, seeds=2, progress=False), data)
    r = estimate_llc(res, config=LLC, progress=False)
    assert np.isfinite(r.llc).all() and r.loss_traces.shape == (2, 2, 10)
    p = sample_posterior(res.w_final, spec=res.spec, data=data, state=res.state, progress=False,
                         config=PosteriorConfig(num_samples=2, num_burnin_steps=1, num_steps_bw_samples=1, batch_size=16))
    assert np.isfinite(p.loss_traces).all()
    probs = class_probabilities(res.spec, res.w_final, data.x_test[:3], res.state)
    assert probs.shape[-1] == (9 if kind == "resnet" else 4)


def _plain_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 64, 10))


@pytest.mark.parametrize("make", [_plain_cnn, functools.partial(ConvNet, (4, 6), bias=True),
                                  functools.partial(ConvNet, (4, 6), batchnorm=True)],
                         ids=["conv-relu-linear", "convnet-pool", "convnet-batchnorm"])
def test_module_potential_lowered_rows_equal_the_vmap_rows(make, digits):
    """Users' modules built from the batched layers run their rows through them (grouped
    convolutions, the compiled first conv + pool): losses and gradients equal the torch.func
    rows in float64, on minibatches and on the full data, for modules and for snapshots whose
    untracked tensors are partly shared, partly per snapshot."""
    from sgdbayes.sampling import ModulePotential, sampling_data

    torch.manual_seed(0)
    mods = [make().double().eval() for _ in range(3)]
    for m in mods:                                         # non-trivial running statistics
        for b in m.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
    data = sampling_data((digits.x_train[:150].double(), digits.y_train[:150]))
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 150, (6, 16), generator=g)

    def agree(pot, w):
        ref = __import__("copy").copy(pot)
        ref._lowered = None
        assert pot.path == "lowered" and ref.path == "vmap"
        for i in (idx, None):
            (la, ga), (lb, gb) = pot.loss_and_grad(w, i), ref.loss_and_grad(w, i)
            torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-11)

    pot = ModulePotential(mods, data)
    agree(pot, pot.w_star.repeat_interleave(2, 0) + 1e-2 * torch.randn(6, pot.n_params, generator=g,
                                                                         dtype=torch.float64))
    names = [n for n, _ in mods[0].named_parameters()]
    tracked, untracked = names[-2:], names[:-2]
    state = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in mods]
    fixed = [{n: (state[0][n] if j % 2 == 0 else st[n]).detach() for j, n in enumerate(untracked)}
             | {n: b for n, b in mods[k].named_buffers()} for k, st in enumerate(state)]
    snaps = ModulePotential.of_snapshots(mods[0], tracked, [tuple(state[0][n].shape) for n in tracked], fixed,
                                         data, None)
    w = torch.stack([torch.cat([st[n].detach().reshape(-1) for n in tracked]) for st in state])
    agree(snaps, w.repeat_interleave(2, 0))
