import functools

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


_convpool_built = pytest.mark.skipif(
    __import__("sgdbayes.models.convpool", fromlist=["_FNS"])._FNS is None,
    reason="the compiled kernels are not built (or SGDBAYES_KERNEL=numpy)")


@_convpool_built
@pytest.mark.parametrize("cin,cout,hw,bias,relu", [(1, 5, (8, 8), False, True), (3, 12, (6, 4), True, True),
                                                   (2, 8, (4, 6), True, False), (1, 16, (2, 2), False, False)])
def test_fused_conv_pool_equals_conv_relu_max_pool2d(cin, cout, hw, bias, relu):
    """The compiled first-layer kernel (3x3 conv, padding 1 -> 2x2 max-pool -> ReLU) gives
    conv2d -> max_pool2d -> relu's values and weight/bias gradients in float64, ties included
    (integer inputs and weights make equal window entries common) and NaN propagated as
    max_pool2d does; channel counts that are not a multiple of its 8-lane blocks."""
    from sgdbayes.models.convpool import ConvPool

    g = torch.Generator().manual_seed(cin * 100 + cout)
    k, B = 3, 5
    x = torch.randint(-1, 2, (B, k * cin, *hw), generator=g).double()
    w = torch.randint(-1, 2, (k, cout, cin, 3, 3), generator=g).double().requires_grad_(True)
    b = torch.randint(-1, 2, (k, cout), generator=g).double().requires_grad_(True) if bias else None
    params = [w] + ([b] if bias else [])
    up = torch.randn(B, k * cout, hw[0] // 2, hw[1] // 2, dtype=torch.float64, generator=g)

    def ref(x):
        z = F.max_pool2d(F.conv2d(x, w.reshape(-1, cin, 3, 3), None if b is None else b.reshape(-1), padding=1,
                                  groups=k), 2)
        return torch.relu(z) if relu else z

    a, c = ref(x), ConvPool.apply(x, w, b, relu)
    assert torch.equal(a, c)
    for u, v in zip(torch.autograd.grad((a * up).sum(), params), torch.autograd.grad((c * up).sum(), params)):
        torch.testing.assert_close(v, u, rtol=1e-12, atol=1e-12)
    x[1, :, 0, 0] = float("nan")
    torch.testing.assert_close(ConvPool.apply(x, w, b, relu), ref(x), rtol=0, atol=0, equal_nan=True)


@_convpool_built
def test_fused_conv_pool_model_j_does_not_depend_on_the_models_beside_it():
    """float32: model j's outputs and gradients are bit for bit the same alone and among 5."""
    from sgdbayes.models.convpool import ConvPool

    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5 * 2, 8, 8, generator=g)
    w = torch.randn(5, 12, 2, 3, 3, generator=g, requires_grad=True)
    up = torch.randn(7, 5 * 12, 4, 4, generator=g)
    out = ConvPool.apply(x, w, None, True)
    (gw,) = torch.autograd.grad((out * up).sum(), w)
    w3 = w.detach()[3:4].clone().requires_grad_(True)
    out3 = ConvPool.apply(x[:, 6:8].contiguous(), w3, None, True)
    (gw3,) = torch.autograd.grad((out3 * up[:, 36:48]).sum(), w3)
    assert torch.equal(out3, out[:, 36:48]) and torch.equal(gw3[0], gw[3])


@_convpool_built
def test_lowered_convnet_takes_the_fused_first_stage_and_equals_the_layers(monkeypatch):
    """A lowered ConvNet runs its first conv -> ReLU -> max-pool (on data inputs) and its final
    ReLU -> global average pool through the compiled kernels and gets the numbers the layers
    give one by one (float64)."""
    from sgdbayes.models import ModuleSpec, convpool
    from sgdbayes.models.cnn import ConvNet

    spec = ModuleSpec(lambda: ConvNet((4, 6), in_channels=1, n_classes=3, bias=True).double())
    w, _ = spec.initialize([0, 1, 2], dtype=torch.float64)
    x = torch.randn(3, 5, 1, 8, 8, dtype=torch.float64)
    calls = []
    for fn in (convpool.ConvPool, convpool.ReluMean):
        monkeypatch.setattr(fn, "apply", functools.partial(lambda f, name, *a: calls.append(name) or f(*a),
                                                           fn.apply, fn.__name__))

    def run():
        wr = w.clone().requires_grad_(True)
        out = spec.apply(wr, x, train=True, shared=False, executor=spec.executor())
        return out, torch.autograd.grad(out.square().sum(), wr)[0]

    fused = run()
    assert calls == ["ConvPool", "ReluMean"]
    monkeypatch.setattr(convpool, "_FNS", None)
    layers = run()
    assert calls == ["ConvPool", "ReluMean"]
    for a, b in zip(fused, layers):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@_convpool_built
def test_fused_relu_global_average_pool_equals_the_layers():
    """ReLU -> AdaptiveAvgPool2d(1) by the one-pass kernel: the layers' values and input
    gradient (float64; zeros and NaN at the ReLU's edge as torch.relu / threshold_backward)."""
    from sgdbayes.models.convpool import ReluMean

    g = torch.Generator().manual_seed(5)
    h = torch.randint(-2, 3, (4, 6, 3, 5), generator=g).double()
    h[0, 0, 0, 0] = float("nan")
    up = torch.randn(4, 6, 1, 1, dtype=torch.float64, generator=g)
    a_in, b_in = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    a = F.adaptive_avg_pool2d(torch.relu(a_in), 1)
    b = ReluMean.apply(b_in)
    torch.testing.assert_close(b, a, rtol=1e-15, atol=0, equal_nan=True)
    (ga,), (gb,) = torch.autograd.grad((a * up).sum(), a_in), torch.autograd.grad((b * up).sum(), b_in)
    torch.testing.assert_close(gb, ga, rtol=1e-15, atol=0, equal_nan=True)
    assert bool((gb == 0).any()) and bool(gb.isnan().sum() == 0)
