"""Run a study's stages in order, reusing finished stages from the cache.

A pipeline module (``[study] pipeline`` in the study's TOML) provides

* ``STAGES``: a list of :class:`Stage` (name, function, description) run in order;
  each function takes a :class:`StageContext` and returns a flat dict whose
  values are numpy arrays or JSON-able objects (saved atomically by the cache);
* ``write_report(ctx) -> Path``: renders the report from the stage outputs (it is
  cheap and always re-run, so a cached rerun regenerates the report in seconds).

Cache key and device
--------------------
The cache directory is ``<out>/cache/<hash>/`` with ``hash`` = sha256 of the
resolved configuration minus the study's presentational keys (``report.*``).
The number of seeds is part of the configuration, hence of the key. The device
is deliberately *not* part of the key: it says where to compute, not what to
compute, and a configuration's results computed on one device are reused when
the same configuration is asked for on another (GPU kernels may differ from
CPU ones in the last bits and in random streams, so numbers can differ
slightly; ``--force`` recomputes on the device asked for). The device each stage
actually ran on is recorded in the stage's ``_done.json`` and in the report's
Methods.

Stages run in order. A finished stage is loaded, not recomputed; once a stage is
recomputed (``--force``, or it was never finished) every later stage is
recomputed too, so outputs never mix two computations of an upstream stage.
"""
from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import StageCache
from .config import StudyDecl, config_hash, get_key, hashed_config, load_study, resolve_config

__all__ = ["Stage", "StageContext", "RunResult", "run_study", "resolve_device", "default_out_dir"]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[["StageContext"], dict]
    description: str = ""


@dataclass
class StageContext:
    study: StudyDecl
    config: dict
    presets: list[str]
    sets: list[str]
    config_hash: str
    device: str
    out_dir: Path
    cache: StageCache
    log: Callable[[str], None]
    outputs: dict[str, dict] = field(default_factory=dict)
    stage_info: dict[str, dict] = field(default_factory=dict)

    def cfg(self, key: str, default: Any = None) -> Any:
        return get_key(self.config, key, default)

    def __getitem__(self, stage: str) -> dict:
        return self.outputs[stage]


@dataclass
class RunResult:
    report: Path
    results: Path
    cache_dir: Path
    config_hash: str
    computed: list[str]
    loaded: list[str]
    wall_s: float


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for but torch.cuda.is_available() is False")
    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_threads(device: str, threads: int = 0) -> int:
    """torch CPU threads for a study run (the one place a study sets them); returns the count.

    ``threads > 0`` sets that many intra-op threads; ``threads == 0`` (automatic)
    sets 1 on the CPU. sgdbayes parallelizes over models itself: the engine runs
    chunks of seeds in worker threads and the SGLD sampler runs row shards in
    worker threads, one per core, each with one torch thread; torch's OpenMP
    threads on top of that oversubscribe the cores. Measured on the 2-core
    machines this runs on: spectral_dimension's default preset took 79 s with
    1 thread and had not finished after 10 minutes with 2; batched SGLD under
    load ran 5x slower with 2 threads (14.7 s vs 2.7 s for 100 models x 40
    steps). Inter-op threads are limited to 1. Threads change speed (and the
    last bits of float sums), never the configuration: not part of the cache
    key, recorded in the report.
    """
    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started in this process
        pass
    if device != "cpu":
        return torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads > 0 else 1)
    return torch.get_num_threads()


def default_out_dir(decl: StudyDecl, presets: list[str], customised: bool, hash_: str) -> Path:
    """``reports/NAME`` for the default preset; variants go below it.

    ``reports/NAME/variants/<presets>[-<hash8>]`` for any other preset or when
    ``--set``/``--seeds`` changed the configuration, so a variant never
    overwrites the canonical (paper-preset) report.
    """
    base = Path("reports") / decl.name
    if presets == [decl.default_preset] and not customised:
        return base
    label = "+".join(presets)
    if customised:
        label += f"-{hash_[:8]}"
    return base / "variants" / label


def run_study(
    name: str,
    presets: list[str] | None = None,
    sets: list[str] | None = None,
    seeds: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    force: bool = False,
    threads: int = 0,
    cache_root: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    t_start = time.perf_counter()
    decl = load_study(name)
    presets = list(presets) if presets else [decl.default_preset]
    sets = list(sets or [])
    cfg = resolve_config(decl, presets, sets, seeds)
    h = config_hash(cfg, decl.presentational, study=decl.name)
    dev = resolve_device(device)
    customised = bool(sets) or seeds is not None
    out_dir = Path(out) if out is not None else default_out_dir(decl, presets, customised, h)
    cache_root = Path(cache_root) if cache_root is not None else (
        (Path("reports") / decl.name / "cache") if out is None else out_dir / "cache"
    )
    cache = StageCache(cache_root / h)
    cache.prepare(cfg, hashed_config(cfg, decl.presentational),
                  {"study": decl.name, "presets": presets, "sets": sets})
    pipeline = importlib.import_module(decl.pipeline)
    ctx = StageContext(decl, cfg, presets, sets, h, dev, out_dir, cache, log)

    log(f"[{decl.name}] presets={'+'.join(presets)} seeds={get_key(cfg, decl.seeds_key) if decl.seeds_key else '-'} "
        f"device={dev} config-hash={h}")
    threads = configure_threads(dev, threads)
    log(f"[{decl.name}] cache: {cache.root}; torch threads: {threads}")
    stages: list[Stage] = list(pipeline.STAGES)
    computed: list[str] = []
    loaded: list[str] = []
    recompute = force
    for i, st in enumerate(stages, 1):
        tag = f"[{i}/{len(stages)} {st.name}]"
        if not recompute and cache.is_done(st.name):
            ctx.outputs[st.name] = cache.load(st.name)
            ctx.stage_info[st.name] = {**cache.info(st.name), "cached": True}
            loaded.append(st.name)
            log(f"{tag} loaded from cache (computed in {ctx.stage_info[st.name].get('wall_s', float('nan')):.1f} s "
                f"on {ctx.stage_info[st.name].get('device', '?')})")
            continue
        recompute = True  # everything downstream of a recomputed stage is recomputed
        log(f"{tag} {st.description} ...")
        t0 = time.perf_counter()
        try:
            outputs = st.run(ctx)
        except Exception:
            log(f"{tag} FAILED; finished stages stay cached, rerun to resume:\n{traceback.format_exc(limit=3)}")
            raise
        wall = time.perf_counter() - t0
        info = {"wall_s": wall, "device": dev, "stage": st.name, "torch_threads": threads}
        cache.save(st.name, outputs, info)
        ctx.outputs[st.name] = cache.load(st.name)  # downstream sees exactly what is cached
        ctx.stage_info[st.name] = {**info, "cached": False}
        computed.append(st.name)
        log(f"{tag} done in {wall:.1f} s")

    t0 = time.perf_counter()
    ctx.stage_info["_run"] = {"wall_s_before_report": time.perf_counter() - t_start}
    report = Path(pipeline.write_report(ctx))
    log(f"[report] written in {time.perf_counter() - t0:.1f} s")
    wall = time.perf_counter() - t_start
    log(f"[{decl.name}] done in {wall:.1f} s; report: {report}")
    return RunResult(report, report.parent / "results.json", cache.root, h, computed, loaded, wall)
