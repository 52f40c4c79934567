"""Save / load an :class:`~sgdbayes.engine.EnsembleResult` as a directory.

Layout (all written into a temporary sibling directory, renamed into place when
complete -- see :func:`sgdbayes._io.atomic_directory`)::

    config.json      EnsembleConfig, MLPSpec, grid steps, seeds, meta
    curves.parquet   long table: seed, step, displacement, train_loss, train_acc
    final.parquet    one row per seed: diverged, diverged_step, losses, accuracies
    weights.pt       torch.save({"w_init", "w_final", "bn_state"}) (CPU tensors)
    hooks/<name>.parquet   one table per hook
    MANIFEST.json    written last: format version and the list of files above

Loading checks ``MANIFEST.json`` and every file it lists; a directory missing
any of them is reported as incomplete, naming the missing file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._io import atomic_directory
from .engine import EnsembleConfig, EnsembleResult
from .models import MLPSpec

__all__ = ["save_result", "load_result", "FORMAT", "IncompleteResultError"]

FORMAT = "sgdbayes.ensemble/1"
MANIFEST = "MANIFEST.json"


class IncompleteResultError(FileNotFoundError):
    """A result directory lacks its manifest or a file the manifest lists."""


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return repr(o)
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    return repr(o)


def save_result(result: EnsembleResult, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``result`` to directory ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        files = []
        cfg = dict(config=result.config.to_dict(),
                   spec=dict(widths=list(result.spec.widths), batchnorm=result.spec.batchnorm),
                   seeds=result.seeds.tolist(), steps=result.steps.tolist(),
                   meta=_jsonable(result.meta))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        files.append("config.json")
        result.curves().to_parquet(tmp / "curves.parquet", index=False)
        files.append("curves.parquet")
        result.final.to_parquet(tmp / "final.parquet", index=False)
        files.append("final.parquet")
        buf = io.BytesIO()
        torch.save({"w_init": result.w_init.cpu(), "w_final": result.w_final.cpu(),
                    "bn_state": None if result.bn_state is None else result.bn_state.cpu()}, buf)
        (tmp / "weights.pt").write_bytes(buf.getvalue())
        files.append("weights.pt")
        if result.hooks:
            (tmp / "hooks").mkdir()
        hook_files = {}
        for name, df in result.hooks.items():
            fname = f"hooks/{len(hook_files):03d}.parquet"
            df.to_parquet(tmp / fname, index=False)
            hook_files[name] = fname
            files.append(fname)
        manifest = dict(format=FORMAT, files=files, hooks=hook_files)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def load_result(path: str | Path) -> EnsembleResult:
    """Read a directory written by :func:`save_result`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a saved ensemble result)")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise IncompleteResultError(
            f"{path} is incomplete or not an ensemble result: missing {MANIFEST} "
            f"(it is written last; the save was interrupted or this is another directory)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for f in manifest["files"]:
        if not (path / f).exists():
            raise IncompleteResultError(f"{path} is incomplete: missing {f} (listed in {MANIFEST})")
    cfgd = json.loads((path / "config.json").read_text())
    config = EnsembleConfig.from_dict(cfgd["config"])
    spec = MLPSpec(tuple(cfgd["spec"]["widths"]), batchnorm=cfgd["spec"]["batchnorm"])
    seeds = np.asarray(cfgd["seeds"], dtype=np.int64)
    steps = np.asarray(cfgd["steps"], dtype=np.int64)
    curves = pd.read_parquet(path / "curves.parquet")
    K, G = len(seeds), len(steps)
    if len(curves) != K * G:
        raise ValueError(f"{path}/curves.parquet has {len(curves)} rows, expected K*G = {K * G}")
    arr = lambda c: curves[c].to_numpy(dtype=np.float64).reshape(K, G)
    w = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    hooks = {name: pd.read_parquet(path / f) for name, f in manifest.get("hooks", {}).items()}
    return EnsembleResult(config=config, spec=spec, seeds=seeds, steps=steps,
                          displacement=arr("displacement"), train_loss=arr("train_loss"),
                          train_acc=arr("train_acc"), final=pd.read_parquet(path / "final.parquet"),
                          w_init=w["w_init"], w_final=w["w_final"], bn_state=w["bn_state"],
                          hooks=hooks, meta=cfgd["meta"])
