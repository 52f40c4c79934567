"""``python -m sgdbayes.compare STUDY``: one table of every computed variant of a study.

Reads each ``results.json`` of the study under ``reports/STUDY/`` (or ``--root DIR``): the
default report in the folder itself, ``variants/*/`` and any other direct subfolder holding a
study output of that study. Writes ``compare.md`` (atomically) and ``compare.png`` into the root:

* a table with one row per hypothesis (the ids shared by every study, H1 ... H7 and their
  suffixed variants, then the study's own claims) and one column per variant; a cell is the
  estimate [interval] and the verdict of that variant's test, ``—`` where the variant has no
  such test;
* each variant's configuration differences from the study's default preset (the keys whose
  resolved value differs), and its presets and ``--set`` overrides as run;
* a figure of every hypothesis' estimate and interval across the variants.

Exit status 2 (a clear message, no traceback) for an unknown study or a root without variants.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

__all__ = ["Variant", "find_variants", "config_differences", "compare_table", "write_compare", "main"]


@dataclass(frozen=True)
class Variant:
    """One computed variant: its ``label`` (folder name; the default report is ``default (PRESET)``),
    ``path`` (folder), and the ``results`` read back from its results.json."""

    label: str
    path: Path
    results: dict


def _read(path: Path) -> Optional[dict]:
    from .reporting.toolkit import read_results_json

    try:
        return read_results_json(path)
    except (OSError, ValueError):
        return None


def find_variants(study: str, root: Path) -> list[Variant]:
    """Every study output of ``study`` directly in ``root``, in ``root/variants/*`` and in
    ``root/*`` (the default report first, then by label)."""
    found: list[Variant] = []
    candidates = [root, *sorted(p for p in (root / "variants").glob("*") if p.is_dir()),
                  *sorted(p for p in root.glob("*") if p.is_dir() and p.name not in ("variants", "cache", "figures"))]
    seen = set()
    for folder in candidates:
        f = folder / "results.json"
        if not f.is_file() or f.resolve() in seen:
            continue
        seen.add(f.resolve())
        r = _read(f)
        if r is None or r.get("study") != study or "hypotheses" not in r:
            continue
        label = f"default ({'+'.join(r.get('presets', []))})" if folder == root else folder.name
        found.append(Variant(label, folder, r))
    return found


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def config_differences(reference: dict, config: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (reference value, this value)}`` for every flattened key whose value differs."""
    a, b = _flat(reference), _flat(config)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _order(hid: str) -> tuple:
    m = re.match(r"H(\d+)(.*)", hid)
    return (0, int(m.group(1)), m.group(2)) if m else (1, 0, hid)


def _cell(h) -> str:
    from ._format import fmt_estimate

    return f"{fmt_estimate(h.estimate, h.ci_low, h.ci_high)} **{h.verdict}**"


def compare_table(variants: list[Variant]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison: one row per hypothesis id, one column per variant."""
    by = [{h.id: h for h in v.results["hypotheses"]} for v in variants]
    ids = sorted({i for b in by for i in b}, key=_order)
    rows = [[i, *(_cell(b[i]) if i in b else "—" for b in by)] for i in ids]
    return ["hypothesis", *(f"`{v.label}`" for v in variants)], rows


def _figure(variants: list[Variant], path: Path, dpi: int = 110) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .reporting.toolkit import apply_style, save_figure

    apply_style()
    by = [{h.id: h for h in v.results["hypotheses"]} for v in variants]
    ids = sorted({i for b in by for i in b}, key=_order)
    cols = min(4, max(1, len(ids)))
    nrows = max(1, -(-len(ids) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    x = np.arange(len(variants))
    for ax, hid in zip(axes.ravel(), ids):
        for j, b in enumerate(by):
            h = b.get(hid)
            if h is None or not np.isfinite(h.estimate):
                continue
            lo = h.ci_low if np.isfinite(h.ci_low) else h.estimate
            hi = h.ci_high if np.isfinite(h.ci_high) else h.estimate
            ax.errorbar([j], [h.estimate], yerr=[[h.estimate - lo], [hi - h.estimate]], fmt="o", ms=4, capsize=3)
            ax.annotate(str(h.verdict), (j, h.estimate), fontsize=6, xytext=(3, 3), textcoords="offset points")
        thr = next((b[hid].threshold for b in by if hid in b), 0.0)
        ax.axhline(thr, color="k", ls="--", lw=0.8)
        ax.set_title(hid, fontsize=9)
        ax.set_xticks(x)
        ax.set_xlim(-0.5, len(variants) - 0.5)
        ax.set_xticklabels([v.label for v in variants], rotation=30, ha="right", fontsize=6)
    for ax in axes.ravel()[len(ids):]:
        ax.set_visible(False)
    fig.suptitle("estimate and interval of each hypothesis across variants (dashed: the claim's threshold)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def _differences_section(study: str, variants: list[Variant]) -> list[str]:
    from ._format import fmt_num
    from .runner.config import load_study, resolve_config
    from .runner.typed import config_to_dict

    decl = load_study(study)
    ref = config_to_dict(resolve_config(decl, [decl.default_preset]))
    L = ["## Configuration of each variant\n",
         f"Differences from the default preset **{decl.default_preset}** as declared in studies/{study}.toml "
         f"(key: default → this variant).\n"]
    for v in variants:
        r = v.results
        sets = " ".join(f"`--set {s}`" for s in r.get("sets", [])) or "none"
        diff = config_differences(ref, r.get("config", {}))
        shown = "; ".join(f"`{k}`: {_show(a)} → {_show(b)}" for k, (a, b) in diff.items()) or "none (the default)"
        L.append(f"- `{v.label}` (presets {'+'.join(r.get('presets', []))}, overrides {sets}, config hash "
                 f"`{r.get('config_hash', '')}`, wall time {fmt_num(r.get('wall_total_s'))} s): {shown}")
    return L + [""]


def _show(v: Any) -> str:
    from ._format import fmt_num

    if isinstance(v, float):
        return fmt_num(v)
    return "unset" if v is None else str(v)


def write_compare(study: str, root: Path) -> Path:
    """Write ``root/compare.md`` and ``root/compare.png`` for the variants of ``study`` under ``root``;
    ValueError when there are none."""
    from .reporting.toolkit import md_table, write_text

    variants = find_variants(study, root)
    if not variants:
        raise ValueError(f"no computed variant of {study!r} under {root} (looked for results.json in {root}, "
                         f"{root / 'variants'}/* and {root}/*); run `python -m sgdbayes.study {study}` first")
    head, rows = compare_table(variants)
    fig = _figure(variants, root / "compare.png")
    text = "\n".join([
        f"# {study}: every computed variant\n",
        f"{len(variants)} variant(s) found under `{root}`. A cell is the estimate [interval] of the hypothesis' "
        f"statistic and its verdict (docs/methods.md#verdicts); — where the variant has no such test. Ids are the "
        f"same in every study (docs/methods.md#the-hypotheses).\n",
        "## Hypotheses across variants\n", md_table(head, rows), "",
        *_differences_section(study, variants),
        f"![estimates and intervals across variants]({fig.name})\n",
        "*Each panel: one hypothesis; a point per variant with its interval and verdict; dashed line: the "
        "threshold of the claim.*\n"])
    return write_text(root / "compare.md", text)


def main(argv: list[str] | None = None) -> int:
    from .runner.config import ConfigError, list_studies

    p = argparse.ArgumentParser(prog="python -m sgdbayes.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="study name (python -m sgdbayes.study --list)")
    p.add_argument("--root", metavar="DIR", default=None, help="folder holding the study's outputs "
                   "(default: reports/STUDY)")
    args = p.parse_args(argv)
    try:
        if args.study not in list_studies():
            raise ConfigError(f"unknown study {args.study!r}; valid studies: {', '.join(list_studies())}")
        root = Path(args.root) if args.root else Path("reports") / args.study
        if not root.is_dir():
            raise ConfigError(f"--root {root}: no such folder; run `python -m sgdbayes.study {args.study}` first")
        out = write_compare(args.study, root)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Comparison: {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
