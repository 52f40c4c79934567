"""A first convolution fused with the 2x2 max-pool (and ReLU) after it, for k models in the
lowered image layout (:mod:`sgdbayes.models.lowering`), on the CPU.

``Conv2d(C_in, C_out, 3, padding=1) -> [ReLU] -> MaxPool2d(2)`` applied to *data* (the
first layer: no gradient to its input) is, on small images, the costliest part of a CNN
step that is not a matrix product: the grouped convolution of k models with few input
channels each runs far below the machine's speed, and its full-resolution output is written,
pooled, read back for the pool's backward and for the convolution's weight gradient. The
compiled kernel (``sgdbayes/_convpool.c``) computes, model by model and example by example,
the convolution at the four entries of each pooling window in registers/L1, keeps the
maximum and which entry it was (``max_pool2d``'s rule: the first maximum in scan order, NaN
wins), applies the ReLU, and writes only the pooled output and a one-byte index; the
backward accumulates the weight (and bias) gradient from the kept entries only. The same
numbers as ``conv2d`` -> ``relu`` -> ``max_pool2d`` (tested in float64, ties included); on
the 2-core EPYC (Table-5 CNN on 8x8 digits, 16 models, batch 64, one thread) the first stage
took 2.4-3.7 ms (kernel forward 0.8-1.0, backward 1.6) instead of 11-18 ms per step.

Used by the lowered ``Sequential`` when :func:`fusable` holds for the convolution (and the pool is
2x2) and
:func:`available` for the tensors; otherwise the layers run one by one. The same compiled
object holds the network's other end, ``ReLU -> AdaptiveAvgPool2d(1)`` (:class:`ReluMean`):
one pass forward and one backward instead of four.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor, nn

from .._ckernel_lib import library

__all__ = ["ConvPool", "ReluMean", "fusable", "available", "relu_mean_available"]


def _bind(lib) -> Optional[dict]:
    if lib is None:
        return None
    try:
        fns = {}
        for dt, suf in ((torch.float32, "f32"), (torch.float64, "f64")):
            f, b = getattr(lib, f"convpool3_fwd_{suf}"), getattr(lib, f"convpool3_bwd_{suf}")
            f.restype = b.restype = ctypes.c_int
            f.argtypes = [ctypes.c_int] * 7 + [ctypes.c_void_p] * 5
            b.argtypes = [ctypes.c_int] * 7 + [ctypes.c_void_p] * 6
            rf, rb = getattr(lib, f"relu_mean_fwd_{suf}"), getattr(lib, f"relu_mean_bwd_{suf}")
            rf.restype = rb.restype = ctypes.c_int
            rf.argtypes = [ctypes.c_ssize_t, ctypes.c_int] + [ctypes.c_void_p] * 2
            rb.argtypes = [ctypes.c_ssize_t, ctypes.c_int] + [ctypes.c_void_p] * 3
            fns[dt] = (f, b, rf, rb)
        return fns
    except AttributeError:   # an older build of the shared object without this kernel
        return None


_FNS = _bind(library())


def fusable(conv: nn.Module) -> bool:
    """Whether ``conv`` has the fused kernel's shape: a 3x3 ``Conv2d``, stride 1, zero padding
    1, no dilation or groups (the 2x2 max-pool after it is the lowering's check)."""
    one = lambda v: v in (1, (1, 1))  # noqa: E731
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and one(conv.stride)
            and conv.padding in (1, (1, 1)) and one(conv.dilation) and conv.groups == 1
            and conv.padding_mode == "zeros")


def available(h: Tensor, w: Tensor) -> bool:
    """Whether the compiled kernel can take input ``h [B, k*C_in, H, W]`` (data: no gradient
    to it) and weights ``w``: built, CPU, float32/float64, even H and W."""
    return (_FNS is not None and h.device.type == "cpu" and h.dtype in _FNS and w.dtype == h.dtype
            and w.device.type == "cpu" and h.dim() == 4 and not h.requires_grad
            and h.shape[2] % 2 == 0 and h.shape[3] % 2 == 0 and h.shape[2] >= 2 and h.shape[3] >= 2)


def _p(t: Optional[Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class ConvPool(torch.autograd.Function):
    """``out = [relu](max_pool2d(conv2d(h, w, b, padding=1, groups=k), 2))`` for ``h`` data
    ``[B, k*C_in, H, W]``, ``w [k, C_out, C_in, 3, 3]``, ``b [k, C_out]`` or None; gradients to
    ``w`` and ``b``. The kernel takes the weights as ``[k, C_in*9, C8]`` and the bias as
    ``[k, C8]`` (channels zero-padded to a multiple of 8, the width of its register blocks)."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Optional[Tensor], relu: bool):
        k, Cout, Cin = w.shape[0], w.shape[1], w.shape[2]
        B, _, H, W = h.shape
        h = h.contiguous()
        C8 = -(-Cout // 8) * 8                       # channels in lanes of 8, zero-padded
        wt = w.new_zeros(k, Cin * 9, C8)
        wt[:, :, :Cout] = w.detach().reshape(k, Cout, Cin * 9).transpose(1, 2)
        bias = None
        if b is not None:
            bias = b.new_zeros(k, C8)
            bias[:, :Cout] = b.detach()
        out = torch.empty(B, k * Cout, H // 2, W // 2, dtype=h.dtype)
        idx = torch.empty(out.shape, dtype=torch.uint8)
        fwd = _FNS[h.dtype][0]
        rc = fwd(B, k, Cin, Cout, H, W, int(relu), _p(h), _p(wt), _p(bias), _p(out), _p(idx))
        if rc != 0:
            raise MemoryError(f"convpool3_fwd failed ({rc})")
        ctx.save_for_backward(h, out, idx)
        ctx.meta = (k, Cin, Cout, bool(relu), b is not None, w.shape)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        h, out, idx = ctx.saved_tensors
        k, Cin, Cout, relu, has_bias, wshape = ctx.meta
        B, _, H, W = h.shape
        g = g.contiguous()
        gw = torch.empty(wshape, dtype=h.dtype)
        gb = torch.empty(k, Cout, dtype=h.dtype) if has_bias else None
        bwd = _FNS[h.dtype][1]
        rc = bwd(B, k, Cin, Cout, H, W, int(relu), _p(h), _p(out), _p(idx), _p(g), _p(gw), _p(gb))
        if rc != 0:
            raise MemoryError(f"convpool3_bwd failed ({rc})")
        return None, gw, gb, None


def relu_mean_available(h: Tensor) -> bool:
    """Whether the compiled ReLU + global average pool can take ``h [B, kC, H, W]``."""
    return _FNS is not None and h.device.type == "cpu" and h.dtype in _FNS and h.dim() == 4


class ReluMean(torch.autograd.Function):
    """``adaptive_avg_pool2d(relu(h), 1)`` (``[B, kC, 1, 1]``) in one pass, and its backward
    in one pass (the same numbers as the two layers up to the order of the H*W additions)."""

    @staticmethod
    def forward(ctx, h: Tensor):
        h = h.contiguous()
        B, C, H, W = h.shape
        out = torch.empty(B, C, 1, 1, dtype=h.dtype)
        _FNS[h.dtype][2](B * C, H * W, _p(h), _p(out))
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        (h,) = ctx.saved_tensors
        B, C, H, W = h.shape
        g = g.contiguous()
        dh = torch.empty_like(h)
        _FNS[h.dtype][3](B * C, H * W, _p(h), _p(g), _p(dh))
        return dh
