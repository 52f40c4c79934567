"""One home for argument validation (shared by every layer; no torch here).

Each checker returns the value, converted to its canonical type, or raises
``ValueError`` whose message names the argument (``name``) and says what was
expected and what was given. Config dataclasses call these in ``__post_init__``
with the TOML key as ``name`` so that the runner's error names the key.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = ["check_int", "check_float", "check_level", "check_probability", "check_pvalue", "check_seed",
           "check_seeds", "check_choice", "check_columns", "check_finite_array", "check_n_boot",
           "check_nonnegative_array", "check_pvalue_array", "check_generator"]


def check_int(name: str, value: Any, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """An integer (bool, 2.5 and "3" rejected) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer{_range(minimum, maximum)}, got {value!r}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be an integer{_range(minimum, maximum)}, got {v}")
    return v


def check_float(name: str, value: Any, minimum: Optional[float] = None, maximum: Optional[float] = None,
                *, strict_min: bool = False, strict_max: bool = False, allow_inf: bool = False) -> float:
    """A finite real number (bool rejected) within the stated bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    low_bad = minimum is not None and (v <= minimum if strict_min else v < minimum)
    high_bad = maximum is not None and (v >= maximum if strict_max else v > maximum)
    if low_bad or high_bad:
        lo = "" if minimum is None else f"{'>' if strict_min else '>='} {minimum:g}"
        hi = "" if maximum is None else f"{'<' if strict_max else '<='} {maximum:g}"
        raise ValueError(f"{name} must be {' and '.join(s for s in (lo, hi) if s)}, got {value!r}")
    return v


def check_level(value: Any, name: str = "level") -> float:
    """Coverage of an interval, strictly between 0 and 1 (0.95, not 95 and not 0.05 meant as alpha)."""
    return check_float(name, value, 0.0, 1.0, strict_min=True, strict_max=True)


def check_probability(name: str, value: Any) -> float:
    return check_float(name, value, 0.0, 1.0)


def check_pvalue(value: Any, name: str = "p-value") -> float:
    return check_float(name, value, 0.0, 1.0)


def check_seed(value: Any, name: str = "seed") -> int:
    """A non-negative integer seed (numpy's and torch's generators accept these)."""
    return check_int(name, value, 0)


def check_seeds(value: Any, name: str = "seeds") -> tuple[int, ...]:
    """``K`` (meaning ``range(K)``) or a sequence of distinct non-negative integer seeds."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return tuple(range(check_int(name, value, 1)))
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a count K >= 1 or a sequence of integer seeds, got {value!r}")
    seeds = tuple(check_seed(s, f"{name}[{i}]") for i, s in enumerate(value))
    if not seeds:
        raise ValueError(f"{name}: need at least one seed, got an empty sequence")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValueError(f"{name} must be distinct; repeated: {dup[:10]}")
    return seeds


def check_choice(name: str, value: Any, choices: Sequence) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_columns(frame, columns: Iterable[str], what: str = "table") -> None:
    """Every column in ``columns`` is present in ``frame`` (a DataFrame); the error names the missing ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; it has {list(map(str, frame.columns))}")


def check_finite_array(name: str, value: Any, ndim: Optional[int] = None) -> np.ndarray:
    """A float array with no NaN / inf (the error counts and locates the bad entries)."""
    a = np.asarray(value, dtype=float)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s), the first at index {first}")
    return a


def check_n_boot(value: Any, name: str = "n_boot") -> int:
    """A number of bootstrap (or permutation) resamples, an integer >= 1."""
    return check_int(name, value, 1)


def check_nonnegative_array(name: str, value: Any) -> np.ndarray:
    """A float array with no negative or infinite entry (NaN = missing is allowed), e.g. standard errors."""
    a = np.asarray(value, dtype=float)
    bad = (a < 0) | np.isinf(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be >= 0 and finite (NaN = missing); {int(bad.sum())} value(s) are not, "
                         f"the first {a[first]!r} at index {first}")
    return a


def check_pvalue_array(name: str, value: Any) -> np.ndarray:
    """A float array of p-values in [0, 1] (NaN = missing is allowed)."""
    a = np.asarray(value, dtype=float)
    bad = (a < 0) | (a > 1)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must hold p-values in [0, 1]; {int(bad.sum())} value(s) are not, "
                         f"the first {a[first]!r} at index {first}")
    return a


def check_generator(seed: Any, name: str = "seed") -> np.random.Generator:
    """The numpy Generator behind a ``seed`` argument of a stats function.

    A Generator is used as is (its stream continues); an integer >= 0 seeds a fresh
    ``numpy.random.default_rng(seed)``; None draws fresh OS entropy (not reproducible).
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    return np.random.default_rng(check_seed(seed, name))


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
