"""``HFTracker``: a :class:`transformers.TrainerCallback` around :class:`sgdbayes.track.Tracker`.

* The tracker is created at ``on_train_begin`` (before the first optimizer step: w_0)
  with ``total_steps = state.max_steps``; it steps on ``on_step_end`` with
  ``state.global_step`` (optimizer steps).
* LLC: on ``data`` (required with ``llc_every``): a dict of tensors such as
  ``{"input_ids": [n, T], "labels": [n, T]}`` (optionally ``attention_mask``), or a
  dataset yielding such dicts; with the model's own loss ``model(**batch).loss``
  (:class:`HFModelLoss`: the copy the LLC runs uses eager attention, whose vmap
  batching is 10x faster on the CPU than SDPA's fallback; the loss is the same to
  float round-off).
* Covariates filled in unless given: ``lr`` (``args.learning_rate``), ``batch_size``
  (per-device batch x gradient accumulation x world size), ``optimizer`` (``args.optim``).
* Checkpoints: at every ``on_save`` the tracker's state is saved next to the
  Trainer's checkpoint (``checkpoint-N/sgdbayes_tracker-<run>.pt``) and the rows so
  far are written to the runs file. When training resumes
  (``trainer.train(resume_from_checkpoint=...)``, ``state.global_step > 0`` at
  ``on_train_begin``) the state is loaded from ``resume_from`` (a checkpoint folder)
  or else from ``args.output_dir/checkpoint-<global_step>``.
* ``on_train_end``: ``close()`` (LLCs, file). Only the world process zero tracks.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import quote

try:
    from transformers import PreTrainedModel, TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('sgdbayes.track.HFTracker needs transformers: pip install "sgdbayes[hf]"') from exc

import torch

from .._io import atomic_write_bytes
from ..sampling import LLCConfig
from .io import check_covariates
from .tracker import ParamSelector, Tracker

__all__ = ["HFTracker", "HFModelLoss"]


class HFModelLoss:
    """The model's own loss ``model(**batch).loss`` (mean over the batch's labelled tokens)."""

    def __call__(self, model, batch):
        return model(**batch).loss

    def prepare(self, model):
        if isinstance(model, PreTrainedModel):
            model.set_attn_implementation("eager")
        return model.eval()


class HFTracker(TrainerCallback):
    """Track a Hugging Face Trainer run (see the module docstring); arguments as :class:`Tracker`
    plus ``resume_from`` (a checkpoint folder holding the tracker's state)."""

    def __init__(self, *, run, out, data=None, llc_every: Optional[int] = None, llc: LLCConfig = LLCConfig(),
                 params: ParamSelector = None, covariates: Optional[Mapping] = None, loss=None,
                 record_every: int = 10, record_log_points: int = 100, overwrite: bool = False,
                 resume_from=None):
        if llc_every is not None and data is None:
            raise ValueError("HFTracker: llc_every needs data= (e.g. {'input_ids': ..., 'labels': ...})")
        self.run = str(run)
        self.out, self.data, self.llc_every, self.llc = out, data, llc_every, llc
        self.params = params
        self.loss = loss if loss is not None else HFModelLoss()
        self.covariates = check_covariates(covariates)
        self.record_every, self.record_log_points, self.overwrite = record_every, record_log_points, overwrite
        self.resume_from = resume_from
        self.tracker: Optional[Tracker] = None

    @property
    def state_file(self) -> str:
        return f"sgdbayes_tracker-{quote(self.run, safe='')}.pt"

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        covs = {"lr": float(args.learning_rate),
                "batch_size": int(args.per_device_train_batch_size * args.gradient_accumulation_steps
                                  * args.world_size),
                "optimizer": str(getattr(args.optim, "value", args.optim)), **self.covariates}
        self.tracker = Tracker(model, run=self.run, out=self.out, data=self.data, llc_every=self.llc_every,
                               llc=self.llc, params=self.params, covariates=covs, loss=self.loss,
                               total_steps=int(state.max_steps) if state.max_steps and state.max_steps > 0 else None,
                               record_every=self.record_every, record_log_points=self.record_log_points,
                               overwrite=self.overwrite)
        if state.global_step > 0:
            folder = Path(self.resume_from if self.resume_from is not None
                          else os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
            path = folder / self.state_file
            if not path.exists():
                raise FileNotFoundError(f"HFTracker: training resumes at step {state.global_step} but there is no "
                                        f"tracker state {path}; pass resume_from=<the checkpoint folder>")
            self.tracker.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_step_end(self, args, state, control, **kwargs):
        tr = self.tracker
        if tr is not None and state.global_step > tr.last_step:
            tr.step(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        tr = self.tracker
        if tr is None or tr.closed:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        buf = io.BytesIO()
        torch.save(tr.state_dict(), buf)
        atomic_write_bytes(folder / self.state_file, buf.getvalue())
        tr.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.close()

