"""Track any training run (a plain loop, a Lightning Trainer, a Hugging Face Trainer):
displacement R(t) and LLC snapshots, straight into the runs file ``python -m sgdbayes.analyze`` reads.

::

    tracker = Tracker(model, run="lr0.01-seed0", out="runs.csv", data=(x, y), llc_every=100,
                      total_steps=2000, covariates={"lr": 0.01, "batch_size": 64, "optimizer": "sgd"})
    for ...:
        ...; opt.step(); tracker.step()
    tracker.close()      # LLCs of all snapshots (one batched computation), rows written

``LightningTracker`` (``pip install "sgdbayes[lightning]"``) and ``HFTracker``
(``pip install "sgdbayes[hf]"``) are imported on first use. See docs/track.md.
"""
from .ensemble import ensemble_frame, write_ensemble
from .grid import DEFAULT_HORIZON, TrackGrid
from .io import read_track_file, write_runs
from .losses import CriterionLoss, FunctionLoss, ModelLoss, OutputLoss
from .tracker import Tracker, select_params, snapshot_model_id

__all__ = ["Tracker", "LightningTracker", "HFTracker", "HFModelLoss", "TrackGrid", "DEFAULT_HORIZON",
           "snapshot_model_id", "select_params", "read_track_file", "write_runs", "ensemble_frame",
           "write_ensemble", "ModelLoss", "CriterionLoss", "OutputLoss", "FunctionLoss"]

_LAZY = {"LightningTracker": ".lightning", "HFTracker": ".hf", "HFModelLoss": ".hf"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
