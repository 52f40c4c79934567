import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st

from sgdbayes.models import MLPSpec


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), bn=st.booleans(),
       seed=st.integers(0, 2 ** 31 - 1))
def test_layout_roundtrip_and_init(widths, bn, seed):
    spec = MLPSpec(tuple(widths), batchnorm=bn)
    w = spec.init([seed, seed + 1], dtype=torch.float64)
    assert w.shape == (2, spec.n_params)
    torch.manual_seed(seed)
    ref = spec._build_module().double()
    assert torch.equal(w[0], torch.nn.utils.parameters_to_vector(ref.parameters()))
    m = spec.to_module(w[1])
    assert sum(p.numel() for p in m.parameters()) == spec.n_params
    assert torch.equal(torch.nn.utils.parameters_to_vector(m.parameters()), w[1])
    assert torch.equal(spec.from_module(m), w[1])


def test_init_leaves_global_rng_alone():
    torch.manual_seed(5); a = torch.rand(3)
    torch.manual_seed(5); MLPSpec((2, 3, 2)).init([1, 2]); b = torch.rand(3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bn", [False, True])
def test_forward_loss_grad_match_modules(bn):
    spec = MLPSpec((3, 7, 5, 4), batchnorm=bn)
    K, B = 3, 9
    w = spec.init(range(K), dtype=torch.float64).requires_grad_(True)
    x = torch.randn(K, B, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (K, B))
    bn_state = spec.init_bn_state(K, dtype=torch.float64)
    loss = spec.loss(w, x, y, bn_state=bn_state)
    (g,) = torch.autograd.grad(loss.sum(), w)
    for k in range(K):
        m = spec.to_module(w[k].detach()); m.train()
        lk = F.cross_entropy(m(x[k]), y[k]); lk.backward()
        gk = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
        assert loss[k].item() == pytest.approx(lk.item(), rel=1e-12)
        assert torch.allclose(g[k], gk, rtol=1e-10, atol=1e-12)   # each model's own gradient
        if bn:
            assert torch.allclose(bn_state[k], spec.bn_state_from_module(m), atol=1e-12)
            m.eval()
            z_eval = spec.forward(w.detach(), x, bn_state=bn_state, train=False)
            assert torch.allclose(z_eval[k], m(x[k]), atol=1e-12)


def test_shared_x_equals_expanded():
    spec = MLPSpec((2, 4, 3))
    w = spec.init([0, 1])
    x = torch.randn(5, 2)
    assert torch.allclose(spec.forward(w, x), spec.forward(w, x.expand(2, 5, 2)))


@pytest.mark.parametrize("widths", [(2, 0, 2), (2, -1, 2), (0, 3), (2,), (2, 2.5, 2)])
def test_bad_widths(widths):
    with pytest.raises(ValueError, match="width"):
        MLPSpec(widths)


def test_bad_shapes():
    spec = MLPSpec((2, 3, 2), batchnorm=True)
    w = spec.init([0])
    with pytest.raises(ValueError, match="w must be"):
        spec.forward(w[:, :-1], torch.zeros(4, 2))
    with pytest.raises(ValueError, match="x must be"):
        spec.forward(w, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="bn_state"):
        spec.forward(w, torch.zeros(4, 2), train=False)
    with pytest.raises(ValueError, match="K > 0"):
        spec.init([])


def test_lowered_2x2_max_pool_equals_max_pool2d_with_ties_and_after_relu():
    """The lowered 2x2 max-pool (strided maxima; gradient to each window's first maximum) and the
    ReLU/MaxPool2d swap give max_pool2d's values and gradients exactly, ties included (zeros
    after the ReLU, repeated positive values)."""
    from sgdbayes.models.lowering import BatchedContext, lower

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 8, 10, dtype=torch.float64, generator=g)
    x[:, :, :4, :4] = 1.5                      # ties at a positive value
    x[:, :2] = 0.0                             # ties at zero
    up = torch.randn(5, 6, 4, 5, dtype=torch.float64, generator=g)
    for layers in ([nn.MaxPool2d(2)], [nn.ReLU(), nn.MaxPool2d(2)], [nn.ReLU(), nn.MaxPool2d(2, 2), nn.ReLU()]):
        ref_in, low_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        seq = nn.Sequential(*layers)
        ref = seq(ref_in)
        low = lower(seq)(BatchedContext(1, 5, {}, None, True, None), low_in)
        assert torch.equal(low, ref)
        (ga,), (gb,) = torch.autograd.grad(ref, ref_in, up), torch.autograd.grad(low, low_in, up)
        assert torch.equal(ga, gb)
