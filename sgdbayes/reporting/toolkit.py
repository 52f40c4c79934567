"""The report toolkit every study report is built from (numbers formatted by :mod:`.format`).

* :func:`header`: the title and the opening line (preset, seeds, device, config hash, time).
* :func:`verdict_table`: the table of :class:`~sgdbayes.stats.results.HypothesisTest` results:
  id, claim, statistic, estimate [interval], p-value with its test, verdict, reason.
* :func:`methods_section`: every setting, the seeds, device, executor, versions and the wall time
  of every stage.
* :func:`versions_table`, :func:`timings_table`, :func:`md_table`.
* :func:`package_versions`: installed versions for the Methods section.
* :func:`save_figure`, :func:`write_text`, :func:`write_results_json`: atomic writes (temporary
  sibling, then rename) of files with mode ``0666 & ~umask`` (0644 under the usual umask 022;
  ``tempfile.mkstemp`` alone would leave 0600); results are stored with ``Result.to_dict`` and
  read back as results by :func:`read_results_json`.
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
from .format import MISSING, fmt_estimate, fmt_level, fmt_num, fmt_pvalue

__all__ = ["header", "verdict_table", "methods_section", "versions_table", "timings_table", "md_table",
           "package_versions", "save_figure", "write_text", "write_results_json", "read_results_json", "jsonable",
           "file_mode"]

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- tables

def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through :func:`~.format.fmt_num` (text as given)."""
    from tabulate import tabulate

    body = [[fmt_num(c) for c in r] for r in rows]
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
        rows.append([t.id, _escape(t.claim), _escape(t.statistic), est, _escape(fmt_pvalue(t.pvalue, t.test)),
                     f"**{v}**" if bold_verdict else v, _escape(t.reason)])
    return md_table(["hypothesis", "claim", "statistic", "estimate [interval]", "p-value (test)", "verdict",
                     "reason"], rows)


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
