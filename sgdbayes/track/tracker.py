"""Track any training loop: displacement R(t) on the record grid, LLC snapshots, the runs file.

See docs/track.md for examples. What is computed:

* **Displacement** R(t) = ||w_t - w_0||_2 over the tracked parameters (default: every
  parameter with ``requires_grad``), t = optimizer steps, w_0 = the weights when the
  tracker was created (before the first step). Recorded on the steps of
  :class:`sgdbayes.track.grid.TrackGrid` (the engine's log-dense + regular grid), at
  every LLC snapshot step and at the last step. Computed on the model's device from
  w_0 and the current weights only (no history): per-tensor norms of ``w_t - w_0``
  (``torch._foreach_sub`` / ``_foreach_norm``, in the parameters' dtype, only on
  recorded steps) combined in float64, as the engine does. Values stay on the device
  until they are needed (every 64 records, a snapshot, a flush or close), so a
  recorded step does not wait for the device.
* **Divergence**: the first recorded step whose R is not finite is the run's
  ``diverged_step``; nothing is recorded from that step on (the runs file
  holds finite displacements only) and later snapshots are not taken.
* **LLC**: every ``llc_every`` steps the tracked parameters are copied to CPU memory
  (a snapshot), with every other parameter and buffer that changed since the previous
  snapshot (unchanged ones are shared). At :meth:`Tracker.close` the LLCs of all
  snapshots of the run are estimated as **one** batched computation
  (:func:`sgdbayes.sampling.estimate_llc_potential` over
  :meth:`sgdbayes.sampling.ModulePotential.of_snapshots`): SGLD moves the tracked
  parameters, the others stay at that snapshot's values. Chain c of the snapshot at
  step t of run r uses the seeds of ``SeedSequence([llc.seed, snapshot_model_id(r, t), c])``
  (:func:`sgdbayes.sampling.chain_seeds`): no two snapshots share chain seeds and a
  snapshot's estimate does not depend on how many others there are.
* **The runs file** (:mod:`sgdbayes.track.io`): written at :meth:`close` and
  :meth:`flush`; a write replaces this run's rows, so a resumed run never duplicates
  rows. A new tracker (not restored with :meth:`load_state_dict`) refuses, at its
  first step, a run id already in the file unless ``overwrite=True``.
"""
from __future__ import annotations

import copy
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .._validation import check_int
from ..sampling import LLCConfig, LLCResult, ModulePotential, estimate_llc_potential, sampling_data
from .grid import TrackGrid
from .io import check_covariates, check_out_path, column_order, runs_in_file, write_runs
from .losses import CriterionLoss, as_model_loss

__all__ = ["Tracker", "snapshot_model_id", "select_params"]

STATE_VERSION = 1
_MATERIALIZE_EVERY = 64

ParamSelector = Union[None, Sequence[str], Callable[[str, nn.Parameter], bool]]


def snapshot_model_id(run: str, step: int) -> int:
    """The model id of the LLC snapshot at ``step`` of ``run`` in the chain seeds: the first
    63 bits of BLAKE2b(run, step), so distinct (run, step) get distinct seed sequences."""
    h = hashlib.blake2b(f"{run}\x00{int(step)}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") & ((1 << 63) - 1)


def select_params(model: nn.Module, params: ParamSelector) -> list[tuple[str, nn.Parameter]]:
    """The tracked ``(name, parameter)`` pairs, in ``named_parameters()`` order.

    ``None``: every parameter with ``requires_grad`` (a frozen backbone is left out, so a
    fine-tuned head is what is tracked); a sequence of names, each a parameter name or a
    module prefix (``"fc"`` selects ``fc.weight`` and ``fc.bias``); or a predicate
    ``fn(name, parameter) -> bool``.
    """
    named = list(model.named_parameters())
    if params is None:
        sel = [(n, p) for n, p in named if p.requires_grad]
    elif callable(params):
        sel = [(n, p) for n, p in named if params(n, p)]
    elif isinstance(params, str) or not isinstance(params, Sequence):
        raise ValueError(f"params must be None, a list of parameter names / module prefixes or a predicate "
                         f"fn(name, param), got {params!r}")
    else:
        names = [n for n, _ in named]
        for q in params:
            if not any(n == q or n.startswith(q + ".") for n in names):
                raise ValueError(f"params: {q!r} matches no parameter of the model; parameters are "
                                 f"{names[:12]}{' ...' if len(names) > 12 else ''}")
        sel = [(n, p) for n, p in named if any(n == q or n.startswith(q + ".") for q in params)]
    if not sel:
        raise ValueError("params selects no parameter (with params=None: the model has no parameter "
                         "with requires_grad=True)")
    return sel


@dataclass
class _Snapshot:
    step: int
    w: Tensor            # tracked parameters, flat, CPU
    fixed: dict          # name -> index into Tracker._pool (untracked parameters and buffers)


class Tracker:
    """Record R(t) and LLC snapshots of one training run and write them to the runs file.

    Call :meth:`step` after each optimizer step (``step()`` counts, ``step(t)`` names
    the step), then :meth:`close` (or use ``with Tracker(...) as tr:``). See the module
    docstring for what is computed and docs/track.md for examples.

    ``run``: the run id (text). ``out``: the runs file (.csv, .csv.gz, .tsv, .parquet,
    .pq). ``data``: the LLC's training set (``(x, y)``, a dict of tensors, a Dataset or
    DataLoader; required with ``llc_every``). ``loss``: the LLC's loss,
    ``loss(model, batch)`` or a :class:`~sgdbayes.track.losses.ModelLoss`; default
    cross-entropy ``F.cross_entropy(model(x), y)`` for ``(x, y)`` data and the model's
    own ``model(**batch).loss`` for dict data. ``params``: see :func:`select_params`.
    ``covariates``: run-level columns (lr, batch_size, optimizer, ...); ``n_params``
    (tracked parameters) is added unless given. ``total_steps`` / ``record_every`` /
    ``record_log_points``: the record grid (:class:`~sgdbayes.track.grid.TrackGrid`).
    """

    def __init__(self, model: nn.Module, *, run, out, data=None, llc_every: Optional[int] = None,
                 llc: LLCConfig = LLCConfig(), params: ParamSelector = None, covariates: Optional[Mapping] = None,
                 loss=None, total_steps: Optional[int] = None, record_every: int = 10,
                 record_log_points: int = 100, overwrite: bool = False):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(run, bool) or not isinstance(run, (str, int)) or str(run) == "":
            raise ValueError(f"run must be a non-empty run id (text), got {run!r}")
        if not isinstance(llc, LLCConfig):
            raise ValueError(f"llc must be an LLCConfig, got {type(llc).__name__}")
        self.model = model
        self.run = str(run)
        self.out = check_out_path(out)
        self.llc_every = None if llc_every is None else check_int("llc_every", llc_every, 1)
        self.llc = llc
        if self.llc_every is not None and data is None:
            raise ValueError("llc_every needs data= (the training set the LLC is estimated on)")
        self.data = None if data is None else sampling_data(data)
        self.loss = as_model_loss(loss, self.data)
        self.grid = TrackGrid(total_steps, record_every, record_log_points)
        self.overwrite = bool(overwrite)
        named = select_params(model, params)
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        tracked = set(self.names)
        self._fixed_names = ([n for n, _ in model.named_parameters() if n not in tracked]
                             + [n for n, _ in model.named_buffers()])
        self.n_params = int(sum(p.numel() for p in self._params))
        self.covariates = {"n_params": self.n_params, **check_covariates(covariates)}
        with torch.no_grad():
            self._w0 = [p.detach().clone() for p in self._params]
        self._reset_records()
        self._owned = False       # True once this tracker may (re)write its run's rows
        self._closed = False
        self.llc_result: Optional[LLCResult] = None

    def _reset_records(self):
        self.last_step = 0
        self.diverged_step: Optional[int] = None
        self._steps: list[int] = []
        self._values: list[float] = []
        self._pending: list[Tensor] = []
        self._snaps: list[_Snapshot] = []
        self._pool: list[Tensor] = []
        self._last_fixed: dict[str, int] = {}
        self._llc_by_step: dict[int, float] = {}

    # ------------------------------------------------------------------ stepping
    def step(self, step: Optional[int] = None) -> None:
        """Note that an optimizer step was taken (``step``: its number, > the previous one)."""
        if self._closed:
            raise RuntimeError(f"tracker of run {self.run!r} is closed")
        t = self.last_step + 1 if step is None else check_int("step", step, self.last_step + 1)
        if not self._owned:
            self._claim_run()
        self.last_step = t
        if self.diverged_step is not None:
            return
        snap = self.llc_every is not None and t % self.llc_every == 0
        if t in self.grid or snap:
            self._record(t)
            if snap:
                self._materialize()  # a snapshot of diverged weights is not taken
                if self.diverged_step is None:
                    self._snapshot(t)

    def _claim_run(self):
        if not self.overwrite and self.run in runs_in_file(self.out):
            raise ValueError(f"{self.out}: run {self.run!r} is already in the file; give a new run id, "
                             f"resume with tracker.load_state_dict(...) from the run's checkpoint, or pass "
                             f"overwrite=True to replace its rows")
        self._owned = True

    @torch.no_grad()
    def _record(self, t: int) -> None:
        if self._params[0].device != self._w0[0].device:  # the model was moved after construction
            self._w0 = [w.to(p.device) for w, p in zip(self._w0, self._params)]
        norms = torch.stack(torch._foreach_norm(torch._foreach_sub(self._params, self._w0)))
        if norms.device.type == "mps":  # no float64 there
            norms = norms.cpu()
        self._steps.append(t)
        self._pending.append(norms.double().square().sum().sqrt())
        if len(self._pending) >= _MATERIALIZE_EVERY:
            self._materialize()

    def _materialize(self) -> None:
        """Bring pending displacements to the host; the first non-finite one marks divergence."""
        if not self._pending:
            return
        vals = torch.stack(self._pending).cpu().tolist()
        self._pending = []
        start = len(self._values)
        for i, v in enumerate(vals):
            if not math.isfinite(v):
                self.diverged_step = self._steps[start + i]
                del self._steps[start + i:]
                self._snaps = [s for s in self._snaps if s.step < self.diverged_step]
                return
            self._values.append(v)

    @torch.no_grad()
    def _snapshot(self, t: int) -> None:
        w = torch.cat([p.detach().reshape(-1) for p in self._params]).to("cpu", copy=True)
        state = dict(self.model.named_parameters())
        state.update(self.model.named_buffers())
        fixed = {}
        for name in self._fixed_names:
            v = state[name].detach().to("cpu", copy=True)
            j = self._last_fixed.get(name)
            if j is None or not torch.equal(self._pool[j], v):
                self._pool.append(v)
                j = len(self._pool) - 1
            fixed[name] = self._last_fixed[name] = j
        self._snaps.append(_Snapshot(t, w, fixed))

    # ------------------------------------------------------------------ results
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def snapshot_steps(self) -> list[int]:
        return [s.step for s in self._snaps]

    def frame(self) -> pd.DataFrame:
        """This run's rows: run, step, displacement, llc, n_params, diverged_step, covariates."""
        self._materialize()
        n = len(self._steps)
        df = pd.DataFrame({
            "run": pd.Series([self.run] * n, dtype=object),
            "step": np.asarray(self._steps, dtype=np.int64),
            "displacement": np.asarray(self._values, dtype=np.float64),
            "llc": np.array([self._llc_by_step.get(s, np.nan) for s in self._steps], dtype=np.float64),
            "diverged_step": np.full(n, np.nan if self.diverged_step is None else float(self.diverged_step)),
        })
        for k, v in self.covariates.items():
            df[k] = pd.Series([v] * n, dtype=object if isinstance(v, str) or v is None else None)
        return df[column_order(df.columns)]

    def llc_frame(self) -> pd.DataFrame:
        """After :meth:`close`: one row per LLC snapshot, ``step`` plus
        :meth:`sgdbayes.sampling.LLCResult.to_frame` (llc_std, negative, trend_flag, nbeta, ...)."""
        if self.llc_result is None:
            return pd.DataFrame(columns=["step", "model_id", "llc"])
        steps = {snapshot_model_id(self.run, s): s for s in self._llc_by_step}
        df = self.llc_result.to_frame()
        df.insert(0, "step", [steps[int(m)] for m in df["model_id"]])
        return df

    def flush(self) -> Path:
        """Write the rows recorded so far (LLC not yet estimated: empty) to the runs file."""
        df = self.frame()
        if len(df):
            write_runs(self.out, df)
        return self.out

    def close(self) -> pd.DataFrame:
        """Record the last step, estimate the snapshots' LLCs (one batched computation),
        write the run's rows and return them. A second call only returns them."""
        if self._closed:
            return self.frame()
        self._materialize()
        if self.diverged_step is None and self.last_step > 0 and (not self._steps or
                                                                   self._steps[-1] != self.last_step):
            self._record(self.last_step)
            self._materialize()
        if self._snaps:
            self._estimate_llc()
        self._closed = True
        self.flush()
        return self.frame()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:  # keep what was recorded; the original exception propagates
            try:
                self.flush()
            except Exception as err:  # pragma: no cover - reported, never masks the original
                warnings.warn(f"tracker of run {self.run!r}: could not write {self.out} ({err})")
        return False

    def _estimate_llc(self) -> None:
        device = self._params[0].device
        pool = [v.to(device) for v in self._pool]
        snaps = list(self._snaps)

        module = self.loss.prepare(copy.deepcopy(self.model))
        data = self.data.to(device)

        def potential(ss):
            fixed = [{n: pool[j] for n, j in s.fixed.items()} for s in ss]
            return ModulePotential.of_snapshots(module, self.names, [tuple(p.shape) for p in self._params], fixed,
                                                data, None if isinstance(self.loss, CriterionLoss) and self.loss.default else self.loss)

        w = torch.stack([s.w for s in snaps]).to(device)
        pot = potential(snaps)
        with torch.no_grad():
            ok = torch.isfinite(pot(w, None)).cpu().numpy()
        if not ok.all():
            bad = [s.step for s, o in zip(snaps, ok) if not o]
            warnings.warn(f"run {self.run!r}: the loss is not finite at LLC snapshot step(s) {bad}; their llc is "
                          f"left empty")
            snaps = [s for s, o in zip(snaps, ok) if o]
            if not snaps:
                return
            w = w[torch.as_tensor(ok, device=device)]
            pot = potential(snaps)
        ids = [snapshot_model_id(self.run, s.step) for s in snaps]
        self.llc_result = estimate_llc_potential(pot, w, self.llc, ids)
        self._llc_by_step = {s.step: float(v) for s, v in zip(snaps, self.llc_result.llc)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume: w_0, the step, the records and the snapshots (CPU
        tensors and plain Python values; save it with the model's checkpoint)."""
        self._materialize()
        return {
            "version": STATE_VERSION, "run": self.run, "names": list(self.names),
            "shapes": [list(p.shape) for p in self._params], "grid": list(self.grid.settings()),
            "llc_every": self.llc_every, "last_step": self.last_step, "diverged_step": self.diverged_step,
            "w0": [w.detach().cpu() for w in self._w0], "steps": list(self._steps), "values": list(self._values),
            "snapshots": [{"step": s.step, "w": s.w, "fixed": dict(s.fixed)} for s in self._snaps],
            "pool": list(self._pool), "last_fixed": dict(self._last_fixed),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Resume from :meth:`state_dict` (the tracker then owns its run's rows in the file). The run
        and the tracked parameters must match; the record grid and ``llc_every`` of this tracker
        apply from the resumed step on."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a tracker state (version {STATE_VERSION}); got "
                             f"{type(state).__name__} with version {getattr(state, 'get', lambda k: None)('version')!r}")
        # the grid and llc_every may change on resume (e.g. training for longer): they apply from here on
        expect = {"run": self.run, "names": list(self.names), "shapes": [list(p.shape) for p in self._params]}
        for key, want in expect.items():
            got = state[key]
            if (list(got) if isinstance(got, (list, tuple)) else got) != want:
                raise ValueError(f"tracker state: {key!r} is {got!r} in the checkpoint but {want!r} in this "
                                 f"tracker; resume the same run with the same tracked parameters")
        self._reset_records()
        self.last_step = int(state["last_step"])
        self.diverged_step = None if state["diverged_step"] is None else int(state["diverged_step"])
        self._w0 = [w.to(p.device, p.dtype) for w, p in zip(state["w0"], self._params)]
        self._steps = [int(s) for s in state["steps"]]
        self._values = [float(v) for v in state["values"]]
        self._snaps = [_Snapshot(int(s["step"]), s["w"], dict(s["fixed"])) for s in state["snapshots"]]
        self._pool = list(state["pool"])
        self._last_fixed = dict(state["last_fixed"])
        self._owned = True
        self._closed = False
        self.llc_result = None
