"""The LLC calibration helper on devinterp's known-λ models (tests/known_llc.py)."""
import numpy as np
import pytest

from known_llc import NormalCrossing, ReducedRankRegression, rrr_true_llc
from sgdbayes.sampling.calibrate import CalibrationGrid, calibrate_llc

GRID = dict(step_sizes=(1e-4, 4e-4, 1e-3), localizations=(0.0, 1.0, 10.0, 100.0), num_chains=4, num_draws=1000,
            num_burnin_steps=300)


def test_rrr_true_llc_cases():
    # devinterp's (m, h, n) cases: 1 odd, 1 even, 2, 3, 4
    assert rrr_true_llc(5, 3, 5) == 6.5
    assert rrr_true_llc(5, 4, 5) == pytest.approx((2 * 25 + 40 + 40 - 25 - 25 - 16) / 8)
    assert rrr_true_llc(4, 3, 8) == 6.0 and rrr_true_llc(8, 3, 4) == 6.0 and rrr_true_llc(3, 8, 4) == 6.0


def test_a_cell_does_not_depend_on_the_rest_of_the_grid():
    pot = NormalCrossing((0, 1))
    small = dict(num_chains=2, num_draws=40, num_burnin_steps=10)
    full = calibrate_llc(pot, pot.w_star(), CalibrationGrid(step_sizes=(1e-4,), localizations=(0.0, 1.0), **small))
    # cell 1 of the first grid is (1e-4, 1.0); run alone it is cell 0, so give it seed-equal ids via its index
    alone = calibrate_llc(pot, pot.w_star(), CalibrationGrid(step_sizes=(1e-4,), localizations=(0.0,), **small))
    assert full.cells["llc"].iloc[0] == pytest.approx(alone.cells["llc"].iloc[0], rel=1e-12)


def test_large_localization_is_rejected_as_gamma_sensitive():
    """γ = 100 pulls λ̂ towards 0 (the bias of the old presets): that cell must not pass."""
    pot = NormalCrossing((0, 1))
    cal = calibrate_llc(pot, pot.w_star(), CalibrationGrid(step_sizes=(4e-4,), localizations=(0.0, 1.0, 1000.0),
                                                           num_chains=4, num_draws=400, num_burnin_steps=100))
    row = cal.cells.set_index("localization").loc[1000.0]
    assert not row["passes"] and not row["insensitive"]
    assert cal.recommended is not None and cal.recommended["localization"] < 1000.0
    assert "recommended" in cal.summary()


def test_nothing_passes_says_why():
    pot = NormalCrossing((0, 1))
    cal = calibrate_llc(pot, pot.w_star(), CalibrationGrid(step_sizes=(3e-3,), localizations=(0.0, 1.0), num_chains=2,
                                                           num_draws=100, num_burnin_steps=10, min_accept=0.999))
    assert cal.recommended is None and "no cell passes" in cal.why


@pytest.mark.slow
@pytest.mark.parametrize("powers", [(0, 1), (1, 1), (1, 2)])
def test_calibrated_normal_crossing_within_devinterp_tolerance(powers):
    pot = NormalCrossing(powers)
    cal = calibrate_llc(pot, pot.w_star(), CalibrationGrid(**GRID))
    rec = cal.recommended
    assert rec is not None, cal.summary()
    # devinterp's tolerance: truth within λ̂ ± 3.5 chain std
    assert abs(rec["llc"] - pot.true_llc) < 3.5 * rec["llc_std"], cal.summary()


@pytest.mark.slow
def test_calibrated_rrr_within_devinterp_tolerance():
    pot = ReducedRankRegression(5, 3, 5)
    cal = calibrate_llc(pot, pot.w_star(), CalibrationGrid(**GRID))
    rec = cal.recommended
    assert rec is not None, cal.summary()
    assert np.isclose(rec["llc"], pot.true_llc, rtol=0.4), cal.summary()   # devinterp's tolerance
