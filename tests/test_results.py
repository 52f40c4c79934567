"""The shared result vocabulary: encoding round trip, the one decision rule, validation."""
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from sgdbayes._validation import check_int, check_level, check_seeds
from sgdbayes.stats.results import HypothesisTest, Result, Verdict, decide, estimate_row


@dataclass
class _Toy(Result):
    mean: float
    se: float
    values: np.ndarray
    table: pd.DataFrame
    nested: "HypothesisTest | None" = None
    tags: dict = field(default_factory=dict)
    level: float = 0.9

    def _estimate_rows(self, level):
        from scipy import stats

        q = stats.norm.ppf((1 + level) / 2)
        return [estimate_row("mean", self.mean, self.se, self.mean - q * self.se, self.mean + q * self.se)]


def _toy():
    h = HypothesisTest.decided("H1", "alpha < 1/2", "median alpha - 1/2", -0.1, -0.2, -0.05, 0.001,
                               "Wilcoxon", 0.95, notes=["n"], details={"share": 0.5})
    return _Toy(1.5, 0.5, np.array([1.0, np.nan, np.inf, -2.0]),
                pd.DataFrame({"run": ["007", "7"], "x": [1.0, np.nan], "ok": [True, False]}),
                nested=h, tags={"a": [1, 2], 3: "x"})


def test_round_trip_through_json_keeps_types_nan_and_inf():
    t = _toy()
    d = json.loads(json.dumps(t.to_dict(), allow_nan=False))  # strict JSON: no bare NaN
    back = Result.from_dict(d)
    assert isinstance(back, _Toy) and isinstance(back.nested, HypothesisTest)
    np.testing.assert_array_equal(back.values, t.values)
    assert back.values.dtype == t.values.dtype
    pd.testing.assert_frame_equal(back.table, t.table)
    assert back.table["run"].tolist() == ["007", "7"]
    assert back.nested.verdict is Verdict.SUPPORTED and back.nested.details == {"share": 0.5}
    assert back.tags == {"a": [1, 2], 3: "x"}


def test_from_dict_refuses_foreign_classes():
    d = _toy().to_dict()
    d["cls"] = "os:system"
    with pytest.raises(ValueError, match="not a registered sgdbayes result"):
        Result.from_dict(d)


def test_conf_int_uses_level_as_coverage():
    t = _toy()
    ci90 = t.conf_int()
    ci99 = t.conf_int(0.99)
    assert list(ci90.columns) == ["ci_low", "ci_high"] and list(ci90.index) == ["mean"]
    assert ci99.loc["mean", "ci_low"] < ci90.loc["mean", "ci_low"]
    assert math.isclose(ci90.loc["mean", "ci_high"] - 1.5, 1.6448536 * 0.5, rel_tol=1e-6)
    with pytest.raises(ValueError, match="level"):
        t.conf_int(95)


@pytest.mark.parametrize("args, verdict", [
    ((-0.1, -0.2, -0.05, 0.01), Verdict.SUPPORTED),
    ((-0.1, -0.2, -0.05, 0.2), Verdict.NOT_SUPPORTED),       # interval below but p too large
    ((-0.1, -0.2, 0.05, 0.01), Verdict.NOT_SUPPORTED),       # interval contains the threshold
    ((0.1, 0.05, 0.2, 0.99), Verdict.CONTRADICTED),
    ((float("nan"), -1, 1, 0.5), Verdict.UNTESTABLE),
    ((-0.1, -0.2, -0.05, None), Verdict.SUPPORTED),          # interval-only decision
])
def test_decide_rule(args, verdict):
    v, reason = decide(*args, level=0.95)
    assert v is verdict and reason


def test_decide_greater_mirrors_less():
    assert decide(0.3, 0.1, 0.5, 0.01, 0.95, direction="greater")[0] is Verdict.SUPPORTED
    assert decide(-0.3, -0.5, -0.1, 0.99, 0.95, direction="greater")[0] is Verdict.CONTRADICTED
    with pytest.raises(ValueError, match="p-value"):
        decide(0.3, 0.1, 0.5, 1.5, 0.95)


def test_validation_messages_name_the_argument():
    with pytest.raises(ValueError, match="train.seeds must be an integer >= 1, got 0"):
        check_int("train.seeds", 0, 1)
    with pytest.raises(ValueError, match="seeds must be a count"):
        check_seeds(2.5)
    with pytest.raises(ValueError, match=r"seeds\[0\]"):
        check_seeds([0.5, 1.7])
    with pytest.raises(ValueError, match="analysis.level"):
        check_level(2, "analysis.level")
    assert check_seeds(3) == (0, 1, 2) and check_seeds([4, 2]) == (4, 2)
