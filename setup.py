"""Build hook for the optional C kernels (sgdbayes/_ckernels.c: the MLP; sgdbayes/_convpool.c: a
first convolution fused with its max-pool); everything else is in
pyproject.toml. Without a C compiler the build of the kernel is skipped (``optional``)
and sgdbayes uses its numpy/torch path (same results, slower on the CPU)."""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
setup(ext_modules=[Extension("sgdbayes._ckernels", ["sgdbayes/_ckernels.c", "sgdbayes/_convpool.c"],
                             extra_compile_args=flags, optional=True)])
