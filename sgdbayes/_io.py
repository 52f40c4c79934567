"""Atomic file and directory writes (shared helpers).

A reader never sees a half-written file or directory: files are written to a
temporary sibling and moved into place with ``os.replace``; directories are
built in a temporary sibling directory and renamed when complete. Files get the
mode an ordinary ``open()`` would give them (0666 minus the umask, usually 0644),
not the 0600 of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_directory", "default_file_mode",
           "temp_sibling"]


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open(path, "w")`` creates files with."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_sibling(path: str | Path, suffix: str = ".tmp") -> Path:
    """A new, empty temporary file next to ``path`` (hidden name) with the default file mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, **json_kw) -> Path:
    """Write ``obj`` as JSON (indent 2, sorted keys unless overridden) atomically.

    Non-finite floats are rejected (``allow_nan=False``) so no NaN is written silently.
    """
    json_kw.setdefault("indent", 2)
    json_kw.setdefault("sort_keys", True)
    json_kw.setdefault("allow_nan", False)
    return atomic_write_text(path, json.dumps(obj, **json_kw) + "\n")


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory atomically.

    Yields a fresh temporary sibling directory; when the ``with`` block ends
    without error it is renamed to ``target``. On error it is deleted and
    ``target`` is untouched. If ``target`` exists: ``FileExistsError`` unless
    ``overwrite``, in which case the old directory is moved aside and deleted
    only after the new one is in place.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
