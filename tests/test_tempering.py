"""Tempering formulas (sgdbayes.stats.tempering): Lemma 3.2/3.3, Cor 3.1/3.2, Fig 3."""

import numpy as np
import pytest

from sgdbayes.stats.divergence import bootstrap_divergences
from sgdbayes.stats.tempering import (
    cluster_properties,
    diffusion_coefficient,
    free_energy_distribution,
    kl_sgd_theory,
    log_diffusion,
    make_tempered_fn,
    sweep_xi,
    tempered_distribution,
    theoretical_distribution,
)


def test_diffusion_coefficient_hand():
    # alpha = 1/4 -> d_walk = 4 -> D = xi^(2-4) = 0.5^-2 = 4
    assert diffusion_coefficient(0.5, 0.25) == pytest.approx(4.0)
    # alpha = 1/2 (Brownian) -> D = 1 for any xi
    assert diffusion_coefficient(7.3, 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        log_diffusion(0.5, [0.3, -0.1])


def test_p_theory_hand_three_clusters():
    L = np.array([0.1, 0.4, 0.2])
    alpha = np.array([0.5, 0.25, 1 / 3])  # d_walk 2, 4, 3
    xi, gamma = 0.5, 2.0
    D = np.array([1.0, 4.0, 2.0])  # 0.5^0, 0.5^-2, 0.5^-1
    w = np.exp(-gamma * L / D)  # exp(-0.2), exp(-0.2), exp(-0.2)
    p = theoretical_distribution(L, log_diffusion(xi, alpha), gamma)
    assert np.allclose(p, w / w.sum()) and np.allclose(p, 1 / 3)
    L2 = np.array([0.1, 0.8, 1.0])
    w2 = np.exp(-gamma * L2 / D)
    assert np.allclose(theoretical_distribution(L2, np.log(D), gamma), w2 / w2.sum())


def test_p_theory_overflow_is_zero_not_nan():
    # D -> 1e-300 for cluster 1: gamma L / D overflows; it must get probability 0
    p = theoretical_distribution([0.3, 0.3, 0.5], [0.0, -800.0, 0.0], 1.0)
    assert np.all(np.isfinite(p)) and p[1] == 0.0
    assert p[0] / p[2] == pytest.approx(np.exp(0.2))
    # all clusters overflow: the smallest gamma L / D wins, no NaN
    p = theoretical_distribution([0.3, 0.5], [-900.0, -900.0], 1.0)
    assert np.allclose(p, [1.0, 0.0])


def test_tempered_hand_and_zero_mass():
    P = np.array([0.5, 0.3, 0.2])
    D = np.array([0.1, 0.2, 0.05])
    m = 10  # exponents m D = 1, 2, 0.5
    r = tempered_distribution(P, np.log(D), m)
    w = np.array([0.5 ** 1, 0.3 ** 2, 0.2 ** 0.5])
    assert np.allclose(r.p_temp, w / w.sum())
    assert np.allclose(r.exponent, [1, 2, 0.5])
    assert not r.collapsed
    # counts give the same result as probabilities
    assert np.allclose(tempered_distribution([50, 30, 20], np.log(D), m).p_temp, r.p_temp)
    # zero-mass cluster: 0^x = 0 for x > 0, the others renormalise among themselves
    z = tempered_distribution([0.5, 0.0, 0.5], np.log(D), m)
    assert z.p_temp[1] == 0.0
    w = np.array([0.5 ** 1, 0.5 ** 0.5])
    assert np.allclose(z.p_temp[[0, 2]], w / w.sum())
    # smoothed version tempers (n + 0.5)/(N + 1.5)
    s = tempered_distribution([1, 0, 1], np.log(D), m, pseudocount=0.5)
    Ps = np.array([1.5, 0.5, 1.5]) / 3.5
    w = Ps ** np.array([1, 2, 0.5])
    assert np.allclose(s.p_temp, w / w.sum()) and s.p_temp[1] > 0


def test_tempered_collapse_flag():
    # m = 512 (moons), D ~ 1: P^(512 D) -> all mass on the largest cluster
    r = tempered_distribution([0.4, 0.35, 0.25], np.log([1.0, 1.2, 0.9]), 512)
    assert r.collapsed and r.p_temp[0] > 0.999 and r.n_effective < 1.01
    assert "collapsed" in r.summary().lower()
    w = np.array([0.4 ** 512, 0.35 ** (512 * 1.2), 0.25 ** (512 * 0.9)])
    assert np.allclose(r.p_temp, w / w.sum())  # formula unchanged, just flagged
    assert not np.isnan(r.log_p_temp).any()


def test_tempered_extreme_exponents_no_nan():
    r = tempered_distribution([0.999, 0.001, 0.0], [700.0, 700.0, 0.0], 512)
    assert np.all(np.isfinite(r.p_temp)) and r.p_temp.sum() == pytest.approx(1.0)
    assert r.collapsed


def test_cluster_properties_noise_and_mean_log_D():
    labels = np.array([0, 0, 1, -1, -1, 1])
    loss = np.array([0.1, 0.3, 0.5, 0.9, 0.7, 0.4])
    alpha = np.array([0.25, 0.5, 0.4, 0.3, -0.1, np.nan])
    llc = np.array([1.0, 3.0, 5.0, 7.0, 9.0, 6.0])
    pr = cluster_properties(labels, [0, 1, -1], loss, alpha, llc)
    assert list(pr.n) == [2, 2, 2]
    assert np.allclose(pr.loss, [0.2, 0.45, 0.8]) and np.allclose(pr.llc, [2.0, 5.5, 8.0])
    # mean d_walk over valid alphas; invalid (<=0, NaN) excluded and counted
    assert np.allclose(pr.d_walk, [(4 + 2) / 2, 2.5, 1 / 0.3])
    assert list(pr.n_alpha_invalid) == [0, 1, 1]
    # per-cluster log D = average of per-run log D
    xi = 0.3
    assert pr.log_D(xi)[0] == pytest.approx(np.mean(log_diffusion(xi, [0.25, 0.5])))
    df = pr.to_frame(xi=xi)
    assert list(df["name"]) == ["C0", "C1", "noise"] and df["defined"].all()


def test_xi_sweep_recovers_known_xi():
    rng = np.random.default_rng(0)
    xi0, gamma = 0.5, 1.0
    L = np.array([0.5, 1.0, 1.5, 0.8])
    dw = np.array([2.2, 3.0, 4.0, 2.6])
    p0 = theoretical_distribution(L, (2 - dw) * np.log(xi0), gamma)
    N = 20000
    lab = rng.choice(4, size=N, p=p0)
    loss = L[lab] + rng.normal(0, 0.01, N)
    alpha = 1 / (dw[lab] + rng.normal(0, 0.01, N))
    grid = np.logspace(-2, 2, 81)
    sw = sweep_xi(lab, [0, 1, 2, 3], loss, alpha, gamma, grid=grid, n_boot=60, seed=1, split_seed=3)
    step = np.log(grid[1] / grid[0])
    assert abs(np.log(sw.xi_star / xi0)) <= 1.01 * step
    lo, hi = sw.conf_int().loc["xi_star"]
    assert lo * np.exp(-1.01 * step) <= xi0 <= hi * np.exp(1.01 * step)
    assert hi / lo < 2.0  # informative with N = 20000
    assert abs(np.log(sw.xi_A / xi0)) <= 3 * step and abs(np.log(sw.xi_B / xi0)) <= 3 * step
    assert sw.kl_split >= sw.kl_min  # out-of-sample KL not below the in-sample minimum here
    assert not sw.at_boundary
    df = sw.to_frame()
    assert len(df) == 81 and df["is_xi_star"].sum() == 1
    # the KL curve equals the direct formula at xi*
    P = np.bincount(lab, minlength=4) / N
    pr = sw.properties
    assert sw.kl_min == pytest.approx(kl_sgd_theory(P, pr.loss, pr.d_walk, gamma, [sw.xi_star])[0])
    # the split is reproducible from its seed
    sw2 = sweep_xi(lab, [0, 1, 2, 3], loss, alpha, gamma, grid=grid, n_boot=5, seed=9, split_seed=3)
    assert (sw2.xi_A, sw2.xi_B) == (sw.xi_A, sw.xi_B)
    assert "split seed" in sw.summary()


def test_free_energy_hand():
    L = np.array([0.10, 0.11, 0.2])
    lam = np.array([5.0, 2.0, 1.0])
    m = 512
    F = m * L + lam * np.log(m)
    r = free_energy_distribution(L, lam, m, categories=[0, 1, -1])
    w = np.exp(-(F - F.min()))
    assert np.allclose(r.p_f, w / w.sum()) and np.allclose(r.free_energy, F)
    assert list(r.to_frame()["name"]) == ["C0", "C1", "noise"]
    # undefined cluster gets 0 and a note
    r2 = free_energy_distribution([0.1, np.nan], [1.0, 1.0], m)
    assert r2.p_f[1] == 0.0 and r2.notes


def test_tempered_bootstrap_against_reference_runs():
    rng = np.random.default_rng(11)
    lab = rng.choice(3, size=300, p=[0.5, 0.3, 0.2])
    alpha = np.array([0.3, 0.4, 0.45])[lab]
    xi, m = 0.05, 5
    fn = make_tempered_fn(lab, [0, 1, 2], alpha, xi, m)
    pr = cluster_properties(lab, [0, 1, 2], np.ones(300), alpha)
    direct = tempered_distribution(pr.n, pr.log_D(xi), m).p_temp
    assert np.allclose(fn(np.arange(300)), direct)
    sgld = rng.choice(3, size=800, p=direct)
    chains = np.repeat(np.arange(8), 100)
    b = bootstrap_divergences(lab, sgld, [0, 1, 2], groups_q=chains, dist_p=fn,
                              smoothed_p=make_tempered_fn(lab, [0, 1, 2], alpha, xi, m, pseudocount=0.5),
                              metrics=("kl", "kl_smoothed", "js"), n_boot=100, seed=1,
                              names=("tempered SGD", "SGLD"))
    assert np.allclose(b.point.prob_p, direct)
    assert all(np.isfinite(b.conf_int().loc[k]).all() for k in ("js", "kl_smoothed"))
    assert b.point.js < 0.02
