"""Hand-written forward/backward of stacked plain ReLU MLPs (no batch norm), shared by
the ensemble engine (:mod:`sgdbayes.engine`) and the SGLD potential
(:class:`sgdbayes.sampling.mlp.MLPPotential`).

Math (per model, minibatch of B points, mean cross-entropy; layers l = 1..L)::

    h_l = a_{l-1} W_l^T + b_l,  a_l = relu(h_l),  z = h_L
    dz  = (softmax(z) - onehot(y)) / B
    dW_l = dh_l^T a_{l-1},  db_l = sum_b dh_l
    dh_{l-1} = (dh_l W_l) * 1[h_{l-1} > 0]

Layout. Parameters are held *blocked and augmented*: layer l of k models is one
contiguous ``[k, out_l, in_l + 1]`` block ``[W_l | b_l]`` (:class:`AugmentedLayout`).
Activations carry a trailing column of ones, so the bias enters the matrix products
(``[a, 1] @ [W | b]^T``) and ``db`` comes out of ``dW`` for free
(``dh^T [a, 1] = [dW | db]``): no separate bias-add or column-sum passes. The ones
column of a hidden activation is produced by the product itself: the transposed
weight copy ``[W | b]^T`` gets one extra output column ``e_{in+1}`` (exactly 1 x 1
plus zeros). The output layer is computed transposed, ``z^T = [W_L | b_L] [a, 1]^T``
(``[k, C, B]``), because softmax over a short contiguous last axis (C = 2 classes)
is ~10x slower than over a middle axis in torch.

Two implementations of the same computation:

* **C kernel** (CPU, float32/float64; ``sgdbayes/_ckernels.c``, built at install when a
  C compiler is present): one call per chunk of models, model by model, every
  intermediate in cache, products by the BLAS gemm scipy exports
  (``scipy.linalg.cython_blas``); ctypes releases the GIL for the call. Measured on
  the 2-core EPYC, 50 moons models, one thread: 2.1 ms per step against 2.6 ms for
  the numpy/torch path, and no Python between the products (which is what costs
  when two worker threads share the GIL).
* **numpy/torch** (everywhere else, and the reference the C kernel is tested
  against): the models are processed in blocks (~1 MB of activations each),
  products through numpy / OpenBLAS (:mod:`sgdbayes._linalg`), elementwise work
  through torch, in preallocated buffers.

``SGDBAYES_KERNEL=numpy`` in the environment turns the C kernel off. Per-model results
do not depend on the block size or on the other models.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor

from ._ckernel_lib import library

__all__ = ["AugmentedLayout", "FusedMLP", "augment_inputs", "c_kernel_available"]


class _CKernel:
    """ctypes bindings of ``sgdbayes/_ckernels.c`` and the BLAS gemm addresses."""

    def __init__(self, lib: ctypes.CDLL):
        import scipy.linalg.cython_blas as cython_blas  # noqa: F401 (loads scipy's BLAS)

        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        caps = cython_blas.__pyx_capi__
        self.fn, self.sgld, self.gemm, self.work_size = {}, {}, {}, {}
        for dt, suffix, gemm in ((torch.float32, "f32", "sgemm"), (torch.float64, "f64", "dgemm")):
            f = getattr(lib, f"mlp_loss_grad_{suffix}")
            f.restype = ctypes.c_int
            f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t,
                          ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_void_p]
            g = getattr(lib, f"mlp_loss_grad_{suffix}_sgld")
            g.restype = ctypes.c_int
            g.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t,
                          ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_ssize_t, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                          ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p]
            self.sgld[dt] = g
            ws = getattr(lib, f"mlp_loss_grad_{suffix}_work_size")
            ws.restype, ws.argtypes = ctypes.c_size_t, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
            self.fn[dt], self.work_size[dt] = f, ws
            self.gemm[dt] = get_ptr(caps[gemm], get_name(caps[gemm]))


def _load_c_kernel() -> "_CKernel | None":
    lib = library()
    if lib is None:
        return None
    try:
        return _CKernel(lib)
    except (ImportError, OSError, AttributeError, KeyError):
        return None


_C = _load_c_kernel()


def _ptrs(ts: list[Tensor]):
    """A C array of the tensors' data pointers (``T **`` for the kernels)."""
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def c_kernel_available() -> bool:
    """Whether the compiled kernel is in use (built, and not turned off by ``SGDBAYES_KERNEL``)."""
    return _C is not None

# target bytes of one activation buffer of a CPU block: about one L2 cache. Measured on
# the 2-core EPYC, 250 moons models: blocks of 24-32 models 5-10 % faster than 63 or 128
_CPU_BLOCK_BYTES = 2 ** 20


class AugmentedLayout:
    """Per-layer blocks ``[out, in + 1]`` = ``[W | b]`` of a plain (no batch norm)
    :class:`sgdbayes.models.MLPSpec`; ``pack`` / ``unpack`` convert stacked block views
    to and from the row layout ``[k, P]`` of the spec (``nn.Linear`` order)."""

    def __init__(self, spec):
        if spec.batchnorm:
            raise ValueError("AugmentedLayout is for MLPs without batch norm")
        self.spec = spec
        ws = spec.widths
        self.shapes = [(ws[l + 1], ws[l] + 1) for l in range(spec.n_layers)]
        self.numels = [o * i for o, i in self.shapes]
        self.n_params = sum(self.numels)
        assert self.n_params == spec.n_params

    def views(self, flat: Tensor, k: int) -> list[Tensor]:
        """Block views ``[k, out, in + 1]`` into a flat buffer of ``k * P`` entries."""
        out, off = [], 0
        for (o, i), n in zip(self.shapes, self.numels):
            out.append(flat[off:off + k * n].view(k, o, i))
            off += k * n
        return out

    def pack(self, blocks: list[Tensor]) -> Tensor:
        k = blocks[0].shape[0]
        parts = []
        for blk in blocks:
            parts += [blk[:, :, :-1].reshape(k, -1), blk[:, :, -1]]
        return torch.cat(parts, dim=1)

    def unpack(self, w: Tensor, blocks: list[Tensor]) -> None:
        k = w.shape[0]
        off = 0
        for blk, (o, i) in zip(blocks, self.shapes):
            blk[:, :, :-1].copy_(w[:, off:off + o * (i - 1)].view(k, o, i - 1))
            off += o * (i - 1)
            blk[:, :, -1].copy_(w[:, off:off + o])
            off += o


def augment_inputs(x: Tensor) -> Tensor:
    """``[n, d] -> [n, d + 1]``: the inputs with a trailing column of ones."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


class FusedMLP:
    """Workspace for :meth:`loss_and_grad` on up to ``k`` models, minibatch size ``B``."""

    def __init__(self, spec, k: int, B: int, device, dtype):
        self.layout = AugmentedLayout(spec)
        self.spec, self.k, self.B = spec, k, B
        device = torch.device(device)
        ws = spec.widths
        L = spec.n_layers
        if device.type == "cpu":
            per_model = B * (max(ws[1:]) + 1) * torch.finfo(dtype).bits // 8
            self.block = max(1, min(k, _CPU_BLOCK_BYTES // per_model))
        else:
            self.block = k
        self.c = _C if device.type == "cpu" and dtype in (torch.float32, torch.float64) else None
        if self.c is not None:
            self._widths = (ctypes.c_int * (L + 1))(*ws)
            self._work = torch.empty(self.c.work_size[dtype](B, L, self._widths), dtype=dtype)
            self._gwork = torch.empty(self.layout.n_params, dtype=dtype)  # one model's gradient (SGLD)
            self._fn, self._gemm = self.c.fn[dtype], self.c.gemm[dtype]
            return
        kb = self.block
        self.numpy = device.type == "cpu" and dtype in (torch.float32, torch.float64)
        emp = lambda *s: torch.empty(*s, device=device, dtype=dtype)
        # hidden activations [a_l, 1], relu'd in place; grads w.r.t. hidden pre-activations
        self.A = [emp(kb, B, ws[l + 1] + 1) for l in range(L - 1)]
        # same shape as A (a zero column under the ones), so that relu' is one contiguous pass
        self.GA = [torch.zeros(kb, B, ws[l + 1] + 1, device=device, dtype=dtype) for l in range(L - 1)]
        # [W_l | b_l]^T with an extra output column e_{in+1} (makes the ones column)
        self.WE = []
        for l in range(L - 1):
            we = torch.zeros(kb, ws[l] + 1, ws[l + 1] + 1, device=device, dtype=dtype)
            we[:, ws[l], ws[l + 1]] = 1.0
            self.WE.append(we)
        self.ZT = emp(kb, ws[-1], B)
        self.neg = torch.full((kb, 1, B), -1.0, device=device, dtype=dtype)
        if self.numpy:
            self._A = [a.numpy() for a in self.A]
            self._GA = [g.numpy() for g in self.GA]
            self._WE = [w.numpy() for w in self.WE]
            self._ZT = self.ZT.numpy()
        else:
            self._A, self._GA, self._WE, self._ZT = self.A, self.GA, self.WE, self.ZT

    def _arr(self, t: Tensor):
        return t.numpy() if self.numpy else t

    def loss_and_grad(self, P: list[Tensor], G: list[Tensor], xa: Tensor, y: Tensor,
                      accuracy: bool = True) -> tuple[Tensor, Tensor | None]:
        """Fill the gradient blocks ``G`` (same shapes as ``P``, blocks ``[m, out, in+1]``)
        with d(mean CE)/d[W | b] per model; ``xa [m, B, d+1]`` are the augmented inputs
        (:func:`augment_inputs`), ``y [m, B]`` the labels. Returns (loss [m], number of
        correctly classified points [m], or None when ``accuracy`` is False)."""
        m = xa.shape[0]
        if self.c is not None:
            return self._c_loss_and_grad(P, G, xa, y, accuracy)
        # per block: log p(y_b) and the predicted class of every point, into [m, B] buffers;
        # loss and accuracy are reduced once for all blocks
        logp_y = xa.new_empty(m, self.B)
        pred_v = xa.new_empty(m, self.B) if accuracy else None
        pred = y.new_empty(m, self.B) if accuracy else None
        with np.errstate(all="ignore"):  # like torch: inf/nan propagate silently (divergence)
            for s in range(0, m, self.block):
                e = min(m, s + self.block)
                self._block([p[s:e] for p in P], [g[s:e] for g in G], xa[s:e], y[s:e], logp_y[s:e],
                            None if pred is None else (pred_v[s:e], pred[s:e]))
        return logp_y.mean(dim=1).neg_(), None if pred is None else (pred == y).sum(dim=1)

    def _c_loss_and_grad(self, P, G, xa, y, accuracy):
        m, B = xa.shape[0], xa.shape[1]
        self._check_c_args((*P, *G), xa, y)
        loss = xa.new_empty(m)
        correct = torch.empty(m, dtype=torch.int64) if accuracy else None
        L = self.spec.n_layers
        self._fn(self._gemm, m, B, L, self._widths, _ptrs(P), _ptrs(G), xa.data_ptr(), xa.stride(0),
                 y.data_ptr(), y.stride(0), loss.data_ptr(), None if correct is None else correct.data_ptr(),
                 self._work.data_ptr())
        return loss, correct

    def sgld_step(self, P: list[Tensor], centers: list[Tensor], xa: Tensor, y: Tensor, noise: Tensor,
                  a_grad: float, a_wd: float, a_loc: float, noise_scale: float) -> Tensor:
        """C kernel only: one in-place SGLD step of every model (rule of
        :func:`sgdbayes.sampling.integrator.langevin_step`, terms in its order), model by model right
        after its gradient; ``noise [m, P]`` in the row layout of the spec. Returns the
        pre-update minibatch loss ``[m]``."""
        m, B = xa.shape[0], xa.shape[1]
        self._check_c_args(P, xa, y)
        if noise.stride(1) != 1 or noise.shape != (m, self.layout.n_params):
            raise ValueError("noise must be [m, P] with contiguous rows")
        loss = xa.new_empty(m)
        self.c.sgld[self._work.dtype](
            self._gemm, m, B, self.spec.n_layers, self._widths, _ptrs(P), _ptrs(centers), xa.data_ptr(), xa.stride(0),
            y.data_ptr(), y.stride(0), loss.data_ptr(), noise.data_ptr(), noise.stride(0), a_grad, a_wd,
            a_loc, noise_scale, self._work.data_ptr(), self._gwork.data_ptr())
        return loss

    def _check_c_args(self, P, xa, y):
        if xa.shape[1] != self.B:
            raise ValueError(f"batch of {xa.shape[1]} points, workspace made for {self.B}")
        for t in P:
            if not t.is_contiguous():
                raise ValueError("parameter and gradient blocks must be contiguous")
        # one model's inputs [B, d+1] and labels [B] must be contiguous; models may share them
        if xa.stride(2) != 1 or xa.stride(1) != xa.shape[2] or y.stride(1) != 1 or y.dtype != torch.int64:
            raise ValueError("inputs must be [m, B, d+1] with contiguous rows and int64 labels [m, B]")

    def _block(self, P, G, xa, y, logp_y, pred):
        n = xa.shape[0]
        L = self.spec.n_layers
        if self.numpy:
            mm, copy = np.matmul, np.copyto
        else:
            mm, copy = torch.matmul, lambda dst, src: dst.copy_(src)
        Pn = [self._arr(p) for p in P]
        Gn = [self._arr(g) for g in G]
        x = self._arr(xa)
        A = [a[:n] for a in self._A]
        At = [a[:n] for a in self.A]
        # forward: [a, 1] @ WE -> [h, 1], relu in place (the ones stay 1)
        a = x
        for l in range(L - 1):
            we = self._WE[l][:n]
            copy(we[:, :, :-1], Pn[l].swapaxes(1, 2))
            mm(a, we, out=A[l])
            At[l].clamp_(min=0)
            a = A[l]
        zt = self._ZT[:n]
        mm(Pn[L - 1], a.swapaxes(1, 2), out=zt)                   # z^T [n, C, B]
        ZT = self.ZT[:n]
        logp = torch.log_softmax(ZT, dim=1)
        yi = y.unsqueeze(1)
        torch.gather(logp, 1, yi, out=logp_y.unsqueeze(1))
        # max(dim).indices, not argmax(dim): the same first-maximum index, but argmax over
        # a middle axis is ~25x slower here
        if pred is not None:
            torch.max(ZT, dim=1, out=pred)
        g = logp.exp_()
        g.scatter_add_(1, yi, self.neg[:n])
        g.mul_(1.0 / self.B)
        gt = self._arr(g)                                          # dz^T [n, C, B]
        # backward
        a_in = x if L == 1 else A[L - 2]
        mm(gt, a_in, out=Gn[L - 1])                                # [dW | db] = dz^T [a, 1]
        if L > 1:
            w_out = self.spec.widths[L - 1]
            mm(gt.swapaxes(1, 2), Pn[L - 1][:, :, :w_out], out=self._GA[L - 2][:n, :, :-1])
        for l in range(L - 2, -1, -1):
            ga, gat = self._GA[l][:n], self.GA[l][:n]
            # relu'(h) = 1[h > 0] = 1[a > 0]; in place
            torch.ops.aten.threshold_backward.grad_input(gat, At[l], 0, grad_input=gat)
            ga = ga[:, :, :-1]
            a_in = x if l == 0 else A[l - 1]
            mm(ga.swapaxes(1, 2), a_in, out=Gn[l])
            if l > 0:
                mm(ga, Pn[l][:, :, :-1], out=self._GA[l - 1][:n, :, :-1])
