"""Output folders that sgdbayes owns: checked at start-up, locked while written, never emptied.

``python -m sgdbayes.study --out DIR`` and ``python -m sgdbayes.analyze --out DIR`` write only
their own outputs into ``DIR`` (each file atomically) and record what they wrote in a small
manifest, ``DIR/.sgdbayes-outputs.json``. The rules:

* ``DIR`` that is a file, lies under a file, or cannot be written is an error at start-up;
* ``DIR`` that does not exist, is empty, or holds a manifest of the same kind (an earlier
  output of the same command) is used; any other non-empty folder is refused unless
  ``--force``, and even then only sgdbayes' own files are written;
* a file sgdbayes wrote last time and did not write this time (a figure that is no longer
  drawn) is removed; nothing else in ``DIR`` is ever removed or renamed;
* while one process writes ``DIR`` it holds an OS file lock (``DIR/.sgdbayes.lock``); a
  second process waits, saying so, or gives up with a clear error after ``lock_timeout``.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ._io import atomic_write_text

__all__ = ["MANIFEST", "LOCK", "OutputDirError", "BusyError", "OutputDir", "hold_lock"]

MANIFEST = ".sgdbayes-outputs.json"
LOCK = ".sgdbayes.lock"


class OutputDirError(ValueError):
    """An output folder that cannot or must not be used (the message says why and what to do)."""


class BusyError(RuntimeError):
    """Another sgdbayes process holds the lock and did not release it within the timeout."""


@contextmanager
def hold_lock(lock_file: Path, what: str, timeout: float = -1, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold an OS file lock on ``lock_file``; wait (saying so) while another process holds it.

    ``timeout < 0`` waits as long as it takes; otherwise :class:`BusyError` after ``timeout`` s.
    """
    from filelock import FileLock, Timeout

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another sgdbayes process that is writing {what} (lock {lock_file})"
            + ("" if timeout < 0 else f"; giving up after {timeout:g} s"))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise BusyError(f"{what} is being written by another sgdbayes process (lock {lock_file} still held "
                            f"after {timeout:g} s); wait for it to finish, or choose another output folder") from None
    try:
        yield
    finally:
        lock.release()


def _read_manifest(path: Path) -> dict | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("written_by") == "sgdbayes" else None


class OutputDir:
    """An output folder of ``kind`` ("study" or "analyze"), validated by :meth:`check`."""

    def __init__(self, path: str | Path, kind: str, force: bool = False, flag: str = "--out"):
        self.path = Path(path)
        self.kind = kind
        self.force = force
        self.flag = flag
        self._previous: list[str] = []
        self.check()

    def check(self) -> None:
        """Start-up checks (nothing is created); :class:`OutputDirError` when unusable."""
        p, flag = self.path, self.flag
        if p.exists() and not p.is_dir():
            raise OutputDirError(f"{flag} {p}: is a file, not a folder; give a folder (it is created if missing)")
        anc = p
        while not anc.exists():
            if anc.parent == anc:
                break
            anc = anc.parent
        if anc.exists() and not anc.is_dir():
            raise OutputDirError(f"{flag} {p}: {anc} is a file, so no folder can be made below it")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise OutputDirError(f"{flag} {p}: {anc if anc != p else 'the folder'} is not writable")
        if p.is_dir():
            m = _read_manifest(p)
            if m is None and any(e.name != LOCK for e in p.iterdir()) and not self.force:
                raise OutputDirError(
                    f"{flag} {p}: the folder is not empty and holds no earlier sgdbayes output ({MANIFEST}); "
                    f"choose a new or empty folder, or add --force to write sgdbayes' files into it "
                    f"(nothing else in it is touched)")
            if m is not None and m.get("kind") != self.kind and not self.force:
                raise OutputDirError(
                    f"{flag} {p}: the folder holds the output of `sgdbayes.{m.get('kind')}`, not of "
                    f"`sgdbayes.{self.kind}`; choose another folder, or add --force to write into it anyway")

    def refuse_overwriting(self, inputs: Iterable[str | Path], outputs: Iterable[str]) -> None:
        """OutputDirError if writing ``outputs`` (relative names) would replace one of ``inputs``."""
        for inp in inputs:
            inp = Path(inp)
            for rel in outputs:
                target = self.path / rel
                if target.exists() and inp.exists() and os.path.samefile(target, inp):
                    raise OutputDirError(f"{self.flag} {self.path}: writing {rel} would replace the input file {inp}; "
                                         f"choose another output folder")

    @contextmanager
    def claim(self, lock_timeout: float = -1, log: Callable[[str], None] = print,
              folders: Iterable[str] = ()) -> Iterator["OutputDir"]:
        """Create the folder, hold its lock, and mark it as sgdbayes' before anything is written."""
        self.path.mkdir(parents=True, exist_ok=True)
        with hold_lock(self.path / LOCK, str(self.path), lock_timeout, log):
            self.check()  # another process may have changed it while we waited
            old = _read_manifest(self.path) or {}
            self._previous = [f for f in old.get("files", []) if isinstance(f, str)]
            self._write_manifest(self._previous, list(folders))
            yield self

    def commit(self, files: Iterable[str], folders: Iterable[str] = ()) -> None:
        """Record ``files`` (relative paths written this time); remove files sgdbayes wrote before
        and did not write now (only those; never a folder)."""
        files = sorted({str(f) for f in files})
        for rel in self._previous:
            if rel in files or Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (MANIFEST, LOCK):
                continue
            stale = self.path / rel
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
        self._write_manifest(files, list(folders))
        self._previous = files

    def _write_manifest(self, files: list[str], folders: list[str]) -> None:
        from . import __version__

        atomic_write_text(self.path / MANIFEST, json.dumps(
            {"written_by": "sgdbayes", "version": __version__, "kind": self.kind, "files": sorted(files),
             "folders": sorted(folders),
             "note": "sgdbayes writes and replaces only the files listed here; everything else is yours"},
            indent=1) + "\n")
