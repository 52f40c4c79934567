"""Batched seed-ensemble training: K independent models of any family advanced as one
computation (:mod:`sgdbayes.engine.train` states the exact semantics; docs/models.md)."""

from .batches import batch_indices, displacement, record_grid
from .config import EnsembleConfig
from .result import EnsembleResult, EnsembleState, Hook
from .train import evaluate, memory_budget, train_ensemble

__all__ = ["EnsembleConfig", "EnsembleResult", "EnsembleState", "Hook", "train_ensemble", "batch_indices",
           "record_grid", "displacement", "evaluate", "memory_budget"]
