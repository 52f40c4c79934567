"""Per-configuration stage cache: atomic, self-checking, resumable stage outputs.

Layout (one directory per configuration hash)::

    CACHE_ROOT/<hash>/
        config.json            resolved config + the hashed subset (for humans)
        .lock                  OS file lock held by the process writing this entry
        <stage>/               one directory per finished stage
            arrays.npz         every numpy-array output of the stage
            data.json          every other output: plain JSON values, and Results (and DataFrames)
                               stored with ``Result.to_dict`` and rebuilt as Results on load
            _done.json         written last: identity, file sizes + sha256, wall time, device

A stage directory is built in a temporary sibling (``sgdbayes._io.atomic_directory``) and
renamed into place only after all its files are complete, so an interrupted run leaves a
finished stage or nothing (stray temporaries are removed on the next run, under the lock).

**Identity.** ``_done.json`` records the stage's identity: the configuration hash, the
sgdbayes version, a fresh id of this computation, and the computation ids of the earlier
stages it read. A cached stage is reused only when all of these match the current run, so
an interrupted ``--force`` (new early stages, old later ones) never mixes computations.

**Integrity.** ``_done.json`` lists every file with its size and sha256; :meth:`load`
checks them and raises :class:`CacheEntryError` (naming the stage and file) for a truncated,
missing or corrupt file, which the runner answers by recomputing that stage.
"""
from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._io import atomic_directory, atomic_write_text
from .fingerprint import sha256_file

__all__ = ["StageCache", "CacheEntryError"]

_DONE = "_done.json"


class CacheEntryError(Exception):
    """A stage's cache entry is unreadable or inconsistent (names the stage and file)."""

    def __init__(self, stage: str, file: str, reason: str):
        super().__init__(f"cache entry of stage {stage!r} is unusable: {file}: {reason}")
        self.stage, self.file, self.reason = stage, file, reason


def _jsonable(obj: Any) -> Any:
    """The one JSON convention (:func:`sgdbayes.stats.results.jsonable`): Results keep their class."""
    from ..stats.results import jsonable

    return jsonable(obj)


class StageCache:
    """Finished-stage store for one configuration hash."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    # -- bookkeeping -------------------------------------------------------
    def prepare(self, config: Mapping, hashed: Mapping, meta: Mapping | None = None) -> None:
        """Create the entry, remove stray temporaries (call with the lock held), write config.json."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stray in [*self.root.glob(".*.tmp-*"), *self.root.glob(".*.old-*")]:
            shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)
        atomic_write_text(
            self.root / "config.json",
            json.dumps(_jsonable({"config": config, "hashed": hashed, **(meta or {})}), indent=2),
        )

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def is_done(self, name: str) -> bool:
        return (self.stage_dir(name) / _DONE).is_file()

    def info(self, name: str) -> dict:
        """The stage's ``_done.json`` (CacheEntryError when unreadable)."""
        path = self.stage_dir(name) / _DONE
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheEntryError(name, str(path), f"cannot read ({type(exc).__name__}: {exc})") from None
        if not isinstance(info, dict):
            raise CacheEntryError(name, str(path), "not a JSON object")
        return info

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
            (tmp / "data.json").write_text(json.dumps(_jsonable(data), indent=1))
            files = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                     for f in sorted(tmp.iterdir()) if f.is_file()}
            (tmp / _DONE).write_text(json.dumps(_jsonable({**info, "files": files, "finished": time.time()})))

    def _check_files(self, name: str, info: Mapping) -> None:
        d = self.stage_dir(name)
        files = info.get("files")
        if not isinstance(files, Mapping) or "data.json" not in files:
            raise CacheEntryError(name, str(d / _DONE), "lists no files (written by an older sgdbayes)")
        for fname, meta in files.items():
            p = d / fname
            if not p.is_file():
                raise CacheEntryError(name, str(p), "missing although the stage is marked done")
            if p.stat().st_size != meta.get("size"):
                raise CacheEntryError(name, str(p), f"size {p.stat().st_size} bytes, expected {meta.get('size')}"
                                                    " (truncated or replaced)")
            if sha256_file(p) != meta.get("sha256"):
                raise CacheEntryError(name, str(p), "content does not match its recorded sha256 (corrupt)")

    def load(self, name: str) -> dict[str, Any]:
        """The stage's outputs, after checking every file against ``_done.json``."""
        d = self.stage_dir(name)
        self._check_files(name, self.info(name))
        from ..stats.results import revive

        try:
            out: dict[str, Any] = revive(json.loads((d / "data.json").read_text()))
        except (OSError, ValueError, TypeError) as exc:  # unreadable, or a stored result this sgdbayes cannot rebuild
            raise CacheEntryError(name, str(d / "data.json"), f"cannot read ({exc})") from None
        if (d / "arrays.npz").is_file():
            try:
                with np.load(d / "arrays.npz", allow_pickle=False) as z:
                    out.update({k: z[k] for k in z.files})
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise CacheEntryError(name, str(d / "arrays.npz"), f"cannot read ({exc})") from None
        return out
