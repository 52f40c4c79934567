"""Study declarations and configuration resolution.

A study is declared in ``sgdbayes/studies/NAME.toml`` (the repository's ``studies/``
folder is a symlink to it, so the files ship with the package):

```toml
[study]
title = "..."
pipeline = "sgdbayes.pipelines.NAME"   # module with CONFIG, STAGES and write_report
default_preset = "paper"
seeds_key = "train.seeds"              # what --seeds N sets
presentational = ["report"]            # sections (or keys) left out of the cache key

[base.SECTION]                          # one table per field of the pipeline's CONFIG class;
key = value                             # keys are that section dataclass's field names

[presets.NAME]
description = "..."
"SECTION.key" = value                  # or nested tables: [presets.NAME.SECTION]
```

The pipeline's ``CONFIG`` is a :class:`~sgdbayes.runner.typed.StudyConfig` subclass whose
fields are the sections (library dataclasses such as :class:`sgdbayes.sampling.LLCConfig`,
or small frozen dataclasses the study declares). Resolution order: ``base`` <- each
``--preset`` in the order given <- ``--seeds`` <- each ``--set key=value`` in the order
given; the result is built into the typed object once (:func:`resolve_config`). A key
that the section's dataclass does not have, a value of the wrong type or out of range,
anywhere (TOML, preset, ``--set``), is a :class:`ConfigError` naming the key and the
valid choices; every preset of the study is checked on every resolution, so a typo in
an unused preset is found too. The CLI turns a ConfigError into exit status 2.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from .typed import ConfigError, build_config, build_section, config_to_dict, get_path

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "ConfigError", "StudyDecl", "Preset", "list_studies", "load_study", "study_schema", "resolve_config",
    "resolve_executor",
    "parse_set", "flatten", "config_hash", "hashed_config", "get_path", "config_to_dict",
]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: dict  # flat {"a.b": value}


@dataclass(frozen=True)
class StudyDecl:
    name: str
    title: str
    pipeline: str
    default_preset: str
    seeds_key: str | None
    presentational: tuple[str, ...]
    base: dict  # nested {section: {key: value}}
    presets: dict[str, Preset] = field(default_factory=dict)
    source: str = ""


# --------------------------------------------------------------------------- helpers

def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> ``{"a.b.c": value}`` (lists are values, not tables)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_nested(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"configuration key {key!r}: {p!r} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def _studies_dir():
    return resources.files("sgdbayes.studies")


def list_studies() -> list[str]:
    """Names of the studies shipped in ``sgdbayes/studies``."""
    return sorted(p.name[: -len(".toml")] for p in _studies_dir().iterdir() if p.name.endswith(".toml"))


def _valid_list(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def load_study(name: str) -> StudyDecl:
    """Read ``studies/NAME.toml`` (structure only; keys are checked by :func:`resolve_config`).

    Unknown name, unreadable or malformed TOML (the message names the file and line) ->
    ConfigError.
    """
    names = list_studies()
    if name not in names:
        raise ConfigError(f"unknown study {name!r}; valid studies: {_valid_list(names)}")
    src = _studies_dir() / f"{name}.toml"
    try:
        raw = tomllib.loads(src.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:  # the message carries "(at line L, column C)"
        raise ConfigError(f"{src}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{src}: cannot read ({exc})") from None
    meta = raw.get("study", {})
    base = raw.get("base", {})
    if not isinstance(meta, dict) or not isinstance(base, dict) or not base:
        raise ConfigError(f"{src}: the [study] and [base.SECTION] tables are missing or malformed")
    presets: dict[str, Preset] = {}
    for pname, ptable in raw.get("presets", {}).items():
        if not isinstance(ptable, dict):
            raise ConfigError(f"{src}: [presets.{pname}] must be a table")
        ptable = dict(ptable)
        desc = str(ptable.pop("description", ""))
        presets[pname] = Preset(pname, desc, flatten(ptable))
    default_preset = meta.get("default_preset", "paper")
    if default_preset not in presets:
        presets[default_preset] = Preset(default_preset, "the base configuration", {})
    return StudyDecl(
        name=name, title=str(meta.get("title", name)),
        pipeline=str(meta.get("pipeline", f"sgdbayes.pipelines.{name}")), default_preset=default_preset,
        seeds_key=meta.get("seeds_key"), presentational=tuple(meta.get("presentational", ())),
        base=base, presets=presets, source=str(src),
    )


def study_schema(decl: StudyDecl):
    """The pipeline's ``CONFIG`` class (a StudyConfig subclass)."""
    module = importlib.import_module(decl.pipeline)
    return module.CONFIG


# --------------------------------------------------------------------------- values

def parse_set(expr: str) -> tuple[str, Any]:
    """Parse ``a.b=value`` with TOML value syntax.

    ``--set train.lr=0.1``, ``--set model.hidden=[32,32]``, ``--set sgld_starts.rule="per_cluster"``.
    A bare word that is not valid TOML (``--set sgld_starts.rule=per_cluster``) is taken as a
    string; type checking against the section's dataclass happens in :func:`resolve_config`.
    """
    if "=" not in expr:
        raise ConfigError(f"--set expects key=value, got {expr!r}")
    key, text = expr.split("=", 1)
    key, text = key.strip(), text.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {expr!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def _layer(tables: dict, origins: dict, overrides: Mapping[str, Any], where: str) -> None:
    for k, v in overrides.items():
        if "." not in k:
            raise ConfigError(f"configuration key {k!r} ({where}) must be SECTION.KEY")
        _set_nested(tables, k, copy.deepcopy(v))
        origins[k] = where


#: the runner's own section: where shards run (:class:`~sgdbayes.runner.executors.ExecutorConfig`);
#: typed like every section, never part of the study's configuration nor of its cache key
EXECUTOR_SECTION = "executor"


def _tables(decl: StudyDecl, presets: list[str], sets: Iterable[str | tuple[str, Any]], seeds: int | None,
            flags: Mapping[str, tuple[str, Any]] = {}, in_file: bool = False) -> tuple[dict, dict]:
    """Nested tables and where each key came from: base <- presets <- --seeds and the executor flags
    (``flags``: key -> (flag, value)) <- --set."""
    tables, origins = copy.deepcopy(decl.base), {k: f"{Path(decl.source).name} [base]" for k in flatten(decl.base)}
    for p in presets:
        where = f" in {Path(decl.source).name}" if in_file else ""
        _layer(tables, origins, decl.presets[p].overrides, f"preset {p!r}{where}")
    if seeds is not None:
        if not decl.seeds_key:
            raise ConfigError(f"study {decl.name!r} does not take --seeds")
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"--seeds must be an integer >= 1, got {seeds!r}")
        _layer(tables, origins, {decl.seeds_key: int(seeds)}, "--seeds")
    for key, (flag, value) in flags.items():
        _layer(tables, origins, {key: value}, flag)
    for s in sets:
        k, v = parse_set(s) if isinstance(s, str) else tuple(s)
        text = s.split("=", 1)[1].strip() if isinstance(s, str) else repr(v)
        _layer(tables, origins, {k: v}, f"--set {k}={text}")
    return tables, origins


def _executor_section(tables: dict, origins: dict):
    from .executors import ExecutorConfig

    table = tables.get(EXECUTOR_SECTION, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{EXECUTOR_SECTION} must be a table of keys (e.g. {EXECUTOR_SECTION}.name = \"ray\"), "
                          f"got {table!r}")
    return build_section(EXECUTOR_SECTION, ExecutorConfig, table, origins)


def _build(schema, tables: dict, origins: dict):
    """The typed study configuration; the ``[executor]`` section is checked and set aside."""
    _executor_section(tables, origins)
    return build_config(schema, {k: v for k, v in tables.items() if k != EXECUTOR_SECTION}, origins)


def _check_presets(decl: StudyDecl, presets: list[str]) -> None:
    for p in presets:
        if p not in decl.presets:
            raise ConfigError(f"unknown preset {p!r} for study {decl.name!r}; "
                              f"valid presets: {_valid_list(sorted(decl.presets))}")


def resolve_config(decl: StudyDecl, presets: Iterable[str] | None = None,
                   sets: Iterable[str | tuple[str, Any]] = (), seeds: int | None = None):
    """base <- presets (in order) <- --seeds <- --set (in order), built into the typed config.

    ``executor.*`` keys (TOML or ``--set``) are checked here too but belong to
    :func:`resolve_executor`, not to the study's configuration."""
    schema = study_schema(decl)
    presets = list(presets) if presets else [decl.default_preset]
    _check_presets(decl, presets)
    for pname in decl.presets:  # every declared preset must build on its own
        _build(schema, *_tables(decl, [pname], (), None, in_file=True))
    return _build(schema, *_tables(decl, presets, sets, seeds))


def resolve_executor(decl: StudyDecl, presets: Iterable[str] | None = None,
                     sets: Iterable[str | tuple[str, Any]] = (), name: str | None = None,
                     shard_size: int | None = None):
    """The ``[executor]`` section (:class:`~sgdbayes.runner.executors.ExecutorConfig`): base <- presets
    <- ``--executor`` / ``--shard-size`` <- ``--set executor.*``."""
    presets = list(presets) if presets else [decl.default_preset]
    _check_presets(decl, presets)
    flags = {}
    if name is not None:
        flags[f"{EXECUTOR_SECTION}.name"] = ("--executor", name)
    if shard_size is not None:
        flags[f"{EXECUTOR_SECTION}.shard_size"] = ("--shard-size", shard_size)
    return _executor_section(*_tables(decl, presets, sets, None, flags))


# --------------------------------------------------------------------------- cache key

def _is_presentational(key: str, presentational: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in presentational)


def hashed_config(cfg, presentational: Iterable[str] = ()) -> dict:
    """The flat part of the typed ``cfg`` that determines results (the cache key's input)."""
    from ..stats.results import jsonable

    presentational = tuple(presentational)
    flat = flatten(config_to_dict(cfg))
    return {k: jsonable(v) for k, v in sorted(flat.items()) if not _is_presentational(k, presentational)}


def config_hash(cfg, presentational: Iterable[str] = (), study: str = "", inputs: Mapping[str, str] | None = None,
                length: int = 16) -> str:
    """sha256 over the canonical JSON of the non-presentational typed config (+ input-file hashes).

    The device is *not* part of the key (it is not in the config): see
    ``sgdbayes.runner.orchestrate`` for why and how it is recorded instead. ``inputs``
    maps local input files to their content hashes (:mod:`sgdbayes.runner.fingerprint`).
    """
    payload = {"study": study, "config": hashed_config(cfg, presentational)}
    if inputs:
        payload["inputs"] = dict(sorted(inputs.items()))
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
