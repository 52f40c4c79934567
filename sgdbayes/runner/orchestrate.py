"""Run a study's stages in order, reusing finished stages from the cache.

A pipeline module (``[study] pipeline`` in the study's TOML) provides

* ``CONFIG``: its typed configuration class (a :class:`~sgdbayes.runner.typed.StudyConfig`
  whose fields are the TOML sections); the runner builds it once, ``ctx.config`` is it;
* ``STAGES``: a list of :class:`Stage` (name, function, description) run in order; each
  function takes a :class:`StageContext` and returns a flat dict whose values are numpy
  arrays, results (:class:`~sgdbayes.stats.results.Result`, stored with ``to_dict`` and
  rebuilt on load) or plain JSON values (saved atomically by the cache);
* ``write_report(ctx) -> Path``: renders the report from the stage outputs (cheap and
  always re-run, so a cached rerun regenerates the report in seconds).

Cache key and device
--------------------
The cache directory is ``<cache>/<hash>/`` with ``hash`` = sha256 of the typed
configuration's canonical dict minus the study's presentational sections (``report``),
plus the content hashes of local input files (``data.path``). The number of seeds is part
of the configuration, hence of the key. The device is deliberately *not* part of the key:
it says where to compute, not what to compute, and a configuration's results computed on
one device are reused when the same configuration is asked for on another (GPU kernels may
differ from CPU ones in the last bits and in random streams; ``--force`` recomputes on the
device asked for). The device each stage ran on is recorded in its ``_done.json`` and in
the report's Methods.

Stages run in order. A finished stage is loaded when its recorded identity (config hash,
sgdbayes version, the computations of the earlier stages it read) matches this run; else,
or when its files fail their checks, it is recomputed, and so is every later stage.

Concurrency: the output folder and the cache entry are each held under an OS file lock for
the whole run (see :mod:`sgdbayes.outdir`); a second process waits for the first.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .cache import CacheEntryError, StageCache
from .config import (
    EXECUTOR_SECTION,
    StudyDecl,
    config_hash,
    get_path,
    hashed_config,
    load_study,
    parse_set,
    resolve_config,
    resolve_executor,
)
from .device import configure_threads, resolve_device
from .executors import Executor, ExecutorConfig, make_executor
from .fingerprint import file_fingerprints, save_memo
from .sharded import ShardRun, run_sharded_stage
from .shards import Sharding
from .typed import ConfigError, config_to_dict

__all__ = ["Stage", "StageContext", "RunResult", "run_study", "resolve_device", "configure_threads",
           "default_out_dir"]


@dataclass(frozen=True)
class Stage:
    """A named step of a study: ``run(ctx) -> outputs``, or ``shard`` (a
    :class:`~sgdbayes.runner.shards.Sharding`) for a stage computed as shards of seeds on the run's
    executor (docs/scale_out.md). ``skip(ctx)`` (optional) returns a reason when the stage has
    nothing to work on (e.g. every seed diverged); the stage's output is then
    ``{"skipped": reason}`` and the report says so."""

    name: str
    run: Optional[Callable[["StageContext"], dict]] = None
    description: str = ""
    skip: Optional[Callable[["StageContext"], Optional[str]]] = None
    shard: Optional[Sharding] = None

    def __post_init__(self):
        if (self.run is None) == (self.shard is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of run= and shard=")


@dataclass
class StageContext:
    """What a stage and the report see: the typed ``config`` and the earlier stages' outputs."""

    study: StudyDecl
    config: Any  # the pipeline's CONFIG instance
    presets: list[str]
    sets: list[str]
    config_hash: str
    device: str
    out_dir: Path
    cache: StageCache
    log: Callable[[str], None]
    outputs: dict[str, dict] = field(default_factory=dict)
    stage_info: dict[str, dict] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # local input file -> sha256

    @property
    def config_dict(self) -> dict:
        """The canonical (JSON-able) nested dict of ``config``, as stored in results.json."""
        from ..stats.results import jsonable

        return jsonable(config_to_dict(self.config))

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
    shards: dict[str, dict] = field(default_factory=dict)  # sharded stages computed now: executor, shards, workers


def default_out_dir(decl: StudyDecl, presets: list[str], customised: bool, hash_: str,
                    sets: list[str] | tuple[str, ...] = (), seeds: int | None = None) -> Path:
    """``reports/NAME`` for the default preset; variants go below it.

    ``reports/NAME/variants/<label>`` for any other preset or when ``--set``/``--seeds`` changed the
    configuration, so a variant never overwrites the canonical (default-preset) report; the label
    is readable, the presets plus the changed keys (:func:`sgdbayes.runner.variants.variant_label`).
    """
    from .variants import variant_label

    base = Path("reports") / decl.name
    if presets == [decl.default_preset] and not customised:
        return base
    return base / "variants" / variant_label(presets, sets, seeds, decl.seeds_key, hash_)


def _mismatch(info: dict, expected: dict) -> str | None:
    """Why a cached stage may not be reused with this run (None: it may)."""
    ident = info.get("identity")
    if not isinstance(ident, dict):
        return "it records no identity (written by an older sgdbayes)"
    if ident.get("config_hash") != expected["config_hash"]:
        return "it was computed for another configuration"
    if ident.get("sgdbayes") != expected["sgdbayes"]:
        return f"it was computed by sgdbayes {ident.get('sgdbayes')}, this is {expected['sgdbayes']}"
    if ident.get("inputs") != expected["inputs"]:
        return "the earlier stages it was computed from have been recomputed since (an interrupted --force?)"
    return None


def _compute(ctx: StageContext, st: Stage, expected: dict, threads: int, shard_run: ShardRun) -> tuple[dict, dict]:
    """A stage's outputs and what its ``_done.json`` records about how they were computed."""
    if st.shard is None:
        return st.run(ctx), {"device": ctx.device, "torch_threads": threads}
    outputs, how = run_sharded_stage(ctx, st, expected, shard_run)
    threads_used = how.pop("torch_threads")
    return outputs, {"device": "/".join(how.pop("devices")) or ctx.device,
                     "torch_threads": threads_used[0] if len(threads_used) == 1 else threads, "executor": how}


def _run_stages(ctx: StageContext, stages: list[Stage], force: bool, threads: int, pipeline_config,
                shard_run: ShardRun) -> tuple:
    from .. import __version__

    computed, loaded = [], []
    computations: dict[str, str] = {}
    recompute, preflight_done = force, False
    for i, st in enumerate(stages, 1):
        tag = f"[{i}/{len(stages)} {st.name}]"
        expected = {"config_hash": ctx.config_hash, "sgdbayes": __version__,
                    "inputs": {s.name: computations[s.name] for s in stages[: i - 1]}}
        if not recompute and ctx.cache.is_done(st.name):
            try:
                info = ctx.cache.info(st.name)
                why = _mismatch(info, expected)
                if why is None:
                    ctx.outputs[st.name] = ctx.cache.load(st.name)
            except CacheEntryError as exc:
                why = f"{exc.file}: {exc.reason}"
            if why is None:
                computations[st.name] = info["identity"]["computation"]
                ctx.stage_info[st.name] = {**info, "cached": True}
                loaded.append(st.name)
                log_wall = info.get("wall_s", float("nan"))
                ctx.log(f"{tag} loaded from cache (computed in {log_wall:.1f} s on {info.get('device', '?')})")
                continue
            ctx.log(f"{tag} cached result not used: {why}; recomputing this stage and the ones after it")
        recompute = True  # everything downstream of a recomputed stage is recomputed
        if not preflight_done:  # checks that need the data, before the first stage is computed
            try:
                pipeline_config.preflight()
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            preflight_done = True
        reason = st.skip(ctx) if st.skip is not None else None
        ctx.log(f"{tag} skipped: {reason}" if reason else f"{tag} {st.description} ...")
        t0 = time.perf_counter()
        try:
            outputs, how = ({"skipped": reason}, {"device": ctx.device, "torch_threads": threads}) if reason else \
                _compute(ctx, st, expected, threads, shard_run)
        except Exception:
            ctx.log(f"{tag} FAILED; finished stages stay cached, rerun to resume:\n{traceback.format_exc(limit=3)}")
            raise
        wall = time.perf_counter() - t0
        computations[st.name] = uuid.uuid4().hex
        info = {"wall_s": wall, "stage": st.name, **how, "identity": {**expected, "computation": computations[st.name]}}
        ctx.cache.save(st.name, outputs, info)
        ctx.outputs[st.name] = ctx.cache.load(st.name)  # downstream sees exactly what is cached
        ctx.stage_info[st.name] = {**info, "cached": False}
        computed.append(st.name)
        ctx.log(f"{tag} done in {wall:.1f} s")
    return computed, loaded


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
    lock_timeout: float = -1,
    executor: str | ExecutorConfig | Executor | None = None,
    shard_size: int | None = None,
) -> RunResult:
    """Resolve the configuration, check the output folder, run (or load) every stage, write the report.

    ``executor`` (``"local"``, ``"ray"``, ``"slurm"``, an :class:`~sgdbayes.runner.executors.ExecutorConfig`
    or an :class:`~sgdbayes.runner.executors.Executor`; default: the ``[executor]`` section, i.e.
    ``local``) runs the sharded stages, in shards of ``shard_size`` seeds (docs/scale_out.md); neither
    is part of the cache key. Configuration errors (:class:`~sgdbayes.runner.typed.ConfigError`) and
    unusable output folders (:class:`~sgdbayes.outdir.OutputDirError`) are raised before anything is written.
    """
    from ..outdir import OutputDir, hold_lock

    t_start = time.perf_counter()
    decl = load_study(name)
    presets = list(presets) if presets else [decl.default_preset]
    sets, exec_sets = _split_sets(list(sets or []))
    cfg = resolve_config(decl, presets, sets, seeds)
    runner = _executor(decl, presets, exec_sets, executor, shard_size)
    dev = resolve_device(device)
    customised = bool(sets) or seeds is not None
    out_dir = Path(out) if out is not None else None
    if cache_root is None:
        cache_root = (out_dir / "cache") if out_dir is not None else Path("reports") / decl.name / "cache"
    cache_root = Path(cache_root)
    memo = cache_root / "fingerprints.json"
    inputs, memo_store = file_fingerprints(cfg.input_files(), memo)
    h = config_hash(cfg, decl.presentational, study=decl.name, inputs=inputs)
    if out_dir is None:
        out_dir = default_out_dir(decl, presets, customised, h, sets, seeds)
    outdir = OutputDir(out_dir, "study", force=force)  # checked before anything is written
    pipeline = importlib.import_module(decl.pipeline)
    cache = StageCache(cache_root / h)
    folders = ["cache/"] if _is_inside(cache_root, out_dir) else []
    with outdir.claim(lock_timeout, log, folders=folders), \
            hold_lock(cache.lock_path, f"the stage cache {cache.root}", lock_timeout, log):
        cache.prepare(config_to_dict(cfg), hashed_config(cfg, decl.presentational),
                      {"study": decl.name, "presets": presets, "sets": sets, "inputs": inputs})
        save_memo(memo, memo_store)
        ctx = StageContext(decl, cfg, presets, sets, h, dev, out_dir, cache, log, inputs=inputs)
        log(f"[{decl.name}] presets={'+'.join(presets)} "
            f"seeds={get_path(cfg, decl.seeds_key) if decl.seeds_key else '-'} device={dev} config-hash={h}")
        n_threads = configure_threads(dev, threads)
        log(f"[{decl.name}] cache: {cache.root}; torch threads: {n_threads}; executor: {runner.name}"
            + (f", shards of {runner.config.shard_size} seeds" if runner.config.shard_size else ""))
        try:
            computed, loaded = _run_stages(ctx, list(pipeline.STAGES), force, n_threads, cfg,
                                           ShardRun(runner, device, threads, reuse=not force))
        finally:
            runner.close()
        t0 = time.perf_counter()
        ctx.stage_info["_run"] = {"wall_s_before_report": time.perf_counter() - t_start}
        report = Path(pipeline.write_report(ctx))
        outdir.commit(_report_files(out_dir, report), folders=folders)
    log(f"[report] written in {time.perf_counter() - t0:.1f} s")
    wall = time.perf_counter() - t_start
    log(f"[{decl.name}] done in {wall:.1f} s; report: {report}")
    shards = {s: ctx.stage_info[s]["executor"] for s in computed if "executor" in ctx.stage_info[s]}
    return RunResult(report, report.parent / "results.json", cache.root, h, computed, loaded, wall, shards)


def _split_sets(sets: list) -> tuple[list, list]:
    """``--set`` expressions of the study's configuration, and those of the ``[executor]`` section
    (which never change a number: not part of the cache key, of the output folder's name or of the
    report's list of overrides)."""
    def is_exec(s) -> bool:
        key = parse_set(s)[0] if isinstance(s, str) else s[0]
        return key == EXECUTOR_SECTION or key.startswith(EXECUTOR_SECTION + ".")

    return [s for s in sets if not is_exec(s)], [s for s in sets if is_exec(s)]


def _executor(decl: StudyDecl, presets: list[str], sets: list, executor, shard_size: int | None) -> Executor:
    """The run's executor from ``run_study``'s argument and the ``[executor]`` section (checked now:
    a missing optional package is a ConfigError before any stage runs)."""
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, ExecutorConfig):
        cfg = executor if shard_size is None else dataclasses.replace(executor, shard_size=shard_size)
    elif executor is None or isinstance(executor, str):
        cfg = resolve_executor(decl, presets, sets, executor, shard_size)
    else:
        raise ConfigError(f"executor must be 'local', 'ray', 'slurm', an ExecutorConfig or an Executor, "
                          f"got {type(executor).__name__}")
    return make_executor(cfg)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def _report_files(out_dir: Path, report: Path) -> list[str]:
    """report.md, results.json and the figures results.json lists (paths relative to ``out_dir``)."""
    import json

    files = [report.name]
    res = report.parent / "results.json"
    if res.is_file():
        files.append(res.name)
        try:
            files += [str(f) for f in json.loads(res.read_text()).get("figures", [])]
        except ValueError:
            pass
    rel = Path(report.parent).resolve().relative_to(Path(out_dir).resolve())
    return [str(rel / f) if str(rel) != "." else f for f in files]
