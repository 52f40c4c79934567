"""One vocabulary for every result sgdbayes returns (statsmodels is the model).

Every public result is a dataclass that derives from :class:`Result` and so has

* ``estimates(level=None) -> DataFrame``: one row per reported parameter, the
  columns of :data:`ESTIMATE_COLUMNS` (``estimate, se, ci_low, ci_high, pvalue``);
  a result implements it through ``_estimate_rows(level)``;
* ``conf_int(level=None) -> DataFrame``: the ``ci_low`` / ``ci_high`` columns of
  ``estimates`` (``level`` is the coverage, 0.95, never a significance level);
* ``to_frame() -> DataFrame`` (default: ``estimates()``);
* ``to_dict() -> dict`` / ``from_dict(d)``: a JSON-able round trip of the whole
  result (numpy arrays, DataFrames, nested results, enums), so a pipeline
  stage caches results instead of hand-flattening them;
* ``summary() -> str``: a plain-text table of the estimates.

Names used everywhere: ``estimate``, ``se``, ``ci_low``, ``ci_high``, ``pvalue``,
``level`` (coverage of intervals), ``n`` (sample size), ``seed`` (randomness).

Hypothesis tests return :class:`HypothesisTest`, whose :class:`Verdict` is
decided by one rule, :func:`decide` (see docs/methods.md, "Verdicts").
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import numpy as np
import pandas as pd

__all__ = ["ESTIMATE_COLUMNS", "Result", "Verdict", "HypothesisTest", "decide", "estimate_row",
           "encode", "decode", "register", "jsonable", "revive"]

ESTIMATE_COLUMNS = ["estimate", "se", "ci_low", "ci_high", "pvalue"]


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def estimate_row(name: str, estimate, se=None, ci_low=None, ci_high=None, pvalue=None) -> dict:
    """One row of :meth:`Result.estimates` (missing values are NaN, never None)."""
    return {"parameter": name, "estimate": _nan(estimate), "se": _nan(se), "ci_low": _nan(ci_low),
            "ci_high": _nan(ci_high), "pvalue": _nan(pvalue)}


# --------------------------------------------------------------------------- encoding
_TYPE = "__type__"


def encode(obj: Any) -> Any:
    """A JSON-able tagged form of ``obj`` (inverse: :func:`decode`).

    Results (dataclasses of sgdbayes) keep their class; numpy arrays keep dtype and
    shape (NaN / inf written as strings so that JSON stays strict); DataFrames are
    stored column by column; enums by value; tuples as lists.
    """
    if isinstance(obj, enum.Enum):
        return {_TYPE: "enum", "cls": _qualname(type(obj)), "value": obj.value}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {_TYPE: "result", "cls": _qualname(type(obj)),
                "fields": {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, pd.DataFrame):
        return {_TYPE: "frame", "columns": [str(c) for c in obj.columns],
                "data": {str(c): encode(obj[c].to_numpy()) for c in obj.columns}}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {_TYPE: "objarray", "data": [encode(v) for v in obj.tolist()]}
        return {_TYPE: "array", "dtype": obj.dtype.str, "shape": list(obj.shape),
                "data": [_enc_float(v) for v in obj.ravel().tolist()]}
    if isinstance(obj, Mapping):
        return {_TYPE: "dict", "items": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _enc_float(float(obj))
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot encode a {type(obj).__name__} in a result")


def _enc_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _dec_float(v):
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


def _qualname(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


#: classes :func:`decode` may build: every :class:`Result` subclass (registered on definition)
#: and the enums registered with :func:`register`; nothing else is ever imported or called
_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Allow :func:`decode` to rebuild instances of ``cls`` (Result subclasses register themselves)."""
    _REGISTRY[_qualname(cls)] = cls
    return cls


def _resolve(name: str):
    if name not in _REGISTRY:
        module = name.partition(":")[0]
        if module.startswith("sgdbayes."):  # an sgdbayes result whose module is not imported yet
            importlib.import_module(module)
    if name not in _REGISTRY:
        raise ValueError(f"refusing to decode a value of class {name!r}: not a registered sgdbayes result")
    return _REGISTRY[name]


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return _dec_float(obj)
    kind = obj.get(_TYPE)
    if kind == "array":
        data = [_dec_float(v) for v in obj["data"]]
        return np.asarray(data, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    if kind == "objarray":
        out = np.empty(len(obj["data"]), dtype=object)
        out[:] = [decode(v) for v in obj["data"]]
        return out
    if kind == "frame":
        return pd.DataFrame({c: decode(obj["data"][c]) for c in obj["columns"]}, columns=obj["columns"])
    if kind == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in obj["items"]}
    if kind == "enum":
        return _resolve(obj["cls"])(obj["value"])
    if kind == "result":
        cls = _resolve(obj["cls"])
        return cls.from_dict({"fields": obj["fields"]})
    raise ValueError(f"not an encoded sgdbayes value: keys {sorted(obj)}")


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def jsonable(obj: Any) -> Any:
    """Plain JSON of a mapping of outputs (the one JSON convention of results.json and the stage cache).

    A :class:`Result` (or a DataFrame) becomes its tagged :func:`encode` form, lossless, so that
    :func:`revive` rebuilds it; numpy values become Python ones; outside results NaN -> null and
    ±inf -> "inf" / "-inf" (JSON has no infinity, and an infinite KL must not read as missing);
    enums -> their value; Paths -> str. Anything else is a TypeError naming its type.
    """
    import os

    if isinstance(obj, Result) or isinstance(obj, pd.DataFrame):
        return encode(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isnan(f):
            return None
        return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(obj, os.PathLike):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def revive(obj: Any) -> Any:
    """Inverse of :func:`jsonable` for the tagged values: every stored Result (and DataFrame) is
    rebuilt; plain values are returned as they are."""
    if isinstance(obj, dict):
        if _TYPE in obj:
            return decode(obj)
        return {k: revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [revive(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- base
class Result:
    """Base of every public result (a dataclass): one vocabulary (module docstring)."""

    #: default coverage of intervals when a result has no ``level`` field
    default_level: ClassVar[float] = 0.95

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(cls)

    def _estimate_rows(self, level: float) -> list[dict]:
        """Rows built with :func:`estimate_row`; results without parameters return []."""
        return []

    def _level(self, level: Optional[float]) -> float:
        from .._validation import check_level

        if level is None:
            level = getattr(self, "level", None) or self.default_level
        return check_level(level)

    def estimates(self, level: Optional[float] = None) -> pd.DataFrame:
        rows = self._estimate_rows(self._level(level))
        df = pd.DataFrame(rows, columns=["parameter", *ESTIMATE_COLUMNS])
        return df.set_index("parameter")

    def conf_int(self, level: Optional[float] = None) -> pd.DataFrame:
        """``ci_low`` / ``ci_high`` per parameter at coverage ``level`` (default: the result's)."""
        return self.estimates(level)[["ci_low", "ci_high"]]

    def to_frame(self) -> pd.DataFrame:
        return self.estimates()

    def to_dict(self) -> dict:
        return encode(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Result":
        if d.get(_TYPE) == "result":
            found = _resolve(d["cls"])
            if not issubclass(found, cls):
                raise ValueError(f"{d['cls']} is not a {cls.__name__}")
            cls = found
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: decode(v) for k, v in d["fields"].items()}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
        return cls(**values)

    def summary(self) -> str:
        from tabulate import tabulate

        title = type(self).__name__
        est = self.estimates()
        if est.empty:
            return title
        table = tabulate(est.reset_index(), headers="keys", tablefmt="simple", floatfmt=".4g", showindex=False)
        return f"{title}\n{table}"


# --------------------------------------------------------------------------- verdicts
@register
class Verdict(str, enum.Enum):
    """Outcome of a hypothesis test. The claim is the alternative; H0 is its violation."""

    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"
    UNTESTABLE = "untestable"

    def __str__(self) -> str:
        return self.value


def decide(estimate: float, ci_low: float, ci_high: float, pvalue: Optional[float], level: float,
           *, threshold: float = 0.0, direction: str = "less") -> tuple[Verdict, str]:
    """The one decision rule for every hypothesis (docs/methods.md, "Verdicts").

    The claim is ``parameter < threshold`` (``direction="less"``) or
    ``parameter > threshold`` (``"greater"``); ``[ci_low, ci_high]`` is a two-sided
    interval at coverage ``level`` and ``pvalue`` a one-sided p-value of H0 (the
    violation), or None when only the interval decides.

    * **supported**: the whole interval lies on the claim's side of the threshold
      and (when given) ``pvalue < 1 - level``;
    * **contradicted**: the whole interval lies on the other side;
    * **not supported**: anything else (the interval contains the threshold);
    * **untestable**: the estimate or its interval is missing.

    Returns ``(verdict, reason)``; the reason is one sentence a report can print.
    """
    from .._validation import check_level, check_pvalue

    check_level(level)
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater', got {direction!r}")
    if pvalue is not None and not (isinstance(pvalue, float) and math.isnan(pvalue)):
        check_pvalue(pvalue)
    vals = [_nan(estimate), _nan(ci_low), _nan(ci_high)]
    if any(math.isnan(v) for v in vals):
        return Verdict.UNTESTABLE, "no estimate or interval could be computed"
    lo, hi = vals[1], vals[2]
    a = 1 - level
    sign = "<" if direction == "less" else ">"
    inside = hi < threshold if direction == "less" else lo > threshold
    against = lo > threshold if direction == "less" else hi < threshold
    pct = f"{100 * level:g} %"
    p_ok = pvalue is None or (math.isfinite(float(pvalue)) and float(pvalue) < a)
    if inside and p_ok:
        return Verdict.SUPPORTED, f"the {pct} interval lies {sign} {threshold:g}" + (
            "" if pvalue is None else f" and p < {a:g}")
    if against:
        return Verdict.CONTRADICTED, f"the {pct} interval lies on the other side of {threshold:g}"
    if inside:
        return Verdict.NOT_SUPPORTED, f"the {pct} interval lies {sign} {threshold:g} but p >= {a:g}"
    return Verdict.NOT_SUPPORTED, f"the {pct} interval contains {threshold:g}"


@dataclass
class HypothesisTest(Result):
    """The result of testing one hypothesis (H1 ... H7 and their variants).

    ``id`` is the hypothesis id shared by every study ("H1", "H2", ..., with a
    suffix for a variant such as "H1-whole"); ``statistic`` says what
    ``estimate`` is (e.g. "median over runs of alpha_late - 1/2") and
    ``threshold`` / ``direction`` what the claim says about it; ``test`` names
    the procedure behind ``pvalue``. ``verdict`` and ``reason`` come from
    :func:`decide` unless the caller overrode them for a stated cause
    (e.g. ``Verdict.INCONCLUSIVE`` when a reference did not converge), which is
    then in ``reason``. ``details`` holds per-test extras (shares of runs, sign
    test, counts) as plain values.
    """

    id: str
    claim: str
    statistic: str
    estimate: float
    ci_low: float
    ci_high: float
    pvalue: Optional[float]
    test: str
    verdict: Verdict
    reason: str
    level: float = 0.95
    threshold: float = 0.0
    direction: str = "less"
    window: str = ""
    n_tested: int = 0
    n_excluded: int = 0
    notes: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @classmethod
    def decided(cls, id: str, claim: str, statistic: str, estimate, ci_low, ci_high, pvalue, test: str,
                level: float = 0.95, *, threshold: float = 0.0, direction: str = "less",
                override: Optional[tuple[Verdict, str]] = None, **extra) -> "HypothesisTest":
        """Build a test result whose verdict is :func:`decide`'s (or ``override``'s)."""
        verdict, reason = override or decide(estimate, ci_low, ci_high, pvalue, level, threshold=threshold,
                                             direction=direction)
        return cls(id=id, claim=claim, statistic=statistic, estimate=_nan(estimate), ci_low=_nan(ci_low),
                   ci_high=_nan(ci_high), pvalue=None if pvalue is None else float(pvalue), test=test,
                   verdict=Verdict(verdict), reason=reason, level=level, threshold=threshold,
                   direction=direction, **extra)

    def _estimate_rows(self, level: float) -> list[dict]:
        if not math.isclose(level, self.level):
            raise ValueError(f"{self.id}: the interval was computed at level {self.level:g}; "
                             f"recompute the test for level {level:g}")
        return [estimate_row(self.id, self.estimate, None, self.ci_low, self.ci_high, self.pvalue)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"id": self.id, "claim": self.claim, "statistic": self.statistic,
                              "estimate": self.estimate, "ci_low": self.ci_low, "ci_high": self.ci_high,
                              "pvalue": self.pvalue, "test": self.test, "verdict": str(self.verdict),
                              "reason": self.reason, "n_tested": self.n_tested,
                              "n_excluded": self.n_excluded}])

    def summary(self) -> str:
        """Plain text in the one format of every report (:mod:`sgdbayes._format`, missing values "—")."""
        from .._format import fmt_estimate, fmt_level, fmt_pvalue

        lines = [f"{self.id}: {self.claim}",
                 f"  {self.statistic} = {fmt_estimate(self.estimate, self.ci_low, self.ci_high)} "
                 f"({fmt_level(self.level)}), p-value = {fmt_pvalue(self.pvalue, self.test)}",
                 f"  verdict: {self.verdict} -- {self.reason}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
