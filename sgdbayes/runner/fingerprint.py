"""Content hashes of local input files (for the cache key), remembered by size + mtime.

A study that reads local data (``data.path``) depends on the files' *content*, not their
names: replacing ``digits.npz`` behind the same path must change the cache key. Hashing a
large file on every run is wasteful, so each hash is remembered in a small JSON file
together with the file's size and modification time (ns) and reused while both match.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from .._io import atomic_write_text

__all__ = ["sha256_file", "file_fingerprints", "save_memo"]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprints(paths: Iterable[str | Path], memo: str | Path | None = None) -> tuple[dict[str, str], dict]:
    """``({resolved path: sha256 of its content}, updated memo)``.

    ``memo`` (a JSON file, read if present) maps paths to size, mtime and hash; a file whose
    size and mtime match is not hashed again. Save the returned memo with :func:`save_memo`.
    A path that does not exist maps to ``"missing"`` (the pipeline reports the error itself).
    """
    store: dict = {}
    if memo is not None and Path(memo).is_file():
        try:
            store = json.loads(Path(memo).read_text())
        except (OSError, ValueError):
            store = {}
    if not isinstance(store, dict):
        store = {}
    out = {}
    for p in paths:
        p = Path(p).expanduser().resolve()
        key = str(p)
        try:
            st = os.stat(p)
        except OSError:
            out[key] = "missing"
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        hit = store.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
            out[key] = hit["sha256"]
            continue
        out[key] = sha256_file(p)
        store[key] = {"stamp": stamp, "sha256": out[key]}
    return out, store


def save_memo(memo: str | Path, store: dict) -> None:
    """Write the memo of :func:`file_fingerprints` (a failure only costs the next run a re-hash)."""
    if not store:
        return
    try:
        atomic_write_text(memo, json.dumps(store, indent=1, sort_keys=True))
    except OSError:
        pass
