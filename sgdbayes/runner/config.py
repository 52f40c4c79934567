"""Study declarations and configuration resolution.

A study is declared in ``sgdbayes/studies/NAME.toml`` (the repository's
``studies/`` folder is a symlink to it, so the files ship with the package):

```toml
[study]
title = "..."
pipeline = "sgdbayes.pipelines.NAME"   # module with STAGES and write_report
default_preset = "paper"
seeds_key = "train.seeds"              # what --seeds N sets
presentational = ["report"]            # keys (or tables) left out of the cache key
choices = { "sgld.seeding" = ["lowest", "per_cluster"] }   # enumerated values

[base.SECTION]                          # every known key, with its default
key = value

[presets.NAME]
description = "..."
"SECTION.key" = value                  # or nested tables: [presets.NAME.SECTION]
```

Resolution order: ``base`` <- each ``--preset`` in the order given <-
``--seeds`` <- each ``--set key=value`` in the order given. The resolved
configuration may only contain keys that ``base`` declares, and every value must
have the type of its default (an integer is accepted where a float is
expected). Any violation raises :class:`ConfigError`, whose message lists the
valid choices; the CLI turns it into exit status 2 without a traceback.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "ConfigError",
    "StudyDecl",
    "Preset",
    "list_studies",
    "load_study",
    "resolve_config",
    "parse_set",
    "flatten",
    "config_hash",
    "hashed_config",
    "get_key",
]


class ConfigError(ValueError):
    """A user error in choosing a study, preset or configuration key/value."""


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
    base: dict  # nested
    choices: dict = field(default_factory=dict)  # {"a.b": [allowed values]}
    presets: dict[str, Preset] = field(default_factory=dict)
    source: str = ""

    @property
    def known_keys(self) -> list[str]:
        return sorted(flatten(self.base))


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
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def get_key(cfg: Mapping, key: str, default: Any = None) -> Any:
    cur: Any = cfg
    for p in key.split("."):
        if not isinstance(cur, Mapping) or p not in cur:
            return default
        cur = cur[p]
    return cur


def _studies_dir():
    return resources.files("sgdbayes.studies")


def list_studies() -> list[str]:
    """Names of the studies shipped in ``sgdbayes/studies``."""
    return sorted(
        p.name[: -len(".toml")]
        for p in _studies_dir().iterdir()
        if p.name.endswith(".toml")
    )


def _valid_list(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def load_study(name: str) -> StudyDecl:
    """Read and check ``studies/NAME.toml``; unknown name -> ConfigError."""
    names = list_studies()
    if name not in names:
        raise ConfigError(f"unknown study {name!r}; valid studies: {_valid_list(names)}")
    src = _studies_dir() / f"{name}.toml"
    raw = tomllib.loads(src.read_text(encoding="utf-8"))
    meta = raw.get("study", {})
    base = raw.get("base", {})
    if not base:
        raise ConfigError(f"study {name!r}: [base] table is missing or empty in {src}")
    known = flatten(base)
    choices = {str(k): list(v) for k, v in meta.get("choices", {}).items()}
    for k, allowed in choices.items():
        if k not in known or known[k] not in allowed:
            raise ConfigError(f"study {name!r}: choices for {k!r} do not fit [base] ({known.get(k)!r})")
    presets: dict[str, Preset] = {}
    for pname, ptable in raw.get("presets", {}).items():
        ptable = dict(ptable)
        desc = str(ptable.pop("description", ""))
        over = flatten(ptable)
        bad = sorted(k for k in over if k not in known)
        if bad:
            raise ConfigError(
                f"study {name!r}, preset {pname!r}: unknown keys {bad}; "
                f"valid keys: {_valid_list(sorted(known))}"
            )
        for k, v in over.items():
            _check_value(k, v, known[k], choices)
        presets[pname] = Preset(pname, desc, over)
    default_preset = meta.get("default_preset", "paper")
    if default_preset not in presets:
        presets[default_preset] = Preset(default_preset, "the base configuration", {})
    return StudyDecl(
        name=name,
        title=str(meta.get("title", name)),
        pipeline=str(meta.get("pipeline", f"sgdbayes.pipelines.{name}")),
        default_preset=default_preset,
        seeds_key=meta.get("seeds_key"),
        presentational=tuple(meta.get("presentational", ())),
        base=base,
        choices=choices,
        presets=presets,
        source=str(src),
    )


# --------------------------------------------------------------------------- values

def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}.get(
        type(v), type(v).__name__
    )


def _check_type(key: str, value: Any, default: Any) -> Any:
    """Return ``value`` coerced to the default's type, or raise ConfigError."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    else:  # pragma: no cover - TOML has no other scalar types we use
        return value
    raise ConfigError(
        f"key {key!r} expects a {_type_name(default)} (default {default!r}), got {value!r}"
    )


def _check_value(key: str, value: Any, default: Any, choices: Mapping[str, list]) -> Any:
    value = _check_type(key, value, default)
    if key in choices and value not in choices[key]:
        raise ConfigError(f"key {key!r} must be one of {choices[key]}, got {value!r}")
    return value


def parse_set(expr: str) -> tuple[str, Any]:
    """Parse ``a.b=value`` with TOML value syntax.

    ``--set train.lr=0.1``, ``--set model.hidden=[32,32]``, ``--set sgld.seeding="per_cluster"``.
    A bare word that is not valid TOML (``--set sgld.seeding=per_cluster``) is taken
    as a string; type checking against the default happens in :func:`resolve_config`.
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


def resolve_config(
    decl: StudyDecl,
    presets: Iterable[str] | None = None,
    sets: Iterable[str | tuple[str, Any]] = (),
    seeds: int | None = None,
) -> dict:
    """base <- presets (in order) <- --seeds <- --set (in order); validated."""
    presets = list(presets) if presets else [decl.default_preset]
    cfg = copy.deepcopy(decl.base)
    known = flatten(decl.base)
    for p in presets:
        if p not in decl.presets:
            raise ConfigError(
                f"unknown preset {p!r} for study {decl.name!r}; "
                f"valid presets: {_valid_list(sorted(decl.presets))}"
            )
        for k, v in decl.presets[p].overrides.items():
            _set_nested(cfg, k, copy.deepcopy(v))
    overrides: list[tuple[str, Any]] = []
    if seeds is not None:
        if not decl.seeds_key:
            raise ConfigError(f"study {decl.name!r} does not take --seeds")
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        overrides.append((decl.seeds_key, int(seeds)))
    for s in sets:
        overrides.append(parse_set(s) if isinstance(s, str) else tuple(s))
    for k, v in overrides:
        if k not in known:
            raise ConfigError(
                f"unknown configuration key {k!r} for study {decl.name!r}; "
                f"valid keys: {_valid_list(sorted(known))}"
            )
        _set_nested(cfg, k, _check_value(k, v, known[k], decl.choices))
    return cfg


def _is_presentational(key: str, presentational: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in presentational)


def hashed_config(cfg: Mapping, presentational: Iterable[str] = ()) -> dict:
    """The flat part of ``cfg`` that determines results (the cache key's input)."""
    presentational = tuple(presentational)
    return {k: v for k, v in sorted(flatten(cfg).items()) if not _is_presentational(k, presentational)}


def config_hash(cfg: Mapping, presentational: Iterable[str] = (), study: str = "", length: int = 16) -> str:
    """sha256 over the canonical JSON of the non-presentational resolved config.

    The device is *not* part of the key (it is not in the config): see
    ``sgdbayes.runner.orchestrate`` for why and how it is recorded instead.
    """
    payload = json.dumps({"study": study, "config": hashed_config(cfg, presentational)},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]
