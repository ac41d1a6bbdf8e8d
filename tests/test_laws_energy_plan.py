"""Energy-optimal plans against independent references: the compute-optimal closed form and scipy searches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from wattscale.analysis.laws.bootstrap import bootstrap_law
from wattscale.analysis.laws.data import make_law_data
from wattscale.analysis.laws.fit import FitOptions, fit_law
from wattscale.analysis.laws.plans import GRID_PARAMS, energy_for_losses, fit_energy_model, plan_energy

KAPPA = 2e-11  # joules per FLOP in the synthetic measurements
CHIN = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}
THREE = {"E": 1.8, "A": 300.0, "B": 50.0, "C": 20.0, "alpha": 0.3, "beta": 0.3, "gamma": 0.4}


def runs(form: str, batch_exponent: float = 0.0, noise: float = 0.002, seed: int = 0):
    """Runs over N, batch M and tokens D with losses from known laws and joules = KAPPA * 6ND * (M/1e5)^b."""
    rng = np.random.default_rng(seed)
    n, m, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(3e4, 3e6, 5),
                                              np.geomspace(1e9, 1e11, 4)))
    if form == "chinchilla":
        loss = CHIN["E"] + CHIN["A"] / n ** CHIN["alpha"] + CHIN["B"] / d ** CHIN["beta"]
    else:
        p = THREE
        loss = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / m ** p["beta"] + p["C"] / (d / m) ** p["gamma"]
    joules = KAPPA * 6 * n * d * (m / 1e5) ** batch_exponent
    return make_law_data(params=n, tokens=d, batch_tokens=m, loss=loss * np.exp(rng.normal(0, noise, n.shape)),
                         energy_j=joules)


def test_energy_model_recovers_joules_per_token():
    model = fit_energy_model(runs("chinchilla", batch_exponent=-0.12))
    assert model.coef_log_params == pytest.approx(1.0, abs=1e-9)
    assert model.coef_log_batch == pytest.approx(-0.12, abs=1e-9)
    assert model.intercept == pytest.approx(math.log(6 * KAPPA * 1e5**0.12), rel=1e-9)
    assert model.fixed == () and len(model.measured) == 35


def test_energy_plan_is_the_compute_optimum_when_joules_follow_flops():
    # With joules = KAPPA * 6ND an energy budget is a compute budget C = E / KAPPA, so the plan must be
    # Hoffmann's compute-optimal allocation, written out here from the fitted parameters.
    data = runs("chinchilla")
    fit = fit_law(data, "chinchilla", FitOptions(grid="coarse"))
    kwh = 300.0
    plan = plan_energy(fit, None, data, [kwh], extrapolate=10)[0]
    p = fit.params
    flops = kwh * 3.6e6 / KAPPA
    s = p["alpha"] + p["beta"]
    n_star = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s) * (flops / 6) ** (p["beta"] / s)
    step = (1e11 / 1e6) ** (1 / (GRID_PARAMS - 1))  # grid ratio between neighbouring sizes
    assert abs(math.log(plan.params.value / n_star)) <= math.log(step) / 2 + 1e-9
    assert plan.tokens.value * plan.joules_per_token.value == pytest.approx(kwh * 3.6e6, rel=1e-12)
    assert plan.at_edge == ()


def test_three_term_energy_plan_and_target_match_a_continuous_search():
    data = runs("three-term", batch_exponent=-0.2)
    fit = fit_law(data, "three-term", FitOptions(grid="coarse"))
    model = fit_energy_model(data)
    p, joules = fit.params, 2.0 * 3.6e6

    def loss(x):  # independent: continuous minimisation over log N, log M of the law at D = E / j(N, M)
        n, m = math.exp(x[0]), math.exp(x[1])
        d = joules / model.joules_per_token(n, m)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / m ** p["beta"] + p["C"] / (d / m) ** p["gamma"]

    best = minimize(loss, [math.log(1e8), math.log(3e5)], method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-13, "maxiter": 10_000})
    plan = plan_energy(fit, None, data, [2.0])[0]
    assert plan.at_edge == ()
    assert plan.loss.value == pytest.approx(best.fun, rel=2e-4)  # grid cell vs continuous optimum
    assert abs(math.log(plan.params.value) - best.x[0]) < 0.1
    assert abs(math.log(plan.batch_tokens.value) - best.x[1]) < 0.1
    target = energy_for_losses(fit, None, data, [best.fun])[0]  # the least energy for that loss is about 2 kWh
    assert target.energy_kwh.value == pytest.approx(2.0, rel=0.01)


def test_intervals_edges_and_single_batch_size():
    data = runs("three-term")
    fit = fit_law(data, "three-term", FitOptions(grid="coarse"))
    boot = bootstrap_law(data, fit, n_boot=60)
    plan = plan_energy(fit, boot, data, [2.0])[0]
    for est in (plan.params, plan.tokens, plan.batch_tokens, plan.loss):
        assert est.ci_low <= est.value <= est.ci_high
    huge = plan_energy(fit, None, data, [1e9])[0]
    assert "params" in huge.at_edge  # a gigawatt-hour wants models beyond the measured 1e10
    never = energy_for_losses(fit, boot, data, [1.0])[0]  # below E: no plan at any energy
    assert never.energy_kwh.value == math.inf and math.isnan(never.params.value)
    one_batch = data.subset(data.batch_tokens == data.batch_tokens[0])
    assert fit_energy_model(one_batch).fixed[0].startswith("coef_log_batch = 0")
