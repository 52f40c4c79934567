"""The steps at which a tracker records the displacement R(t).

The engine's record grid (:func:`sgdbayes.engine.record_grid`): ``log_points``
geometric points ``round(geomspace(1, H))``, every ``every``-th step and H itself,
for a horizon H. A training loop rarely knows its length for sure, so:

* ``total_steps`` given: H = total_steps, exactly the engine's grid for a run of
  that length; should training go on past H, every ``every``-th step is recorded.
* ``total_steps=None``: H = :data:`DEFAULT_HORIZON` (100 000 steps); the geometric
  points are spread over [1, H] (a shorter run sees the ones below its length),
  every ``every``-th step is recorded at any t.

The tracker also records the last step it saw (at ``close()``) and every LLC
snapshot step, so the LLC rows have a displacement too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._validation import check_int
from ..engine import record_grid

__all__ = ["TrackGrid", "DEFAULT_HORIZON"]

DEFAULT_HORIZON = 100_000


@dataclass(frozen=True)
class TrackGrid:
    """Membership test for the record grid (see the module docstring)."""

    total_steps: int | None = None
    every: int = 10
    log_points: int = 100
    _steps: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.total_steps is not None:
            object.__setattr__(self, "total_steps", check_int("total_steps", self.total_steps, 1))
        object.__setattr__(self, "every", check_int("record_every", self.every, 1))
        object.__setattr__(self, "log_points", check_int("record_log_points", self.log_points, 0))
        object.__setattr__(self, "_steps", frozenset(int(s) for s in record_grid(self.horizon, self.every,
                                                                                  self.log_points)))

    @property
    def horizon(self) -> int:
        return self.total_steps if self.total_steps is not None else DEFAULT_HORIZON

    def __contains__(self, step: int) -> bool:
        return step in self._steps or (step > self.horizon and step % self.every == 0)

    def steps_upto(self, n: int) -> np.ndarray:
        """The grid steps in [1, n] (sorted)."""
        return np.array([s for s in range(1, n + 1) if s in self], dtype=np.int64)

    def settings(self) -> tuple:
        return (self.total_steps, self.every, self.log_points)
