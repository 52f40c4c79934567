"""stats.jumps: change points recover known jumps; the alignment permutation test has its size
under independent jump times and power under aligned ones; the Hill estimator recovers a known
Pareto tail index and its interval covers it."""
import numpy as np
import pytest

pytest.importorskip("ruptures")

from sgdbayes.stats import jumps as J
from sgdbayes.stats.jumps import alignment_statistic, change_points, hill_tail_index, jump_sizes
from sgdbayes.stats.results import Verdict


def _steps(n, times, sizes, rng, noise=0.1):
    y = np.zeros(n)
    for t, s in zip(times, sizes):
        y[t:] += s
    return y + noise * rng.standard_normal(n)


def test_change_points_find_known_jumps():
    rng = np.random.default_rng(0)
    y = _steps(200, [50, 120], [1.0, -2.0], rng)
    cps = change_points(y)
    assert len(cps) == 2 and abs(cps[0] - 50) <= 2 and abs(cps[1] - 120) <= 2
    sz = jump_sizes(y, cps)
    assert sz[0] == pytest.approx(1.0, abs=0.1) and sz[1] == pytest.approx(-2.0, abs=0.1)
    assert len(change_points(0.1 * rng.standard_normal(200))) == 0
    with pytest.raises(ValueError, match="NaN"):
        change_points(np.array([0.0, np.nan, 1.0, 2.0]))


def test_alignment_statistic():
    assert alignment_statistic([10, 50], [12], 3) == 0.5
    assert np.isnan(alignment_statistic([], [1], 3))
    assert alignment_statistic([10], [], 3) == 0.0


def _sim_times(aligned, rng, runs=8, n=120):
    """Jump times directly (the permutation test's size and power, without detection error)."""
    A, B = [], []
    for _ in range(runs):
        ta = np.sort(rng.choice(np.arange(n), 2, replace=False))
        A.append(ta)
        B.append((ta + rng.integers(-2, 3, 2)) % n if aligned else np.sort(rng.choice(np.arange(n), 2, replace=False)))
    return A, B


def _sim(aligned, rng, runs=8, n=120):
    A, B = [], []
    for _ in range(runs):
        ta = np.sort(rng.choice(np.arange(5, n - 5), 2, replace=False))
        tb = ta + rng.integers(-1, 2, 2) if aligned else np.sort(rng.choice(np.arange(5, n - 5), 2, replace=False))
        A.append(change_points(_steps(n, ta, [1.0, 1.0], rng)))
        B.append(change_points(_steps(n, tb, [1.5, -1.0], rng)))
    return A, B


def test_alignment_power_and_size():
    rng = np.random.default_rng(1)
    rej_aligned = rej_null = 0
    reps = 200
    for r in range(reps):
        A, B = _sim_times(True, rng)
        t = J.test_jump_alignment(A, B, 120, 3, id="H8", claim="x", n_perm=199, n_boot=199, seed=r)
        rej_aligned += t.pvalue < 0.05
        A, B = _sim_times(False, rng)
        t = J.test_jump_alignment(A, B, 120, 3, id="H8", claim="x", n_perm=199, n_boot=199, seed=r)
        rej_null += t.pvalue < 0.05
    assert rej_aligned / reps > 0.9
    assert rej_null / reps <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps)


def test_alignment_verdict_and_untestable():
    rng = np.random.default_rng(2)
    A, B = _sim(True, rng)
    t = J.test_jump_alignment(A, B, 120, 3, id="H8", claim="x", n_perm=199, n_boot=199, seed=0)
    assert t.verdict == Verdict.SUPPORTED and t.ci_low > 0 and t.n_tested == 8
    u = J.test_jump_alignment([[], []], [[3], [4]], 120, 3, id="H8", claim="x")
    assert u.verdict == Verdict.UNTESTABLE and u.n_excluded == 2


def test_hill_recovers_pareto_index_and_covers():
    rng = np.random.default_rng(3)
    x = rng.pareto(1.5, 20000) + 1.0
    a, k = hill_tail_index(x, 0.05)
    assert a == pytest.approx(1.5, rel=0.1) and k == 1000
    hits = 0
    for r in range(30):
        runs = [rng.pareto(1.5, 400) + 1.0 for _ in range(10)]
        t = J.test_heavy_tail(runs, id="H9", claim="x", what="x", tail_fraction=0.1, n_boot=199, seed=r)
        hits += t.ci_low <= 1.5 <= t.ci_high
    assert hits >= 24   # nominal 95 %: 28.5 of 30; percentile bootstrap of a ratio runs a little short
    light = J.test_heavy_tail([np.abs(rng.standard_normal(2000)) for _ in range(8)], id="H9", claim="x", what="x",
                            n_boot=199)
    assert light.estimate > 2 and light.verdict != Verdict.SUPPORTED
    one = J.test_heavy_tail([rng.pareto(1.2, 5000) + 1.0], id="H9", claim="x", what="x")
    assert one.verdict == Verdict.SUPPORTED


def test_modular_data():
    from sgdbayes.data import load_dataset

    d = load_dataset("modular", p=7, train_fraction=0.5, seed=3, device="cpu")
    x = np.concatenate([d.x_train.numpy(), d.x_test.numpy()])
    y = np.concatenate([d.y_train.numpy(), d.y_test.numpy()])
    assert x.shape == (49, 14) and d.n_train in (24, 25)
    a, b = x[:, :7].argmax(1), x[:, 7:].argmax(1)
    assert (y == (a + b) % 7).all() and len({(i, j) for i, j in zip(a, b)}) == 49
    with pytest.raises(ValueError, match="op"):
        load_dataset("modular", op="div")
