"""Shared fixtures."""

import pytest

import sgdbayes._fused_mlp as fm


@pytest.fixture(params=["c", "numpy"])
def mlp_kernel(request, monkeypatch):
    """Run a test on both implementations of the MLP kernel: the compiled C kernel and the
    numpy/torch path (the C one is skipped where it was not built)."""
    if request.param == "c":
        if not fm.c_kernel_available():
            pytest.skip("C kernel not built")
    else:
        monkeypatch.setattr(fm, "_C", None)
    return request.param
