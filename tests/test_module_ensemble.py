"""Any nn.Module as a seed ensemble: seed i trained in the batch == the plain module trained
alone with torch.optim (same init, same minibatch order, same dropout masks), for a CNN with
BatchNorm, a ResNet block stack and the transformer; independent of K, chunks and workers."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdbayes.data import load_dataset
from sgdbayes.engine import EnsembleConfig, batch_indices, train_ensemble
from sgdbayes.models import ModuleSpec, SeedGenerators, build_model
from sgdbayes.models.cnn import ConvNet
from sgdbayes.models.lowering import dropout_mask


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", images=True, dtype=torch.float64)
    keep = torch.arange(160)
    return type(d)(d.x_train[keep], d.y_train[keep], d.x_test[:40], d.y_test[:40], d.name, 10, d.meta, d.source)


@pytest.fixture(scope="module")
def seqs():
    return load_dataset("sequences", p=5, length=6, n=48, n_test=16, seed=1)


FAMILIES = {
    "cnn": dict(kind="cnn", channels=(4, 6), bias=True),    # first stage by the compiled conv + pool kernel
    "cnn_bn": dict(kind="cnn", channels=(4, 6), batchnorm=True),
    "resnet": dict(kind="resnet", channels=(4, 6), blocks=1, batchnorm=True),
    "transformer": dict(kind="transformer", vocab=5, d_model=8, n_heads=2, n_layers=1, d_ff=12, max_len=6),
}
OPTS = {
    "sgd": dict(optimizer="sgd", lr=0.1),
    "sgd_momentum_wd": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": dict(optimizer="adam", lr=0.01, weight_decay=1e-3),
}


class _RefDropout(nn.Module):
    """nn.Dropout with sgdbayes' per-seed mask rule (the reference's masks)."""

    def __init__(self, p, rng):
        super().__init__()
        self.p, self.rng = p, rng

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(self.rng.uniform(x.shape, dtype=x.dtype)[0], self.p)


def _swap_dropout(model: nn.Module, rng) -> None:
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(mod, name, _RefDropout(child.p, rng))


def reference_run(cfg: EnsembleConfig, factory, data, seed: int):
    """Seed ``seed`` alone: nn.Module + torch.optim, same init, batch order and masks."""
    torch.manual_seed(seed)
    model = factory().double()
    _swap_dropout(model, SeedGenerators([seed], cfg.batch_stream))
    w0 = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
    idx = torch.from_numpy(batch_indices(seed, data.n_train, cfg.batch_size, cfg.steps, cfg.batch_stream))
    losses, disps = [], []
    model.train()
    for t in range(cfg.steps):
        xb, yb = data.x_train[idx[t]], data.y_train[idx[t]]
        out = model(xb)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        disps.append((nn.utils.parameters_to_vector(model.parameters()).detach() - w0).norm().item())
    return model, np.array(losses), np.array(disps)


def _cfg(family, **kw):
    base = dict(model=family, batch_size=16, steps=12, seeds=3, record_every=4, record_log_points=4,
                dtype="float64", progress=False)
    base.update(kw)
    return EnsembleConfig(**base)


@pytest.mark.parametrize("opt", sorted(OPTS))
@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_seed_matches_plain_module(fam, opt, digits, seqs):
    desc = dict(FAMILIES[fam])
    family = build_model(desc.pop("kind"), **desc)
    data = seqs if fam == "transformer" else digits
    cfg = _cfg(family, **OPTS[opt])
    res = train_ensemble(cfg, data)
    assert res.spec.backend == ("vmap" if fam == "transformer" else "lowered")
    for i in (0, 2):
        model, losses, disps = reference_run(cfg, family.factory, data, int(res.seeds[i]))
        w_ref = nn.utils.parameters_to_vector(model.parameters()).detach()
        torch.testing.assert_close(res.w_final[i], w_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(res.displacement[i], disps[res.steps - 1], rtol=1e-9, atol=1e-12)
        prev = np.concatenate([[0], res.steps[:-1]])
        np.testing.assert_allclose(res.train_loss[i], [losses[a:b].mean() for a, b in zip(prev, res.steps)],
                                   rtol=1e-9)
        for name, buf in model.named_buffers():   # BatchNorm running statistics, per seed
            torch.testing.assert_close(res.state[name][i], buf.to(res.state[name].dtype), rtol=1e-9, atol=1e-12)
        model.eval()
        with torch.no_grad():
            z = model(data.x_test)
        ref = F.cross_entropy(z.reshape(-1, z.shape[-1]), data.y_test.reshape(-1)).item()
        assert res.final.test_loss[i] == pytest.approx(ref, rel=1e-9)
        rebuilt = res.module(i)
        torch.testing.assert_close(nn.utils.parameters_to_vector(rebuilt.parameters()), res.w_final[i])
        rebuilt.eval()
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(data.x_test), z, rtol=1e-10, atol=1e-12)
    assert torch.equal(res.module(1, initial=True).state_dict()[next(iter(model.state_dict()))].cpu(),
                       _init_module(family.factory, int(res.seeds[1])).state_dict()[next(iter(model.state_dict()))])


def _init_module(factory, seed):
    torch.manual_seed(seed)
    return factory().double()


def test_dropout_masks_are_per_seed_and_match_the_reference(digits):
    """CNN with dropout: seed i equals the plain module with the same per-seed masks, in both
    executors, and does not depend on K or on the chunking."""
    factory = functools.partial(ConvNet, channels=(4, 6), dropout=0.3)
    res = {}
    for backend in ("lowered", "vmap"):
        fam = ModuleSpec(factory, backend=backend)
        assert fam.stochastic and fam.backend == backend
        cfg = _cfg(fam, seeds=(0, 1, 2, 3), steps=8)
        res[backend] = train_ensemble(cfg, digits)
        model, _, _ = reference_run(cfg, factory, digits, 2)
        torch.testing.assert_close(res[backend].w_final[2], nn.utils.parameters_to_vector(model.parameters()).detach(),
                                   rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(res["lowered"].w_final, res["vmap"].w_final, rtol=1e-10, atol=1e-12)
    alone = train_ensemble(_cfg(ModuleSpec(factory), seeds=(2,), steps=8), digits)
    torch.testing.assert_close(alone.w_final[0], res["lowered"].w_final[2], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("fam", ["cnn", "cnn_bn", "transformer"])
def test_seed_result_independent_of_K_chunks_and_workers(fam, digits, seqs):
    desc = dict(FAMILIES[fam])
    family = build_model(desc.pop("kind"), **desc)
    data = seqs if fam == "transformer" else digits
    one = train_ensemble(_cfg(family, seeds=(5,), momentum=0.9), data)
    runs = [train_ensemble(_cfg(family, seeds=tuple(range(8)), momentum=0.9, **kw), data)
            for kw in (dict(workers=1), dict(chunk_size=3, workers=1), dict(chunk_size=3, workers=2))]
    for r in runs:
        torch.testing.assert_close(r.w_final[5], one.w_final[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r.displacement[5], one.displacement[0], rtol=1e-10)
        for name in r.state or {}:
            torch.testing.assert_close(r.state[name][5], one.state[name][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(runs[0].w_final, runs[2].w_final, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(runs[0].w_final[0], runs[0].w_final[1])
