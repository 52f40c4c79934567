"""Batched layers: k models of one architecture evaluated as one computation, layer by layer.

The fast path of :class:`sgdbayes.models.module.ModuleSpec` for modules built from the
layers registered here (``nn.Sequential`` of ``Conv2d``, ``Linear``, ``ReLU``,
``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``BatchNorm1d/2d``,
``Dropout``, ``Identity``, and the blocks families register with
:func:`register_lowering`). Activations of all k models share one batch axis of
``k * B`` rows (model-major); parameters are stacked ``[k, *shape]``.

Convolutions are batched matrix products over the models (docs/models.md, "speed"):
the input is read channels-last, its patches unfolded once per minibatch
(``cols [k, B*H'*W', kh*kw*C]``, a strided view copied once) and multiplied by each
model's kernel ``[kh*kw*C, C_out]``; the backward is two more products per model
(``dW = colsᵀ dY``, ``dcols = dY Wᵀ``) and a fold of ``dcols`` back onto the input.
Everything else is autograd on ordinary torch ops. Per-model numbers equal those of
the plain module (tested to float64 round-off against ``nn.Module`` training).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._linalg import bmm

__all__ = ["BatchedContext", "lower", "register_lowering", "dropout_mask", "NotLowerable"]


class NotLowerable(TypeError):
    """The module holds a layer with no batched implementation (the vmap path is used)."""


class BatchedContext:
    """What a lowered layer sees: ``k`` models, per-model batch ``B``, their stacked
    parameters and state by full name, the mode, and the per-seed generators."""

    def __init__(self, k: int, B: int, params: dict, state: Optional[dict], train: bool, rng):
        self.k, self.B, self.params, self.state, self.train, self.rng = k, B, params, state, train, rng

    def mask(self, shape, p: float, like: Tensor) -> Tensor:
        """Dropout mask ``[k * B, ...]`` from the per-seed generators (:func:`dropout_mask`)."""
        u = self.rng.uniform(shape, dtype=like.dtype, device=like.device)
        return dropout_mask(u, p).reshape(self.k * shape[0], *shape[1:])


def dropout_mask(u: Tensor, p: float) -> Tensor:
    """The dropout rule of sgdbayes: keep where ``u >= p`` (u uniform in [0, 1)), scaled by
    ``1 / (1 - p)`` (the distribution of ``nn.Dropout``; the numbers come from the per-seed
    generators of :class:`sgdbayes.models.protocol.SeedGenerators`)."""
    return (u >= p).to(u.dtype) * (1.0 / (1.0 - p))


Lowered = Callable[[BatchedContext, Tensor], Tensor]
_LOWERINGS: dict[type, Callable[[nn.Module, str], Lowered]] = {}


def register_lowering(cls: type):
    """Register ``fn(module, prefix) -> lowered(ctx, h) -> h`` as the batched version of
    modules of type ``cls`` (exact type; ``prefix`` is the module's name + ".")."""
    def deco(fn):
        _LOWERINGS[cls] = fn
        return fn
    return deco


def lower(module: nn.Module, prefix: str = "") -> Lowered:
    """The batched version of ``module``; :class:`NotLowerable` names the first layer
    without one."""
    fn = _LOWERINGS.get(type(module))
    if fn is None:
        raise NotLowerable(f"no batched implementation of {type(module).__name__} "
                           f"({prefix.rstrip('.') or 'the model'})")
    return fn(module, prefix)


# ------------------------------------------------------------------------ containers, pointwise
@register_lowering(nn.Sequential)
def _sequential(m: nn.Sequential, prefix: str) -> Lowered:
    named = list(m.named_children())
    parts, i = [], 0
    while i < len(named):
        name, child = named[i]
        nxt = named[i + 1][1] if i + 1 < len(named) else None
        if type(child) is nn.Conv2d and type(nxt) is nn.ReLU:   # fused: ReLU inside the convolution
            parts.append(_conv2d(child, f"{prefix}{name}.", relu=True))
            i += 2
            continue
        parts.append(lower(child, f"{prefix}{name}."))
        i += 1

    def run(ctx, h):
        for part in parts:
            h = part(ctx, h)
        return h
    return run


@register_lowering(nn.Identity)
def _identity(m, prefix):
    return lambda ctx, h: h


@register_lowering(nn.ReLU)
def _relu(m, prefix):
    return lambda ctx, h: torch.relu(h)


@register_lowering(nn.Flatten)
def _flatten(m: nn.Flatten, prefix):
    if m.start_dim != 1 or m.end_dim != -1:
        raise NotLowerable(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}) ({prefix.rstrip('.')})")
    return lambda ctx, h: h.flatten(1)


@register_lowering(nn.Dropout)
def _dropout(m: nn.Dropout, prefix):
    p = float(m.p)

    def run(ctx, h):
        if not ctx.train or p == 0.0:
            return h
        shape = (ctx.B, *h.shape[1:])
        return h * ctx.mask(shape, p, h)
    return run


@register_lowering(nn.MaxPool2d)
def _maxpool(m: nn.MaxPool2d, prefix):
    if m.return_indices:
        raise NotLowerable(f"MaxPool2d(return_indices=True) ({prefix.rstrip('.')})")
    return lambda ctx, h: F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


@register_lowering(nn.AvgPool2d)
def _avgpool(m: nn.AvgPool2d, prefix):
    return lambda ctx, h: F.avg_pool2d(h, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                       m.divisor_override)


@register_lowering(nn.AdaptiveAvgPool2d)
def _adaptive_avgpool(m: nn.AdaptiveAvgPool2d, prefix):
    return lambda ctx, h: F.adaptive_avg_pool2d(h, m.output_size)


# ------------------------------------------------------------------------ linear
@register_lowering(nn.Linear)
def _linear(m: nn.Linear, prefix):
    wn, bn_ = prefix + "weight", (prefix + "bias" if m.bias is not None else None)

    def run(ctx, h):
        W = ctx.params[wn]                                   # [k, out, in]
        x = h.reshape(ctx.k, -1, h.shape[-1])                # [k, B*..., in]
        y = torch.bmm(x, W.transpose(1, 2)) if bn_ is None else torch.baddbmm(
            ctx.params[bn_].unsqueeze(1), x, W.transpose(1, 2))
        return y.reshape(*h.shape[:-1], W.shape[1])
    return run


# ------------------------------------------------------------------------ batch norm
def _batchnorm(m: nn.modules.batchnorm._BatchNorm, prefix: str, dims: tuple[int, ...]):
    names = {n: prefix + n for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    eps, momentum = float(m.eps), m.momentum
    affine, track = m.affine, m.track_running_stats

    def run(ctx, h):
        k = ctx.k
        v = h.reshape(k, ctx.B, *h.shape[1:])                # [k, B, C, ...]
        red = tuple(d + 1 for d in dims)                     # batch and spatial axes of [k, B, C, ...]
        shape = (k, 1, h.shape[1]) + (1,) * (h.dim() - 2)
        use_batch = ctx.train or not track
        if use_batch:
            mean = v.mean(dim=red)
            var = v.var(dim=red, unbiased=False)
            if ctx.train and track:
                n = v.numel() // (k * h.shape[1])
                _update_running(ctx.state, names, mean.detach(), var.detach() * (n / max(n - 1, 1)), momentum)
        else:
            mean, var = ctx.state[names["running_mean"]], ctx.state[names["running_var"]]
        out = (v - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
        if affine:
            out = out * ctx.params[names["weight"]].reshape(shape) + ctx.params[names["bias"]].reshape(shape)
        return out.reshape(h.shape)
    return run


@torch.no_grad()
def _update_running(state, names, mean, var_unbiased, momentum) -> None:
    """``nn.BatchNorm``'s running-statistics update, per model (momentum None = cumulative)."""
    nbt = state[names["num_batches_tracked"]]
    nbt.add_(1)
    rm, rv = state[names["running_mean"]], state[names["running_var"]]
    if momentum is None:
        f = (1.0 / nbt.to(rm.dtype)).reshape(-1, *([1] * (rm.dim() - 1)))
        rm.mul_(1 - f).add_(f * mean)
        rv.mul_(1 - f).add_(f * var_unbiased)
    else:
        rm.mul_(1 - momentum).add_(mean, alpha=momentum)
        rv.mul_(1 - momentum).add_(var_unbiased, alpha=momentum)


@register_lowering(nn.BatchNorm2d)
def _bn2d(m, prefix):
    return _batchnorm(m, prefix, (0, 2, 3))   # batch axes of [k, B, C, H, W] after the k axis


@register_lowering(nn.BatchNorm1d)
def _bn1d(m, prefix):
    def run(ctx, h):
        dims = (0,) if h.dim() == 2 else (0, 2)
        return _batchnorm(m, prefix, dims)(ctx, h)
    return run


# ------------------------------------------------------------------------ convolution
@register_lowering(nn.Conv2d)
def _conv2d(m: nn.Conv2d, prefix, relu: bool = False):
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise NotLowerable(f"Conv2d with groups/dilation/padding_mode/string padding ({prefix.rstrip('.')})")
    wn, bn_ = prefix + "weight", (prefix + "bias" if m.bias is not None else None)
    stride, padding = tuple(m.stride), tuple(m.padding)

    def run(ctx, h):
        b = None if bn_ is None else ctx.params[bn_]
        need_dx = h.requires_grad
        return BatchedConv2d.apply(h, ctx.params[wn], b, ctx.k, stride, padding, need_dx, relu)
    return run


class BatchedConv2d(torch.autograd.Function):
    """``conv2d`` (optionally followed by ReLU) of k models at once: ``x [k*B, C, H, W]`` (any
    memory format; channels-last avoids a copy), ``w [k, C_out, C, kh, kw]``, ``b [k, C_out]``
    or None. Output ``[k*B, C_out, H', W']`` in channels-last memory."""

    @staticmethod
    def forward(ctx, x, w, b, k, stride, padding, need_dx, relu=False):
        kB, C, H, W = x.shape
        Cout, kh, kw = w.shape[1], w.shape[3], w.shape[4]
        (sh, sw), (ph, pw) = stride, padding
        Hp, Wp = H + 2 * ph, W + 2 * pw
        if ph or pw:   # zero border, interior copied in once (channels-last)
            xl = torch.zeros(kB, Hp, Wp, C, dtype=x.dtype, device=x.device)
            xl[:, ph:ph + H, pw:pw + W, :] = x.permute(0, 2, 3, 1)
        else:
            xl = x.permute(0, 2, 3, 1).contiguous()
        Ho, Wo = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
        s = xl.stride()
        cols = xl.as_strided((kB, Ho, Wo, kh, kw, C), (s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]))
        cols = cols.reshape(k, (kB // k) * Ho * Wo, kh * kw * C)
        wm = w.permute(0, 3, 4, 2, 1).reshape(k, kh * kw * C, Cout)
        out = bmm(cols, wm)                                            # [k, B*Ho*Wo, Cout]
        if b is not None:
            out += b.unsqueeze(1)
        if relu:
            out.relu_()
        ctx.save_for_backward(cols if w.requires_grad else None, wm if need_dx else None, out if relu else None)
        ctx.geom = (k, kB, C, H, W, Cout, kh, kw, sh, sw, ph, pw, Hp, Wp, Ho, Wo)
        ctx.has_bias = b is not None
        return out.view(kB, Ho, Wo, Cout).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        k, kB, C, H, W, Cout, kh, kw, sh, sw, ph, pw, Hp, Wp, Ho, Wo = ctx.geom
        cols, wm, out = ctx.saved_tensors
        gp = g.permute(0, 2, 3, 1)                                     # [kB, Ho, Wo, Cout]
        if out is not None:   # ReLU: pass where out > 0 (one fused pass, writes channels-last)
            gl = torch.empty(k, (kB // k) * Ho * Wo, Cout, dtype=g.dtype, device=g.device)
            torch.ops.aten.threshold_backward.grad_input(gp, out.view(kB, Ho, Wo, Cout), 0.0,
                                                         grad_input=gl.view(kB, Ho, Wo, Cout))
        else:
            gl = gp.reshape(k, (kB // k) * Ho * Wo, Cout)
        dw = db = dx = None
        if cols is not None:
            dw = bmm(cols.transpose(1, 2), gl).view(k, kh, kw, C, Cout).permute(0, 4, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = gl.sum(dim=1)
        if wm is not None and ctx.needs_input_grad[0]:
            dcols = bmm(gl, wm.transpose(1, 2)).view(-1, C)            # [kB*Ho*Wo*kh*kw, C]
            dxp = torch.zeros(kB * Hp * Wp, C, dtype=g.dtype, device=g.device)
            dxp.index_add_(0, _fold_index(kB, Hp, Wp, Ho, Wo, kh, kw, sh, sw, g.device), dcols)
            dx = dxp.view(kB, Hp, Wp, C)[:, ph:ph + H, pw:pw + W, :].permute(0, 3, 1, 2)
        return dx, dw, db, None, None, None, None, None


_FOLD: dict = {}


def _fold_index(kB, Hp, Wp, Ho, Wo, kh, kw, sh, sw, device) -> Tensor:
    """Row of the padded input each patch entry ``(b, y, x, i, j)`` came from (col2im as one
    ``index_add_``; cached per geometry)."""
    key = (kB, Hp, Wp, Ho, Wo, kh, kw, sh, sw, str(device))
    idx = _FOLD.get(key)
    if idx is None:
        ar = lambda n, d: torch.arange(n, device=device).view(*([1] * d), n, *([1] * (4 - d)))
        idx = (ar(kB, 0) * (Hp * Wp) + (ar(Ho, 1) * sh + ar(kh, 3)) * Wp + ar(Wo, 2) * sw + ar(kw, 4)).reshape(-1)
        if len(_FOLD) > 32:
            _FOLD.clear()
        _FOLD[key] = idx
    return idx
