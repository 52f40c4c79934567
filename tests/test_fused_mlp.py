"""The hand-written stacked MLP kernel (sgdbayes._fused_mlp) against autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sgdbayes._fused_mlp as fm
from sgdbayes.models import MLPSpec


def _reference(spec, w, x, y):
    """Per-model mean cross-entropy, its gradient (autograd) and correct counts."""
    wg = w.clone().requires_grad_(True)
    z = spec.forward(wg, x)
    C = spec.widths[-1]
    loss = F.cross_entropy(z.reshape(-1, C), y.reshape(-1), reduction="none").view(y.shape).mean(1)
    (g,) = torch.autograd.grad(loss.sum(), wg)
    return loss.detach(), g, (z.detach().argmax(2) == y).sum(1)


@pytest.mark.parametrize("widths", [(5, 3), (4, 7, 2), (2, 16, 8, 3), (3, 8, 8, 8, 4)])
@pytest.mark.parametrize("block_bytes", [1, 3 * 8 * 24 * 9, 2 ** 30])  # 1 model, 3 models, all at once
def test_loss_grad_and_accuracy_equal_autograd(widths, block_bytes, mlp_kernel, monkeypatch):
    monkeypatch.setattr(fm, "_CPU_BLOCK_BYTES", block_bytes)
    spec = MLPSpec(widths)
    k, B = 7, 24
    g = torch.Generator().manual_seed(0)
    w = spec.init(list(range(k))).double()
    x = torch.randn(k, B, widths[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, widths[-1], (k, B), generator=g)
    lay = fm.AugmentedLayout(spec)
    P = lay.views(torch.empty(k * spec.n_params, dtype=torch.float64), k)
    G = lay.views(torch.empty(k * spec.n_params, dtype=torch.float64), k)
    lay.unpack(w, P)
    assert torch.equal(lay.pack(P), w)                    # the layout round-trips exactly
    kern = fm.FusedMLP(spec, k, B, "cpu", torch.float64)
    assert 1 <= kern.block <= k
    assert (kern.c is not None) == (mlp_kernel == "c")
    xa = fm.augment_inputs(x.reshape(-1, widths[0])).view(k, B, -1)
    loss, correct = kern.loss_and_grad(P, G, xa, y)
    ref_loss, ref_g, ref_correct = _reference(spec, w, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lay.pack(G), ref_g, rtol=1e-10, atol=1e-12)
    assert torch.equal(correct, ref_correct)
    loss2, none = kern.loss_and_grad(P, G, xa, y, accuracy=False)
    assert none is None and torch.equal(loss2, loss)


def test_ties_count_like_argmax(mlp_kernel):
    """Accuracy uses the first maximal class, as argmax does (all-zero logits: class 0)."""
    spec = MLPSpec((2, 2))
    w = torch.zeros(1, spec.n_params, dtype=torch.float64)
    lay = fm.AugmentedLayout(spec)
    P = lay.views(torch.empty(spec.n_params, dtype=torch.float64), 1)
    G = lay.views(torch.empty(spec.n_params, dtype=torch.float64), 1)
    lay.unpack(w, P)
    y = torch.tensor([[0, 1, 1, 0]])
    xa = fm.augment_inputs(torch.randn(4, 2, dtype=torch.float64)).view(1, 4, 3)
    loss, correct = fm.FusedMLP(spec, 1, 4, "cpu", torch.float64).loss_and_grad(P, G, xa, y)
    assert correct.tolist() == [2]
    assert loss.item() == pytest.approx(np.log(2))


def test_layout_rejects_batchnorm():
    with pytest.raises(ValueError, match="batch norm"):
        fm.AugmentedLayout(MLPSpec((2, 4, 2), batchnorm=True))


def test_c_kernel_is_built():
    """The fast path is the one the studies run: the install must have built it (it needs a C
    compiler). Set SGDBAYES_KERNEL=numpy to run the test suite on the numpy/torch path."""
    import os
    import shutil
    import sysconfig

    if os.environ.get("SGDBAYES_KERNEL", "").lower() == "numpy":
        pytest.skip("SGDBAYES_KERNEL=numpy")
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}): sgdbayes runs its numpy/torch path")
    assert fm.c_kernel_available(), (f"a C compiler ({cc}) is present but sgdbayes/_ckernels.c was not built: "
                                     "reinstall (pip install -e .) and read the build log")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_kernel_equals_numpy_path(dtype, monkeypatch):
    """Same numbers from both implementations on a moons-sized MLP, incl. a model whose
    weights are non-finite (NaN loss in both; the others unaffected)."""
    if not fm.c_kernel_available():
        pytest.skip("C kernel not built")
    spec = MLPSpec((2, 64, 64, 2))
    k, B = 9, 128
    g = torch.Generator().manual_seed(1)
    w = spec.init(list(range(k))).to(dtype)
    w[4, 7] = float("nan")
    x = torch.randn(k * B, 2, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (k, B), generator=g)
    xa = fm.augment_inputs(x).view(k, B, 3)
    out = {}
    for name in ("c", "numpy"):
        if name == "numpy":
            monkeypatch.setattr(fm, "_C", None)
        lay = fm.AugmentedLayout(spec)
        P = lay.views(torch.empty(k * spec.n_params, dtype=dtype), k)
        G = lay.views(torch.empty(k * spec.n_params, dtype=dtype), k)
        lay.unpack(w, P)
        loss, correct = fm.FusedMLP(spec, k, B, "cpu", dtype).loss_and_grad(P, G, xa, y)
        out[name] = loss, lay.pack(G), correct
    (lc, gc, cc), (ln, gn, cn) = out["c"], out["numpy"]
    ok = torch.arange(k) != 4
    assert torch.isnan(lc[4]) and torch.isnan(ln[4])
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(lc[ok], ln[ok], **tol)
    torch.testing.assert_close(gc[ok], gn[ok], **tol)
    assert torch.equal(cc[ok], cn[ok])


def test_torch_matmul_path_runs_like_the_others():
    """The path used on CUDA (torch.matmul into preallocated buffers, no numpy, no C),
    exercised on the CPU through a dtype numpy does not take (bfloat16): same loss and
    gradient as the float32 result up to bfloat16 precision."""
    spec = MLPSpec((3, 16, 8, 2))
    k, B = 5, 32
    g = torch.Generator().manual_seed(2)
    w = spec.init(list(range(k)))
    x = torch.randn(k * B, 3, generator=g)
    y = torch.randint(0, 2, (k, B), generator=g)
    ref_loss, ref_g, _ = _reference(spec, w.double(), x.double().view(k, B, 3), y)
    lay = fm.AugmentedLayout(spec)
    dt = torch.bfloat16
    P = lay.views(torch.empty(k * spec.n_params, dtype=dt), k)
    G = lay.views(torch.empty(k * spec.n_params, dtype=dt), k)
    lay.unpack(w.to(dt), P)
    kern = fm.FusedMLP(spec, k, B, "cpu", dt)
    assert kern.c is None and not kern.numpy
    loss, correct = kern.loss_and_grad(P, G, fm.augment_inputs(x.to(dt)).view(k, B, 4), y)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(lay.pack(G).double(), ref_g, rtol=0.1, atol=2e-2)
    assert correct.shape == (k,)
