"""``LightningTracker``: a :class:`lightning.pytorch.Callback` around :class:`sgdbayes.track.Tracker`.

* The tracker is created at ``on_train_start`` (the model is on its device, before the
  first optimizer step: that is w_0), with ``total_steps`` from
  ``trainer.estimated_stepping_batches`` (when finite).
* It steps on ``on_train_batch_end`` with ``trainer.global_step`` (optimizer steps; with
  gradient accumulation several batches share one step and are counted once).
* LLC data: ``data=`` if given, else the whole dataset of the trainer's train
  dataloader. The LLC loss: ``loss=`` if given, else cross-entropy of the module's
  ``forward`` (``F.cross_entropy(module(x), y)``); a LightningModule's
  ``training_step`` cannot be batched over snapshots (it logs), so it is not used.
* Covariates filled in unless given: ``lr`` and ``optimizer`` (class name) of the
  first optimizer, ``batch_size`` of the train dataloader.
* Checkpoints: the tracker's state is the callback's ``state_dict`` (saved in every
  Lightning checkpoint, restored by ``trainer.fit(..., ckpt_path=...)``); the rows
  recorded so far are written to the runs file whenever a checkpoint is saved.
* ``on_train_end``: ``close()`` (LLCs, file). Only global rank 0 tracks.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('sgdbayes.track.LightningTracker needs Lightning: pip install "sgdbayes[lightning]"') from exc

from ..sampling import LLCConfig
from .io import check_covariates
from .tracker import ParamSelector, Tracker

__all__ = ["LightningTracker"]


def _covariates(trainer) -> dict:
    out: dict[str, Any] = {}
    if trainer.optimizers:
        opt = trainer.optimizers[0]
        out["optimizer"] = type(opt).__name__.lower()
        out["lr"] = float(opt.param_groups[0]["lr"])
    loader = trainer.train_dataloader
    bs = getattr(loader, "batch_size", None)
    if isinstance(bs, int):
        out["batch_size"] = bs
    return out


class LightningTracker(pl.Callback):
    """Track a Lightning run (see the module docstring); arguments as :class:`Tracker`."""

    def __init__(self, *, run, out, data=None, llc_every: Optional[int] = None, llc: LLCConfig = LLCConfig(),
                 params: ParamSelector = None, covariates: Optional[Mapping] = None, loss=None,
                 record_every: int = 10, record_log_points: int = 100, overwrite: bool = False):
        self.run = str(run)
        self.out, self.data, self.llc_every, self.llc = out, data, llc_every, llc
        self.params, self.loss = params, loss
        self.covariates = check_covariates(covariates)
        self.record_every, self.record_log_points, self.overwrite = record_every, record_log_points, overwrite
        self.tracker: Optional[Tracker] = None
        self._pending_state: Optional[dict] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(run=self.run)

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        data = self.data
        if data is None and self.llc_every is not None:
            data = trainer.train_dataloader
            if data is None:
                raise ValueError("LightningTracker: llc_every needs data= (the trainer has no train dataloader)")
        total = trainer.estimated_stepping_batches
        total = int(total) if total is not None and total == total and total != float("inf") else None
        self.tracker = Tracker(pl_module, run=self.run, out=self.out, data=data, llc_every=self.llc_every,
                               llc=self.llc, params=self.params, covariates={**_covariates(trainer), **self.covariates},
                               loss=self.loss, total_steps=total, record_every=self.record_every,
                               record_log_points=self.record_log_points, overwrite=self.overwrite)
        if self._pending_state is not None:
            self.tracker.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tr = self.tracker
        if tr is not None and trainer.global_step > tr.last_step:
            tr.step(trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.tracker is not None and not self.tracker.closed:
            self.tracker.flush()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.tracker is not None and not self.tracker.closed:
            self.tracker.flush()

    def state_dict(self) -> dict:
        if self.tracker is not None:
            return self.tracker.state_dict()
        return dict(self._pending_state) if self._pending_state is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)
