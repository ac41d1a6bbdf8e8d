"""Closed-form optima of the law forms against numerical optimisation of the laws written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize, minimize_scalar

from wattscale.analysis.laws.bootstrap import estimate
from wattscale.analysis.laws.forms import (
    batch_band,
    batch_law_exponent,
    compute_optimal,
    flops_for_loss,
    implied_chinchilla,
    optimal_batch_tokens,
    tokens_for_loss,
)

CHIN = {"E": 1.817, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3658}  # Besiroglu et al. 2024
KAP = {"Nc": 8.8e13, "Dc": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}  # Kaplan et al. 2020
THREE = {"E": 1.8, "A": 300.0, "B": 50.0, "C": 20.0, "alpha": 0.3, "beta": 0.3, "gamma": 0.4}


def chin_loss(p, n, d):
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def kaplan_loss(p, n, d):
    return ((p["Nc"] / n) ** (p["alpha_N"] / p["alpha_D"]) + p["Dc"] / d) ** p["alpha_D"]


def three_loss(p, n, m, k):
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / m ** p["beta"] + p["C"] / k ** p["gamma"]


def numeric_n_star(loss_nd, flops):
    """argmin over log N of L(N, C/(6N))."""
    res = minimize_scalar(lambda x: loss_nd(math.exp(x), flops / (6 * math.exp(x))), bounds=(5, 40),
                          method="bounded", options={"xatol": 1e-10})
    return math.exp(res.x), res.fun


@pytest.mark.parametrize("flops", [1e19, 1e21, 1e24])
def test_chinchilla_and_kaplan_compute_optimum(flops):
    for form, p, f in (("chinchilla", CHIN, chin_loss), ("kaplan", KAP, kaplan_loss)):
        n_num, l_num = numeric_n_star(lambda n, d, p=p, f=f: f(p, n, d), flops)
        got = compute_optimal(form, p, np.array([flops]))
        assert got["params"][0] == pytest.approx(n_num, rel=1e-5), form
        assert got["loss"][0] == pytest.approx(l_num, rel=1e-10), form
        assert 6 * got["params"][0] * got["tokens"][0] == pytest.approx(flops, rel=1e-12)


def test_chinchilla_compute_optimal_tokens_per_parameter_near_twenty():
    # Besiroglu et al. 2024: their fit implies about 20 tokens per parameter at Chinchilla's scale (5.76e23 FLOPs).
    got = compute_optimal("chinchilla", CHIN, np.array([5.76e23]))
    assert 15 < got["tokens"][0] / got["params"][0] < 30


@pytest.mark.parametrize("form", ["chinchilla", "kaplan", "three-term"])
def test_flops_for_loss_inverts_the_optimal_loss(form):
    p = {"chinchilla": CHIN, "kaplan": KAP, "three-term": THREE}[form]
    for target in (3.0, 2.5, 2.2):
        def excess(log_c, target=target):
            return compute_optimal(form, p, np.array([math.exp(log_c)]))["loss"][0] - target

        c_num = math.exp(brentq(excess, math.log(1e10), math.log(1e40), xtol=1e-12))
        assert flops_for_loss(form, p, np.array([target]))[0] == pytest.approx(c_num, rel=1e-8)
    if form != "kaplan":
        assert np.isnan(flops_for_loss(form, p, np.array([p["E"] - 0.1]))[0])  # below E: never reached


@pytest.mark.parametrize("tokens", [1e9, 3e10, 1e12])
def test_optimal_batch_and_band(tokens):
    n = 1e8
    res = minimize_scalar(lambda x: three_loss(THREE, n, math.exp(x), tokens / math.exp(x)), bounds=(0, 30),
                          method="bounded", options={"xatol": 1e-10})
    assert optimal_batch_tokens(THREE, np.array([tokens]))[0] == pytest.approx(math.exp(res.x), rel=1e-6)
    m = np.geomspace(1e2, 1e10, 400_001)
    inside = m[three_loss(THREE, n, m, tokens / m) <= res.fun + 0.01]
    lo, hi = batch_band(THREE, np.array([tokens]), 0.01)
    assert lo[0] == pytest.approx(inside.min(), rel=1e-4) and hi[0] == pytest.approx(inside.max(), rel=1e-4)
    assert batch_law_exponent(THREE) == pytest.approx(0.4 / 0.7)


def test_implied_chinchilla_equals_the_law_at_the_optimal_batch():
    implied = implied_chinchilla(THREE)
    rng = np.random.default_rng(0)
    for n, d in zip(10 ** rng.uniform(7, 11, 20), 10 ** rng.uniform(8, 13, 20), strict=True):
        m = optimal_batch_tokens(THREE, np.array([d]))[0]
        assert chin_loss(implied, n, d) == pytest.approx(three_loss(THREE, n, m, d / m), rel=1e-12)


def test_three_term_compute_optimum_over_size_and_batch():
    flops = 1e21

    def loss(x):
        n, m = math.exp(x[0]), math.exp(x[1])
        d = flops / (6 * n)
        return three_loss(THREE, n, m, d / m)

    res = minimize(loss, [math.log(1e9), math.log(1e6)], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20_000})
    got = compute_optimal("three-term", THREE, np.array([flops]))
    assert got["params"][0] == pytest.approx(math.exp(res.x[0]), rel=1e-4)
    assert optimal_batch_tokens(THREE, got["tokens"])[0] == pytest.approx(math.exp(res.x[1]), rel=1e-4)
    assert got["loss"][0] == pytest.approx(res.fun, rel=1e-10)


def test_tokens_for_loss_reaches_the_target():
    n, m = np.array([1e8, 1e9, 1e10]), np.array([1e5, 1e6, 1e7])
    d = tokens_for_loss("three-term", THREE, n, m, 5.0)
    assert three_loss(THREE, n, m, d / m) == pytest.approx(np.full(3, 5.0), rel=1e-12)
    assert np.isinf(tokens_for_loss("three-term", THREE, n, m, 3.0)[:2]).all()  # above E + A/N^a + B/M^b: never
    d = tokens_for_loss("chinchilla", CHIN, n, m, 2.7)  # reachable at every size (E + A/N^alpha < 2.7)
    assert chin_loss(CHIN, n, d) == pytest.approx(np.full(3, 2.7), rel=1e-12)
    d = tokens_for_loss("kaplan", KAP, n, m, 3.0)
    assert kaplan_loss(KAP, n, d) == pytest.approx(np.full(3, 3.0), rel=1e-12)
    assert np.isinf(tokens_for_loss("chinchilla", CHIN, n, m, 1.5)).all()  # below E


def test_estimate_percentiles_and_unreachable_replicates():
    reps = np.arange(1, 1001, dtype=float)
    est = estimate(5.0, reps, 0.95)
    assert est.ci_low == pytest.approx(np.percentile(reps, 2.5)) and est.ci_high == pytest.approx(np.percentile(reps,
                                                                                                                97.5))
    assert est.se == pytest.approx(np.std(reps, ddof=1))
    reps[-50:] = np.inf  # 5% of replicates never reach the target: the upper end is infinite
    assert estimate(5.0, reps, 0.95).ci_high == np.inf
    assert math.isnan(estimate(5.0, np.array([np.nan, 1.0]), 0.95).ci_low)
