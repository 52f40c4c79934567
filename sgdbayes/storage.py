"""Save / load an :class:`~sgdbayes.engine.EnsembleResult` as a directory.

Layout (all written into a temporary sibling directory, renamed into place when
complete -- see :func:`sgdbayes._io.atomic_directory`)::

    config.json      EnsembleConfig, the model family's description, grid steps, seeds,
                     data source, meta
    curves.parquet   long table: seed, step, displacement, train_loss, train_acc
    final.parquet    one row per seed: diverged, diverged_step, losses, accuracies
    weights.pt       torch.save({"w_init", "w_final", "state"}) (CPU tensors; state is the
                     per-seed buffers {name: [K, ...]} or None)
    hooks/<name>.parquet   one table per hook
    MANIFEST.json    written last: format version and the list of files above

Loading checks ``MANIFEST.json`` and every file it lists; a directory missing
any of them is reported as incomplete, naming the missing file. Built-in families
(``mlp``, ``cnn``, ``resnet``, ``transformer``) are rebuilt from their description; a
user's own module needs ``load_result(path, model=<the same zero-argument callable>)``.
Format 1 (MLP only, ``bn_state``) is still read.
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
from .models import as_family, build_model

__all__ = ["save_result", "load_result", "FORMAT", "IncompleteResultError"]

FORMAT = "sgdbayes.ensemble/2"
_READABLE = ("sgdbayes.ensemble/1", FORMAT)
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
        cfg = dict(config=_jsonable(result.config.to_dict()), model=_jsonable(result.spec.describe()),
                   seeds=result.seeds.tolist(), steps=result.steps.tolist(),
                   data_source=_jsonable(result.data_source), meta=_jsonable(result.meta))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        files.append("config.json")
        result.curves().to_parquet(tmp / "curves.parquet", index=False)
        files.append("curves.parquet")
        result.final.to_parquet(tmp / "final.parquet", index=False)
        files.append("final.parquet")
        buf = io.BytesIO()
        state = None if result.state is None else {k: v.cpu() for k, v in result.state.items()}
        torch.save({"w_init": result.w_init.cpu(), "w_final": result.w_final.cpu(), "state": state}, buf)
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


def _family(desc: dict, model):
    """The family of a saved result: ``model`` when given, else rebuilt from its description."""
    if model is not None:
        fam = as_family(model)
        if fam.describe().get("kind") != desc.get("kind"):
            raise ValueError(f"model= is a {fam.describe().get('kind')!r} family but the result holds {desc}")
        return fam
    if desc.get("kind") == "module":
        raise ValueError(f"this result was trained on the user module {desc.get('factory')}; "
                         f"pass load_result(path, model=<the same zero-argument callable>)")
    d = dict(desc)
    return build_model(d.pop("kind"), **d)


def load_result(path: str | Path, model=None) -> EnsembleResult:
    """Read a directory written by :func:`save_result` (``model``: see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a saved ensemble result)")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise IncompleteResultError(
            f"{path} is incomplete or not an ensemble result: missing {MANIFEST} "
            f"(it is written last; the save was interrupted or this is another directory)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") not in _READABLE:
        raise ValueError(f"{mpath}: format {manifest.get('format')!r}, expected one of {list(_READABLE)}")
    for f in manifest["files"]:
        if not (path / f).exists():
            raise IncompleteResultError(f"{path} is incomplete: missing {f} (listed in {MANIFEST})")
    cfgd = json.loads((path / "config.json").read_text())
    if "spec" in cfgd:  # format 1: the MLP only
        desc = dict(kind="mlp", widths=cfgd["spec"]["widths"], batchnorm=cfgd["spec"]["batchnorm"])
    else:
        desc = cfgd["model"]
    spec = _family(desc, model)
    cfg_dict = dict(cfgd["config"])
    if cfg_dict.get("model") is not None and model is not None:
        cfg_dict["model"] = model
    config = EnsembleConfig.from_dict(cfg_dict)
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
                          w_init=w["w_init"], w_final=w["w_final"], state=_state(w),
                          hooks=hooks, meta=cfgd["meta"], data_source=cfgd.get("data_source"))


def _state(w: dict):
    if "state" in w:
        return w["state"]
    return None if w.get("bn_state") is None else {"bn": w["bn_state"]}  # format 1
