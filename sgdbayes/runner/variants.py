"""Readable names of study variants: the folder ``reports/NAME/variants/<label>`` of a run that is
not the default preset as declared.

A label is the preset(s) joined by ``+`` followed by each changed key as ``+key=value``
(``quick``, ``cpu+train.lr=0.01``, ``quick+train.seeds=8``): keys sorted, values in compact TOML/JSON
form of the parsed value (``0.01`` and ``1e-2`` give the same label). Characters that do not belong
in a folder name are replaced by ``_``; a label that had to be changed that way, or that is longer
than :data:`MAX_LABEL` characters (then truncated), ends in ``-<hash8>`` (the configuration hash)
so two different configurations never share a folder.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Optional

from .config import parse_set

__all__ = ["variant_label", "MAX_LABEL"]

#: longest label kept whole (a longer one is cut and given the hash suffix)
MAX_LABEL = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,\-\[\]]")


def _value_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)


def variant_label(presets: Iterable[str], sets: Iterable[str] = (), seeds: Optional[int] = None,
                  seeds_key: Optional[str] = None, config_hash: str = "") -> str:
    """The folder name of a variant (see the module docstring). ``sets``: the ``--set key=value``
    strings; ``seeds``: ``--seeds N`` (written as ``seeds_key=N``, e.g. ``train.seeds=8``); a later
    ``--set`` of the same key wins, as in the configuration."""
    changed: dict[str, Any] = {}
    if seeds is not None:
        changed[seeds_key or "seeds"] = int(seeds)
    for s in sets:
        k, v = parse_set(s)
        changed[k] = v
    raw = "+".join([*presets, *(f"{k}={_value_text(v)}" for k, v in sorted(changed.items()))])
    label = _UNSAFE.sub("_", raw)
    if label.startswith("."):  # never a hidden folder
        label = "_" + label[1:]
    suffix = f"-{config_hash[:8]}" if config_hash else ""
    if len(label) > MAX_LABEL:
        return label[: MAX_LABEL - len(suffix)] + suffix
    if label != raw:
        return label + suffix
    return label
