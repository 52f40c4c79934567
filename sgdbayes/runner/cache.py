"""Per-configuration stage cache with atomic, resumable stage outputs.

Layout (one directory per resolved-configuration hash)::

    CACHE_ROOT/<hash>/
        config.json            resolved config + the hashed subset (for humans)
        <stage>/               one directory per finished stage
            arrays.npz         every numpy-array output of the stage
            data.json          every other (JSON-able) output
            _done.json         written last: wall time, device, finish time

A stage directory is built in a temporary sibling (``sgdbayes._io.atomic_directory``)
and renamed into place only after all its files are complete, so an interrupted
run leaves either a finished stage or nothing (stray temporaries are removed on
the next run).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._io import atomic_directory, atomic_write_text

__all__ = ["StageCache", "to_jsonable"]

_DONE = "_done.json"


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples, Paths -> plain JSON.

    NaN -> ``None``; ±inf -> the strings ``"inf"`` / ``"-inf"`` (JSON has no
    infinity, and an infinite KL must not read as "missing"; ``float("inf")``
    parses them back).
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if math.isnan(f):
            return None
        return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


class StageCache:
    """Finished-stage store for one configuration hash."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- bookkeeping -------------------------------------------------------
    def prepare(self, config: Mapping, hashed: Mapping, meta: Mapping | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for stray in [*self.root.glob(".*.tmp-*"), *self.root.glob(".*.old-*")]:
            shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)
        atomic_write_text(
            self.root / "config.json",
            json.dumps(to_jsonable({"config": config, "hashed": hashed, **(meta or {})}), indent=2),
        )

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def is_done(self, name: str) -> bool:
        return (self.stage_dir(name) / _DONE).is_file()

    def info(self, name: str) -> dict:
        return json.loads((self.stage_dir(name) / _DONE).read_text())

    def invalidate(self, name: str) -> None:
        d = self.stage_dir(name)
        if d.exists():
            shutil.rmtree(d)

    # -- save / load -------------------------------------------------------
    def save(self, name: str, outputs: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        arrays = {k: np.asarray(v) for k, v in outputs.items() if isinstance(v, np.ndarray)}
        data = {k: v for k, v in outputs.items() if not isinstance(v, np.ndarray)}
        with atomic_directory(self.stage_dir(name), overwrite=True) as tmp:
            if arrays:
                with open(tmp / "arrays.npz", "wb") as fh:
                    np.savez(fh, **arrays)
            (tmp / "data.json").write_text(json.dumps(to_jsonable(data), indent=1))
            (tmp / _DONE).write_text(json.dumps(to_jsonable({**info, "finished": time.time()})))

    def load(self, name: str) -> dict[str, Any]:
        d = self.stage_dir(name)
        out: dict[str, Any] = json.loads((d / "data.json").read_text())
        if (d / "arrays.npz").is_file():
            with np.load(d / "arrays.npz", allow_pickle=False) as z:
                out.update({k: z[k] for k in z.files})
        return out
