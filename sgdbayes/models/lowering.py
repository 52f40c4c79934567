"""Batched layers: k models of one architecture evaluated as one computation, layer by layer.

The fast path of :class:`sgdbayes.models.module.ModuleSpec` for modules built from the
layers registered here (``nn.Sequential`` of ``Conv2d``, ``Linear``, ``ReLU``,
``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``BatchNorm1d/2d``,
``Dropout``, ``Identity``, and the blocks families register with :func:`register_lowering`).
Parameters are stacked ``[k, *shape]``. Activations have one of two layouts, told apart by
their rank:

* **images** (4-D): ``[B, k * C, H, W]`` -- the k models side by side along the channel
  axis (model-major), one minibatch example per row: example b of model i sits in row b,
  channels ``i*C .. (i+1)*C - 1``. A convolution of the k models is then one *grouped*
  convolution (``groups=k``, each group one model's kernel), which the CPU (oneDNN) and
  GPU (cuDNN) libraries run as one call; pooling and ReLU act per channel, hence per model.
  Measured on the 2-core EPYC (Table-5 CNN, 8x8 digits, batch 64, one thread), 16-32
  models per grouped call ran 15-25 % faster per model than one ``nn.Module`` at a time and
  than batched matrix products over unfolded patches.
* **everything else**: ``[k, B, ...]`` (model-major); linear layers are ``bmm`` over models.

Everything is autograd on ordinary torch ops or on small autograd Functions (the 2x2 max-pool,
the batched linear layer, and on the CPU the compiled first ``Conv2d -> ReLU -> MaxPool2d`` and
final ``ReLU -> AdaptiveAvgPool2d(1)`` of :mod:`sgdbayes.models.convpool`), and per-model
numbers equal those of the plain module (tested to float64 round-off against ``nn.Module``
training and against the vmap path).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convpool import ConvPool, ReluMean, available, fusable, relu_mean_available

__all__ = ["BatchedContext", "lower", "register_lowering", "dropout_mask", "NotLowerable", "to_layout",
           "from_layout"]


class NotLowerable(TypeError):
    """The module holds a layer with no batched implementation (the vmap path is used)."""


class BatchedContext:
    """What a lowered layer sees: ``k`` models, per-model batch ``B``, their stacked
    parameters and state by full name, the mode, and the per-seed generators."""

    def __init__(self, k: int, B: int, params: dict, state: Optional[dict], train: bool, rng):
        self.k, self.B, self.params, self.state, self.train, self.rng = k, B, params, state, train, rng

    def mask(self, shape, p: float, like: Tensor) -> Tensor:
        """Dropout mask ``[k, *shape]`` (``shape`` = one model's activation, batch first) from
        the per-seed generators (:func:`dropout_mask`)."""
        return dropout_mask(self.rng.uniform(shape, dtype=like.dtype, device=like.device), p)


def dropout_mask(u: Tensor, p: float) -> Tensor:
    """The dropout rule of sgdbayes: keep where ``u >= p`` (u uniform in [0, 1)), scaled by
    ``1 / (1 - p)`` (the distribution of ``nn.Dropout``; the numbers come from the per-seed
    generators of :class:`sgdbayes.models.protocol.SeedGenerators`)."""
    return (u >= p).to(u.dtype) * (1.0 / (1.0 - p))


def to_layout(xk: Tensor) -> Tensor:
    """Per-model inputs ``[k, B, ...]`` in the lowered layout (images: ``[B, k*C, H, W]``)."""
    if xk.dim() == 5 and xk.is_floating_point():
        k, B, C, H, W = xk.shape
        return xk.transpose(0, 1).reshape(B, k * C, H, W)
    return xk


def from_layout(h: Tensor, k: int) -> Tensor:
    """Activations back to per-model ``[k, B, ...]``."""
    if h.dim() == 4:
        B, kC, H, W = h.shape
        return h.reshape(B, k, kC // k, H, W).transpose(0, 1)
    return h


def _image(h: Tensor, where: str) -> None:
    if h.dim() != 4:
        raise NotLowerable(f"{where} needs image activations [B, k*C, H, W], got rank {h.dim()}")


def _not_image(h: Tensor, where: str) -> None:
    if h.dim() == 4:
        raise NotLowerable(f"{where} on image activations is not batched here (Flatten first)")


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
    children = list(m.named_children())
    # ReLU then MaxPool2d == MaxPool2d then ReLU, values and gradients exactly (max commutes with
    # the monotone ReLU; a window whose max is <= 0 gets no gradient either way): the ReLU then
    # acts on the pooled, 4x smaller activation
    for i in range(len(children) - 1):
        if type(children[i][1]) is nn.ReLU and type(children[i + 1][1]) is nn.MaxPool2d:
            children[i], children[i + 1] = children[i + 1], children[i]
    parts, i = [], 0
    while i < len(children):
        name, child = children[i]
        if i + 1 < len(children) and type(child) is nn.ReLU and _global_avg(children[i + 1][1]):
            parts.append(_relu_mean([lower(c, f"{prefix}{nm}.") for nm, c in children[i:i + 2]]))
            i += 2
        elif i + 1 < len(children) and fusable(child) and _fast_pool(children[i + 1][1]):
            relu = i + 2 < len(children) and type(children[i + 2][1]) is nn.ReLU
            n = 3 if relu else 2
            parts.append(_conv_pool(child, f"{prefix}{name}.", relu,
                                    [lower(c, f"{prefix}{nm}.") for nm, c in children[i:i + n]]))
            i += n
        else:
            parts.append(lower(child, f"{prefix}{name}."))
            i += 1

    def run(ctx, h):
        for part in parts:
            h = part(ctx, h)
        return h
    return run


def _conv_pool(conv: nn.Conv2d, prefix: str, relu: bool, unfused: list) -> Lowered:
    """``Conv2d -> MaxPool2d(2) [-> ReLU]`` by the compiled kernel of
    :mod:`sgdbayes.models.convpool` when its input is data on the CPU, else layer by layer."""
    wn, bn_ = prefix + "weight", (prefix + "bias" if conv.bias is not None else None)

    def run(ctx, h):
        W = ctx.params[wn]
        if available(h, W):
            return ConvPool.apply(h, W, None if bn_ is None else ctx.params[bn_], relu)
        for part in unfused:
            h = part(ctx, h)
        return h
    return run


def _global_avg(m: nn.Module) -> bool:
    return type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1))


def _relu_mean(unfused: list) -> Lowered:
    """``ReLU -> AdaptiveAvgPool2d(1)`` by the compiled one-pass kernel on the CPU, else layer by layer."""
    def run(ctx, h):
        if h.dim() == 4 and relu_mean_available(h):
            return ReluMean.apply(h)
        for part in unfused:
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

    def run(ctx, h):
        if h.dim() == 4:   # [B, k*C, H, W] -> [k, B, C*H*W] in each model's (C, H, W) order
            return h.reshape(h.shape[0], ctx.k, -1).transpose(0, 1)
        return h.flatten(2)
    return run


@register_lowering(nn.Dropout)
def _dropout(m: nn.Dropout, prefix):
    p = float(m.p)

    def run(ctx, h):
        if not ctx.train or p == 0.0:
            return h
        if h.dim() == 4:
            B, kC, H, W = h.shape
            mask = ctx.mask((B, kC // ctx.k, H, W), p, h)            # [k, B, C, H, W]
            return h * mask.transpose(0, 1).reshape(B, kC, H, W)
        return h * ctx.mask(tuple(h.shape[1:]), p, h)
    return run


def _pool(fn, where):
    def run(ctx, h):
        _image(h, where)
        return fn(h)
    return run


class _MaxPool2x2(torch.autograd.Function):
    """``F.max_pool2d(h, 2)`` on even H, W: forward by three elementwise maxima of the strided
    window views, backward to the first maximum of each window in scan order (as
    ``max_pool2d``'s indices), recomputed from the input. The same numbers as ``max_pool2d``
    (tested, ties included) in 0.7 of its time on the CPU (64 x 512 x 8 x 8, fwd + bwd)."""

    @staticmethod
    def forward(ctx, h):
        v = _windows(h)
        m = torch.maximum(torch.maximum(v[..., 0, :, 0], v[..., 0, :, 1]),
                          torch.maximum(v[..., 1, :, 0], v[..., 1, :, 1]))
        ctx.save_for_backward(h, m)
        return m

    @staticmethod
    def backward(ctx, g):
        h, m = ctx.saved_tensors
        v, out = _windows(h), torch.empty_like(h)
        o, taken = _windows(out), None
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            hit = v[..., i, :, j] == m
            if taken is not None:
                hit = hit & ~taken
            taken = hit if taken is None else taken | hit
            torch.mul(g, hit, out=o[..., i, :, j])
        return out


def _windows(h: Tensor) -> Tensor:
    B, C, H, W = h.shape
    return h.view(B, C, H // 2, 2, W // 2, 2)


def _fast_pool(m: nn.Module) -> bool:
    """A ``MaxPool2d(2)`` (2x2, stride 2, no padding, no indices returned)."""
    return type(m) is nn.MaxPool2d and _pool2x2(m) and not m.return_indices


def _pool2x2(m: nn.MaxPool2d) -> bool:
    two = lambda v: v in (2, (2, 2))  # noqa: E731
    return (two(m.kernel_size) and two(m.stride if m.stride is not None else m.kernel_size)
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)))


@register_lowering(nn.MaxPool2d)
def _maxpool(m: nn.MaxPool2d, prefix):
    if m.return_indices:
        raise NotLowerable(f"MaxPool2d(return_indices=True) ({prefix.rstrip('.')})")
    fast = _pool2x2(m)

    def pool(h):
        if fast and h.is_floating_point() and h.shape[2] % 2 == 0 and h.shape[3] % 2 == 0 and h.is_contiguous():
            return _MaxPool2x2.apply(h)
        return F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    return _pool(pool, "MaxPool2d")


@register_lowering(nn.AvgPool2d)
def _avgpool(m: nn.AvgPool2d, prefix):
    return _pool(lambda h: F.avg_pool2d(h, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                        m.divisor_override), "AvgPool2d")


@register_lowering(nn.AdaptiveAvgPool2d)
def _adaptive_avgpool(m: nn.AdaptiveAvgPool2d, prefix):
    return _pool(lambda h: F.adaptive_avg_pool2d(h, m.output_size), "AdaptiveAvgPool2d")


# ------------------------------------------------------------------------ linear, convolution
@register_lowering(nn.Linear)
def _linear(m: nn.Linear, prefix):
    wn, bn_ = prefix + "weight", (prefix + "bias" if m.bias is not None else None)

    def run(ctx, h):
        _not_image(h, "Linear")
        W = ctx.params[wn]                                   # [k, out, in]
        x = h.reshape(ctx.k, -1, h.shape[-1])                # [k, B*..., in]
        y = _BatchedLinear.apply(x, W, None if bn_ is None else ctx.params[bn_])
        return y.reshape(*h.shape[:-1], W.shape[1])
    return run


class _BatchedLinear(torch.autograd.Function):
    """``y[j] = x[j] W[j]^T + b[j]`` for ``x [k, N, in]`` (any strides: the flattened image
    layout's rows are ``k * in`` apart), ``W [k, out, in]``, ``b [k, out]`` or None. Its
    backward takes the products in the orientations the CPU BLAS runs fast on these layouts:
    ``dW = g^T x`` straight into W's layout and ``dx = g W`` written into x's layout.
    autograd's ``baddbmm`` backward (``x^T g`` then transposed, ``g`` times a transposed view)
    took 6.8 ms against 1.3 ms (4 rows, N 128, in 2048, out 10, one thread)."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        ctx.has_bias = b is not None
        y = torch.bmm(x, W.transpose(1, 2))
        return y if b is None else y.add_(b.unsqueeze(1))

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        g = g.contiguous()
        gx = gW = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device) \
                if _dense(x) else torch.empty_like(x, memory_format=torch.contiguous_format)
            torch.bmm(g, W, out=gx)
        if ctx.needs_input_grad[1]:
            gW = torch.bmm(g.transpose(1, 2), x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(1)
        return gx, gW, gb


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s strides are a permutation of a contiguous layout (no gaps, no overlap)."""
    return t.is_contiguous() or t.transpose(0, 1).is_contiguous()


@register_lowering(nn.Conv2d)
def _conv2d(m: nn.Conv2d, prefix):
    if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise NotLowerable(f"Conv2d with groups, padding_mode or string padding ({prefix.rstrip('.')})")
    wn, bn_ = prefix + "weight", (prefix + "bias" if m.bias is not None else None)

    def run(ctx, h):
        _image(h, "Conv2d")
        W = ctx.params[wn]                                   # [k, C_out, C_in, kh, kw]
        b = None if bn_ is None else ctx.params[bn_].reshape(-1)
        return F.conv2d(h, W.reshape(-1, *W.shape[2:]), b, m.stride, m.padding, m.dilation, groups=ctx.k)
    return run


# ------------------------------------------------------------------------ batch norm
def _batchnorm(m: nn.modules.batchnorm._BatchNorm, prefix: str):
    names = {n: prefix + n for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    eps = float(m.eps)

    def run(ctx, h):
        k = ctx.k
        if h.dim() == 4:                                     # [B, k*C, H, W] -> [B, k, C, H, W]
            v = h.reshape(h.shape[0], k, h.shape[1] // k, *h.shape[2:])
            red, C = (0, 3, 4), v.shape[2]
            shape = (1, k, C, 1, 1)
        else:                                                # [k, B, C] or [k, B, C, L]
            v, C = h, h.shape[2]
            red = (1,) if h.dim() == 3 else (1, 3)
            shape = (k, 1, C) + (1,) * (h.dim() - 3)
        if ctx.train or not m.track_running_stats:
            mean, var = v.mean(dim=red), v.var(dim=red, unbiased=False)
            if ctx.train and m.track_running_stats:
                n = v.numel() // (k * C)
                _update_running(ctx.state, names, mean.detach(), var.detach() * (n / max(n - 1, 1)), m.momentum)
        else:
            mean, var = ctx.state[names["running_mean"]], ctx.state[names["running_var"]]
        out = (v - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
        if m.affine:
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


register_lowering(nn.BatchNorm2d)(_batchnorm)
register_lowering(nn.BatchNorm1d)(_batchnorm)
