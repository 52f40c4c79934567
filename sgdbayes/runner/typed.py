"""Typed study configurations: TOML tables -> frozen dataclasses, checked once.

A study's configuration is one frozen dataclass deriving from :class:`StudyConfig` whose
fields are its *sections*; each section is itself a frozen dataclass (the library's own,
e.g. :class:`sgdbayes.sampling.LLCConfig`, or a small one the study declares). A TOML table
``[base.llc]`` holds keys equal to that dataclass's field names; nothing is renamed on the
way. :func:`build_config` turns nested tables into the typed object:

* an unknown section or key is a :class:`ConfigError` naming it and listing the valid ones;
* each value is checked against its field's annotation (``int``, ``float`` (an integer is
  accepted), ``bool``, ``str``, ``Literal[...]``, ``tuple[X, ...]``, ``Optional[X]``,
  ``Union[...]``) before the dataclass is built;
* out-of-range values are rejected by the dataclass's own ``__post_init__`` (which uses
  :mod:`sgdbayes._validation`); the runner prefixes the section, so the message names the
  TOML key (``llc.num_draws must be an integer >= 1, got 0``) and where the value came from.

The canonical form of a configuration (:func:`config_to_dict`) is the nested dict of its
fields; its hash is the cache key (see :mod:`sgdbayes.runner.config`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "StudyConfig", "build_config", "build_section", "config_to_dict", "field_types",
           "section_keys", "get_path"]


class ConfigError(ValueError):
    """A user error in choosing a study, preset, configuration key or value."""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Base of every study's configuration (its fields are the sections).

    Subclasses may override :meth:`input_files` (local files whose *content* is part of
    the cache key) and :meth:`preflight` (checks that need the data, run before the first
    stage is computed). Cross-section checks that need no data go in ``__post_init__``
    and raise ``ValueError`` naming the TOML keys.
    """

    def input_files(self) -> tuple[Path, ...]:
        """Local files the results depend on (their content hash joins the cache key)."""
        return ()

    def preflight(self) -> None:
        """Checks that need the data (e.g. batch size vs training-set size); raise ValueError."""


# --------------------------------------------------------------------------- types

def field_types(cls) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of the init fields of dataclass ``cls``."""
    hints = get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _describe(tp) -> str:
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return "an array" + (f" of {_describe(args[0]).split(' ', 1)[-1]}s" if args else "")
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """``value`` converted to annotation ``tp``, or ConfigError naming ``key``."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key} expects {_describe(tp)}, got {value!r}")
    if tp is Any or tp is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(f"{key} must be one of {list(get_args(tp))}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = [a for a in get_args(tp) if a is not Ellipsis]
        items = [_coerce(f"{key}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp in (dict,) or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise bad
    return value


# --------------------------------------------------------------------------- building

def section_keys(schema) -> dict[str, list[str]]:
    """``{section: [field names]}`` of a study configuration class."""
    return {name: list(field_types(cls)) for name, cls in field_types(schema).items()}


def _valid(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def _qualify(section: str, keys, message: str, origins: Mapping[str, str]) -> str:
    """Prefix a dataclass's ValueError with its section so that it names the TOML key."""
    for k in sorted(keys, key=len, reverse=True):
        if message.startswith(k) and (len(message) == len(k) or not (message[len(k)].isalnum() or message[len(k)] == "_")):
            where = origins.get(f"{section}.{k}")
            return f"{section}.{message}" + (f" (set by {where})" if where else "")
    return f"[{section}] {message}"


def build_section(section: str, cls, values: Mapping[str, Any], origins: Mapping[str, str] = {}):
    """Instantiate section dataclass ``cls`` from a TOML table (keys = field names)."""
    types_ = field_types(cls)
    unknown = sorted(k for k in values if k not in types_)
    if unknown:
        k = unknown[0]
        where = origins.get(f"{section}.{k}")
        raise ConfigError(
            f"unknown configuration key {section}.{k!s}" + (f" (set by {where})" if where else "")
            + f"; valid keys of [{section}] ({cls.__module__}.{cls.__qualname__}): "
            + _valid(f"{section}.{f}" for f in types_))
    kwargs = {k: _coerce(f"{section}.{k}", v, types_[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_qualify(section, types_, str(exc), origins)) from None


def build_config(schema, tables: Mapping[str, Mapping[str, Any]], origins: Mapping[str, str] = {}):
    """The typed configuration ``schema(**sections)`` from nested tables ``{section: {key: value}}``."""
    sections = field_types(schema)
    unknown = sorted(s for s in tables if s not in sections)
    if unknown:
        raise ConfigError(f"unknown configuration section [{unknown[0]}]; valid sections: {_valid(sections)} "
                          f"(valid keys: {_valid(f'{s}.{k}' for s, ks in section_keys(schema).items() for k in ks)})")
    for s, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{s} must be a table of keys (e.g. {s}.KEY = value), got {table!r}")
    built = {s: build_section(s, cls, tables.get(s, {}), origins) for s, cls in sections.items()}
    try:
        return schema(**built)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def config_to_dict(cfg) -> dict:
    """The canonical nested dict ``{section: {field: value}}`` (tuples stay tuples)."""
    return {f.name: dataclasses.asdict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def get_path(cfg, key: str) -> Any:
    """``cfg.a.b`` for ``key = "a.b"`` (ConfigError when absent)."""
    cur = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(cur) or part not in {f.name for f in dataclasses.fields(cur)}:
            raise ConfigError(f"no configuration key {key!r}")
        cur = getattr(cur, part)
    return cur
