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

__all__ = ["write_study_report", "write_skipped_report", "package_versions", "preset_label", "divergence_sentence"]


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


def divergence_sentence(d: dict | None) -> str:
    """``"k of K runs diverged (at steps ...)"`` from a train stage's ``divergence`` dict."""
    if not d:
        return ""
    K, k = d["n_runs"], d["n_diverged"]
    if k == 0:
        return f"None of the {K} runs diverged."
    shown = ", ".join(f"{r} at step {t}" for r, t in list(zip(d["runs"], d["steps"]))[:10])
    more = f", and {k - 10} more" if k > 10 else ""
    tail = ("no later stage could run." if d.get("all_diverged") else "they are left out of every later stage.")
    return f"**{k} of {K} runs diverged** (loss or displacement no longer finite: {shown}{more}); {tail}"


def write_skipped_report(ctx, divergence: dict, reason: str) -> Path:
    """The report of a study whose later stages had nothing to work on (e.g. every seed diverged)."""
    def build(ctx):
        return {"study": ctx.study.name, "title": ctx.study.title, "presets": ctx.presets, "sets": ctx.sets,
                "config_hash": ctx.config_hash, "config": ctx.config_dict, "device": ctx.device,
                "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "versions": package_versions(["sgdbayes", "torch", "numpy"]),
                "timing": {st: {"wall_s": float(info.get("wall_s", float("nan"))), "device": info.get("device"),
                                "cached": bool(info.get("cached", False))}
                           for st, info in ctx.stage_info.items() if not st.startswith("_")},
                "divergence": divergence, "skipped": reason, "hypotheses": []}

    def render(r: dict) -> str:
        lines = [f"# {r['title']}", "",
                 preset_label(r) + f"; device {r['device']}; config hash `{r['config_hash']}`; generated "
                 f"{r['generated']}. Every number below is read from `results.json` beside this file.", "",
                 "## Verdicts", "",
                 f"No hypothesis could be tested: {r['skipped']}.", "",
                 divergence_sentence(r["divergence"]), "",
                 "Every later stage was skipped. A learning rate that is too large is the usual cause: "
                 "lower it (e.g. `--set train.lr=...`) and run the study again.", "",
                 "## Timing", "",
                 *[f"- {st}: {t['wall_s']:.1f} s on {t['device']} ({'cache' if t['cached'] else 'computed now'})"
                   for st, t in r["timing"].items()], ""]
        return "\n".join(lines)

    return write_study_report(ctx, build, lambda ctx, r, figdir: [], render)
