"""The optional compiled kernels (``sgdbayes/_ckernels.c``, ``sgdbayes/_convpool.c``; one
shared object built at install when a C compiler is present), opened with ctypes.

``SGDBAYES_KERNEL=numpy`` in the environment turns every compiled kernel off (the torch /
numpy paths compute the same numbers)."""

from __future__ import annotations

import ctypes
import os
from typing import Optional

__all__ = ["library"]


def library() -> Optional[ctypes.CDLL]:
    """The shared object, or None when it was not built or is turned off."""
    if os.environ.get("SGDBAYES_KERNEL", "").lower() == "numpy":
        return None
    try:
        from . import _ckernels  # the optional compiled module
        return ctypes.CDLL(_ckernels.__file__)
    except (ImportError, OSError):
        return None
