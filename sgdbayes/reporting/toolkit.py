"""The report toolkit every study report is built from (numbers formatted by :mod:`.format`).

* :func:`header`: the title and the opening line (preset, seeds, device, config hash, time).
* :func:`verdict_table`: the table of :class:`~sgdbayes.stats.results.HypothesisTest` results:
  id, claim, statistic, estimate [interval], p-value with its test, verdict, reason.
* :func:`methods_section`: every setting, the seeds, device, executor, versions and the wall time
  of every stage.
* :func:`versions_table`, :func:`timings_table`, :func:`md_table`.
* :func:`package_versions`: installed versions for the Methods section.
* :func:`per_run_table`, :func:`summary_cell`, :func:`regressions_table`: the per-run view of
  H1-H3, a per-run quantity summarized across runs, a table of cross-run regressions.
* :func:`save_figure`, :func:`write_text`, :func:`write_results_json`: atomic writes (temporary
  sibling, then rename) of files with mode ``0666 & ~umask`` (0644 under the usual umask 022;
  ``tempfile.mkstemp`` alone would leave 0600); results are stored with ``Result.to_dict`` and
  read back as results by :func:`read_results_json`.
* :func:`write_study_report`: the one way a study writes its report: ``build`` gathers the stored
  stage outputs into one mapping (Results kept as Results), figures are drawn from stored numbers
  only, ``results.json`` is written, and ``report.md`` is rendered from the file as read back, so
  the text can only show what ``results.json`` holds. :func:`write_skipped_report` is the report
  of a study whose later stages had nothing to work on; :func:`study_header` the keys every
  study's results.json starts with; :func:`divergence_sentence` the "k of K runs diverged" line;
  :func:`executor_sentence` how the sharded stages were computed (Methods' executor line).

Reports may call a stored Result's own vocabulary (``conf_int``, ``estimates``, ``to_frame``):
those are the stats layer's numbers. They never compute a statistic of their own, refit a model
or reload data (docs/architecture.md).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from ..stats.results import jsonable, revive
from .format import MISSING, fmt_estimate, fmt_level, fmt_num, fmt_p, fmt_pvalue, p_header

__all__ = ["header", "verdict_table", "methods_section", "versions_table", "timings_table", "md_table",
           "package_versions", "save_figure", "write_text", "write_results_json", "read_results_json", "jsonable",
           "file_mode", "verdict_notes", "per_run_table", "summary_cell", "regressions_table", "apply_style", "study_header",
           "stage_timings", "preset_label", "divergence_sentence", "write_study_report", "write_skipped_report",
           "executor_summary", "executor_sentence"]

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- tables

def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through :func:`~.format.fmt_num` (text as given, with ``|``
    escaped so that it cannot split a cell)."""
    from tabulate import tabulate

    body = [[_escape(fmt_num(c)) for c in r] for r in rows]
    return tabulate(body, headers=list(headers), tablefmt="github", disable_numparse=True, missingval=MISSING)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdict_table(tests: Sequence, bold_verdict: bool = True) -> str:
    """The verdict table of a report: one row per :class:`HypothesisTest`.

    Columns: hypothesis (id), claim, statistic, estimate [interval] (with its coverage),
    p-value (with the test behind it; "—" when the verdict used no p-value), verdict, reason.
    """
    rows = []
    for t in tests:
        est = fmt_estimate(t.estimate, t.ci_low, t.ci_high)
        if est != fmt_num(t.estimate):
            est += f" ({fmt_level(t.level)})"
        v = str(t.verdict)
        rows.append([t.id, t.claim, t.statistic, est, fmt_pvalue(t.pvalue, t.test),
                     f"**{v}**" if bold_verdict else v, t.reason])
    return md_table(["hypothesis", "claim", "statistic", "estimate [interval]", "p-value (test)", "verdict",
                     "reason"], rows)


def verdict_notes(tests: Sequence) -> str:
    """How the verdicts above were reached: the one rule, and the points of it that concern the
    hypotheses present (H1-H3 with few runs, the crossover, H5's TOST form and reference, H6/H7)."""
    ids = {t.id.split("-")[0] for t in tests} | {t.id for t in tests}
    notes = ["Every verdict comes from one rule (docs/methods.md#verdicts): *supported* when the whole interval lies "
             "on the claim's side of the threshold and, where the test has a p-value, p < 1 − level; *contradicted* "
             "when it lies wholly on the other side; *not supported* otherwise; *untestable* when no estimate or "
             "interval exists; *inconclusive* only for a stated cause."]
    if ids & {"H1", "H2", "H3"}:
        notes.append("H1–H3 across runs need at least 3 runs (else untestable: the median has no bootstrap interval).")
    if "crossover" in ids:
        notes.append("The crossover is decided by its interval alone (contradicted when it lies above 0).")
    h5 = [t for t in tests if t.id.startswith("H5")]
    if h5:
        one_sided = h5[0].details.get("bootstrap_level") or (1 + h5[0].level) / 2
        notes.append("H5 is an equivalence claim decided in TOST form: the interval shown is the pair of one-sided "
                     f"{fmt_level(one_sided)} bootstrap bounds (a {fmt_level(h5[0].level)} interval); the two-sided "
                     "intervals of every divergence and "
                     "the G-test of homogeneity (whose H0 is the claim itself, so it is not H5's p-value) are in "
                     "results.json (the test's details). H5 against SGLD is inconclusive unless the SGLD reference "
                     "converged.")
    if ids & {"H6", "H7"}:
        notes.append("H6 and H7 also need their one-sided p-value below 1 − level to be supported; H7's p-value is "
                     "one-sided (H0: ρ ≥ 0; the two-sided one is in results.json).")
    return "**How the verdicts are reached.** " + " ".join(notes)


def versions_table(versions: Mapping[str, str]) -> str:
    return md_table(["package", "version"], [[k, v] for k, v in versions.items()])


def timings_table(timings: Mapping[str, Mapping], total: bool = True) -> str:
    """Wall time per stage: ``{stage: {"wall_s", "device", "cached"}}`` (missing keys show "—")."""
    rows = [[s, fmt_num(t.get("wall_s")), t.get("device"), "cache" if t.get("cached") else "computed now"]
            for s, t in timings.items()]
    if total and timings:
        wall = [float(t["wall_s"]) for t in timings.values() if t.get("wall_s") is not None]
        rows.append(["total (stages when computed)", fmt_num(sum(w for w in wall if math.isfinite(w))), "", ""])
    return md_table(["stage", "wall s", "device", "this run"], rows)


def _settings_lines(settings: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _settings_lines(v, key + ".")
        elif isinstance(v, (list, tuple)):
            out.append(f"`{key}` = [{', '.join(fmt_num(x) for x in v)}]")
        else:
            out.append(f"`{key}` = {fmt_num(v)}")
    return out


def methods_section(settings: Mapping, *, seeds: str, device: str, executor: str, versions: Mapping[str, str],
                    timings: Mapping[str, Mapping], notes: Sequence[str] = (), title: str = "## Methods") -> str:
    """The Methods section: every setting (nested mappings flattened to dotted keys), the seeds,
    device and executor, ``notes`` (method sentences), the versions and the wall time per stage."""
    lines = [title, "", f"- **Seeds**: {seeds}", f"- **Device**: {device}", f"- **Executor**: {executor}"]
    lines += [f"- {n}" for n in notes]
    lines += ["", "**Every setting**:", ""]
    lines += [f"- {s}" for s in _settings_lines(settings)]
    lines += ["", "**Versions**:", "", versions_table(versions), "", "**Wall time per stage**:", "",
              timings_table(timings), ""]
    return "\n".join(lines)


def header(title: str, *, preset: str, device: str, config_hash: str, generated: str, seeds: Optional[str] = None,
           wall_total_s: Optional[float] = None) -> str:
    """The report's first lines: ``# title`` and one sentence on what produced it."""
    parts = [preset]
    if seeds:
        parts.append(seeds)
    parts += [f"device {device}", f"config hash `{config_hash}`", f"generated {generated}"]
    if wall_total_s is not None:
        parts.append(f"total wall time {fmt_num(wall_total_s)} s")
    return (f"# {title}\n\n" + "; ".join(parts)
            + ". Every number below is read from `results.json` beside this file.\n")


def package_versions(packages: Iterable[str]) -> dict:
    """``{"python": version, package: installed version or "not installed"}``."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --------------------------------------------------------------------------- files

def file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` would give a new file (0644 under umask 022).

    Linux reports the umask in /proc/self/status; elsewhere it is read (and restored at once)
    with ``os.umask``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    um = os.umask(0o022)
    os.umask(um)
    return 0o666 & ~um


@contextlib.contextmanager
def _atomic_path(path: PathLike):
    """A temporary sibling of ``path`` with the umask's mode, renamed onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (fsync, rename), mode ``0666 & ~umask``."""
    with _atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def save_figure(fig, path: PathLike, dpi: int = 120, close: bool = True, **kwargs) -> Path:
    """``fig.savefig`` atomically (format from the suffix), mode ``0666 & ~umask``; closes ``fig``."""
    path = Path(path)
    kwargs.setdefault("bbox_inches", "tight")
    try:
        with _atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", **kwargs)
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path


def write_results_json(path: PathLike, results: Mapping) -> Path:
    """Write ``results`` (a mapping that may hold Results anywhere) as strict JSON, atomically."""
    return write_text(path, json.dumps(jsonable(results), indent=1, ensure_ascii=False, allow_nan=False) + "\n")


def read_results_json(path: PathLike) -> dict:
    """The mapping :func:`write_results_json` wrote, with every stored Result rebuilt."""
    return revive(json.loads(Path(path).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- study tables

def per_run_table(tests: Sequence) -> str:
    """The per-run view of the across-run H1-H3 tests (``details`` of
    :func:`~sgdbayes.stats.verdicts.as_hypothesis_test`): runs tested and excluded, runs whose own
    one-sided test passes after Holm, share of runs whose one-sided upper bound lies below the
    threshold, and the exact sign test. Tests without a per-run view are left out."""
    rows = []
    for t in tests:
        d = t.details
        if "n_support_holm" not in d:
            continue
        share = d.get("share_upper_below")
        rows.append([t.id, t.window or MISSING, t.n_tested, t.n_excluded, d["n_support_holm"],
                     MISSING if share is None else f"{fmt_num(100 * share)} %",
                     d["n_below"], fmt_p(d.get("sign_p"))])
    return md_table(["hypothesis", "window", "runs tested", "excluded", "pass Holm", "upper bound below threshold",
                     "runs below 0", f"sign test {p_header('P(value < 0) ≤ 1/2')}"], rows)


def summary_cell(s) -> str:
    """``"median [CI] (mean [CI], sd, n)"`` of a :class:`~sgdbayes.stats.summaries.RunSummary`."""
    if s is None or s.n == 0:
        return MISSING
    ci = s.conf_int()
    return (f"{fmt_estimate(s.median, s.median_ci_low, s.median_ci_high)} (mean "
            f"{fmt_estimate(s.mean, ci.loc['mean', 'ci_low'], ci.loc['mean', 'ci_high'])}, sd {fmt_num(s.sd)}, "
            f"n = {s.n})")


def regressions_table(reg) -> str:
    """A :class:`~sgdbayes.stats.regression.Regressions` table: y, x, kind, n, estimate [interval],
    p-value (its method), Holm-adjusted p-value, note."""
    rows = [[r.y, r.x, r.kind, r.n, fmt_estimate(r.estimate, r.ci_low, r.ci_high),
             fmt_pvalue(r.pvalue, r.p_method or None), fmt_p(r.pvalue_holm), r.note or ""]
            for r in reg.frame.itertuples(index=False)]
    return md_table(["y", "x", "kind", "n", f"estimate [{fmt_level(reg.level)} interval]", "p-value (method)",
                     "p-value (Holm)", "note"], rows)


def apply_style() -> None:
    """The figure style of every report (seaborn's whitegrid when seaborn is installed)."""
    try:
        import seaborn as sns
    except ImportError:  # pragma: no cover - seaborn is optional for figures
        return
    sns.set_theme(style="whitegrid", context="paper")


# --------------------------------------------------------------------------- study reports

def stage_timings(ctx) -> dict:
    """``{stage: {wall_s, device, cached, torch_threads}}`` of a study run (as the stages were computed)."""
    return {s: {"wall_s": float(info.get("wall_s", float("nan"))), "device": info.get("device"),
                "cached": bool(info.get("cached", False)), "torch_threads": info.get("torch_threads")}
            for s, info in ctx.stage_info.items() if not s.startswith("_")}


def study_header(ctx, packages: Iterable[str] = ()) -> dict:
    """The keys every study's results.json starts with: study, title, presets, sets, config hash,
    the resolved configuration, device, torch threads, time, versions, stage timings."""
    import time

    from .._fused_mlp import c_kernel_available

    timing = stage_timings(ctx)
    threads = sorted({int(t["torch_threads"]) for t in timing.values() if t["torch_threads"] is not None})
    versions = package_versions(["sgdbayes", "torch", "numpy", "scipy", "statsmodels", "pandas", "matplotlib",
                                 *packages])
    # which implementation computed the MLP gradients (same numbers up to round-off)
    versions["sgdbayes MLP kernel"] = "C (_ckernels.c)" if c_kernel_available() else "numpy/torch"
    return {"study": ctx.study.name, "title": ctx.study.title, "presets": list(ctx.presets), "sets": list(ctx.sets),
            "config_hash": ctx.config_hash, "config": ctx.config_dict, "device": ctx.device,
            "torch_threads": "/".join(map(str, threads)) or MISSING,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions, "timing": timing,
            "executor": executor_summary(ctx)}


def executor_summary(ctx) -> dict:
    """``{stage: how it was computed}`` of the sharded stages (executor, shards, seeds, workers, retries),
    as recorded when each stage was computed."""
    return {s: dict(info["executor"]) for s, info in ctx.stage_info.items()
            if not s.startswith("_") and isinstance(info.get("executor"), Mapping)}


def executor_sentence(stages: Optional[Mapping[str, Mapping]]) -> str:
    """The Methods' executor line from :func:`executor_summary` (docs/scale_out.md)."""
    stages = dict(stages or {})
    tail = ("Shards are merged by seed id; a seed's numbers do not depend on the shard, worker or executor "
            "that computed it (docs/scale_out.md).")
    if all(e.get("executor") == "local" and e.get("shards") == e.get("cells") for e in stages.values()):
        return "local (this process; each sharded stage as one batched computation per cell)"
    parts = []
    for s, e in stages.items():
        size = f"≤ {e['shard_size']} seeds each" if e.get("shard_size") else "one per cell"
        text = f"`{s}` on {e.get('description')}: {e.get('shards')} shards ({size}) of {e.get('seeds')} seeds"
        if e.get("computed"):
            text += f", {e['computed']} computed on {e.get('workers')} worker(s)"
        if e.get("reused"):
            text += f", {e['reused']} reused from the cache of an interrupted run"
        text += f", up to {e.get('retries')} retries per shard"
        if e.get("retried"):
            text += f" ({e['retried']} used)"
        parts.append(text)
    return "; ".join(parts) + ". Every other stage ran in this process. " + tail


def preset_label(r: Mapping) -> str:
    """``Preset **p1+p2** with overrides `k=v ...```: the opening words of every study report."""
    return f"Preset **{'+'.join(r['presets'])}**" + (f" with overrides `{' '.join(r['sets'])}`" if r["sets"] else "")


def divergence_sentence(d: Optional[Mapping]) -> str:
    """``"k of K runs diverged (at steps ...)"`` from a train stage's ``divergence`` summary."""
    if not d:
        return ""
    K, k = d["n_runs"], d["n_diverged"]
    if k == 0:
        return f"None of the {K} runs diverged."
    shown = ", ".join(f"{r} at step {t}" for r, t in list(zip(d["runs"], d["steps"]))[:10])
    more = f", and {k - 10} more" if k > 10 else ""
    tail = "no later stage could run." if d.get("all_diverged") else "they are left out of every later stage."
    return f"**{k} of {K} runs diverged** (loss or displacement no longer finite: {shown}{more}); {tail}"


def write_study_report(ctx, build, figures, render) -> Path:
    """Write a study's results.json, figures and report.md into ``ctx.out_dir``.

    ``build(ctx) -> dict`` gathers the stored stage outputs (with :func:`study_header`'s keys);
    ``figures(ctx, results, figdir) -> [paths]`` draws stored numbers only; ``render(stored) -> str``
    renders the mapping read back from results.json (Results rebuilt). Adds ``figures`` (paths
    relative to the report), ``timing_report_s`` and ``wall_total_s`` (stages + report).
    """
    import time

    out = Path(ctx.out_dir)
    t0 = time.perf_counter()
    results = build(ctx)
    figs = figures(ctx, results, out / "figures")
    results["figures"] = [str(Path(p).relative_to(out)) for p in figs]
    results["timing_report_s"] = time.perf_counter() - t0
    results["wall_total_s"] = float(sum(t["wall_s"] for t in results["timing"].values()) + results["timing_report_s"])
    write_results_json(out / "results.json", results)
    write_text(out / "report.md", render(read_results_json(out / "results.json")))
    return out / "report.md"


def write_skipped_report(ctx, divergence: Mapping, reason: str) -> Path:
    """The report of a study whose later stages had nothing to work on (e.g. every seed diverged)."""
    def build(ctx):
        return {**study_header(ctx), "divergence": divergence, "skipped": reason, "hypotheses": []}

    def render(r: Mapping) -> str:
        lines = [header(r["title"], preset=preset_label(r), device=r["device"], config_hash=r["config_hash"],
                        generated=r["generated"]),
                 "## Verdicts", "", f"No hypothesis could be tested: {r['skipped']}.", "",
                 divergence_sentence(r["divergence"]), "",
                 "Every later stage was skipped. A learning rate that is too large is the usual cause: "
                 "lower it (e.g. `--set train.lr=...`) and run the study again (docs/run_a_study.md).", "",
                 "## Timing", "", timings_table(r["timing"]), ""]
        return "\n".join(lines)

    return write_study_report(ctx, build, lambda ctx, r, figdir: [], render)
