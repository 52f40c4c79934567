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
def test_loss_grad_and_accuracy_equal_autograd(widths, block_bytes, monkeypatch):
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
    xa = fm.augment_inputs(x.reshape(-1, widths[0])).view(k, B, -1)
    loss, correct = kern.loss_and_grad(P, G, xa, y)
    ref_loss, ref_g, ref_correct = _reference(spec, w, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lay.pack(G), ref_g, rtol=1e-10, atol=1e-12)
    assert torch.equal(correct, ref_correct)
    loss2, none = kern.loss_and_grad(P, G, xa, y, accuracy=False)
    assert none is None and torch.equal(loss2, loss)


def test_ties_count_like_argmax():
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
