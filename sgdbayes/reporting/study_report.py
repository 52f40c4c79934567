"""Writing a study's report: results.json first, then report.md rendered from it.

Every study report follows the same discipline: the numbers are gathered into
one JSON-able dict, the figures are drawn, the dict is written atomically to
``results.json``, and the markdown is rendered from the *stored* file, so the
text can only show what ``results.json`` holds.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable, Iterable

from .._io import atomic_write_text
from ..runner.cache import to_jsonable

__all__ = ["write_study_report", "package_versions", "preset_label"]


def write_study_report(ctx, build: Callable, figures: Callable, render: Callable) -> Path:
    """Build results from the stage outputs in ``ctx``, draw figures, write results.json and report.md.

    ``build(ctx) -> dict`` must include ``timing`` ({stage: {"wall_s": ...}});
    ``figures(ctx, results, figdir) -> [paths]``; ``render(stored_results) -> str``.
    Adds ``figures`` (paths relative to the report), ``timing_report_s`` and
    ``wall_total_s`` (stage wall times + report time) to the results.
    """
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = build(ctx)
    figs = figures(ctx, results, out / "figures")
    results["figures"] = [str(Path(p).relative_to(out)) for p in figs]
    results["timing_report_s"] = time.perf_counter() - t0
    results["wall_total_s"] = float(sum(t["wall_s"] for t in results["timing"].values())
                                    + results["timing_report_s"])
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(results), indent=1, ensure_ascii=False))
    stored = json.loads((out / "results.json").read_text())
    atomic_write_text(out / "report.md", render(stored))
    return out / "report.md"


def package_versions(packages: Iterable[str]) -> dict:
    """{"python": version, package: installed version or "not installed"} for a report's Methods."""
    import importlib.metadata as md

    from .._fused_mlp import c_kernel_available

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    # which implementation computed the MLP gradients (same numbers up to round-off)
    out["sgdbayes MLP kernel"] = "C (_ckernels.c)" if c_kernel_available() else "numpy/torch"
    return out


def preset_label(r: dict) -> str:
    """The opening words of every report: ``Preset **p1+p2** with overrides `k=v ...```."""
    return f"Preset **{'+'.join(r['presets'])}**" + (f" with overrides `{' '.join(r['sets'])}`" if r["sets"] else "")
