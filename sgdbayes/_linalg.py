"""BLAS threading helper for the hand-written MLP kernels.

On the CPU the stacked products of :mod:`sgdbayes._fused_mlp` go through numpy's
``matmul`` (OpenBLAS) on zero-copy ``.numpy()`` views rather than ``torch.bmm``
(MKL): measured on a 2-core AMD EPYC (AVX-512), one thread, the per-model
128x64 @ 64x64 products of the moons MLP ran 1.7x faster, and the products with a
dimension of 2 (input and output layers) 2.5-3.5x faster. OpenBLAS would start its
own threads for these sizes; callers that run several Python worker threads wrap
the run in :func:`single_threaded_blas`.
"""

from __future__ import annotations

import contextlib

__all__ = ["single_threaded_blas"]


@contextlib.contextmanager
def single_threaded_blas():
    """Limit numpy's BLAS to one thread for the duration (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield
