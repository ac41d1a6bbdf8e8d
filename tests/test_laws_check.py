"""Model checking: clustered bootstrap, leave-largest-out validation, identifiability warnings, AIC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wattscale.analysis.laws.bootstrap import bootstrap_law, cluster_weights
from wattscale.analysis.laws.checks import identifiability_warnings, leave_largest_out
from wattscale.analysis.laws.data import make_law_data
from wattscale.analysis.laws.fit import FitOptions, compare_forms, fit_law, log_likelihood

COARSE = FitOptions(grid="coarse")


def chinchilla_points(n_values, d_values, noise=0.003, seed=0, repeat=1):
    rng = np.random.default_rng(seed)
    n, d = (a.ravel() for a in np.meshgrid(n_values, d_values))
    loss = (1.7 + 400.0 / n**0.34 + 1500.0 / d**0.30) * np.exp(rng.normal(0, noise, n.shape))
    runs = np.arange(n.size).astype(str)
    return make_law_data(params=np.tile(n, repeat), tokens=np.tile(d, repeat), loss=np.tile(loss, repeat),
                         run_id=np.tile(runs, repeat))


def test_cluster_weights_move_checkpoints_of_a_run_together():
    data = make_law_data(params=[1e7] * 6, tokens=[1e9, 2e9, 3e9, 1e9, 2e9, 3e9], loss=[3, 2.9, 2.8, 3.1, 3, 2.9],
                         run_id=["a", "a", "a", "b", "b", "b"])
    w = cluster_weights(data, 200, seed=0)
    assert (w[:, :3] == w[:, :1]).all() and (w[:, 3:] == w[:, 3:4]).all()
    assert (w[:, 0] + w[:, 3] == 2).all()  # two runs drawn per replicate


def test_clustered_bootstrap_is_not_fooled_by_repeated_checkpoints():
    # Each run appears three times (as if three identical checkpoints). Resampling runs must give the same
    # uncertainty as the data without the copies; resampling points would shrink it by about sqrt(3).
    single = chinchilla_points(np.geomspace(1e7, 1e10, 6), np.geomspace(1e8, 1e11, 6))
    triple = chinchilla_points(np.geomspace(1e7, 1e10, 6), np.geomspace(1e8, 1e11, 6), repeat=3)
    fit1, fit3 = fit_law(single, "chinchilla", COARSE), fit_law(triple, "chinchilla", COARSE)
    b1, b3 = bootstrap_law(single, fit1, n_boot=40, seed=3), bootstrap_law(triple, fit3, n_boot=40, seed=3)
    for name in ("alpha", "beta", "E"):
        assert b3.params[name].se == pytest.approx(b1.params[name].se, rel=0.02), name


def test_leave_largest_out_on_a_true_law_predicts_the_held_out_sizes():
    data = chinchilla_points(np.geomspace(1e7, 1e10, 7), np.geomspace(1e8, 1e11, 6), noise=0.0)
    v = leave_largest_out(data, "chinchilla", COARSE)
    assert v.params_threshold == pytest.approx(1e10) and v.n_test == 6 and v.n_train == 36
    assert v.max_abs_rel_error < 1e-4 and v.rmse_log_loss < 1e-4
    assert leave_largest_out(chinchilla_points([1e7, 1e8, 1e9], [1e9, 1e10]), "chinchilla", COARSE) is None


def test_warnings_for_a_narrow_collinear_design():
    n = np.geomspace(1e8, 5e8, 8)
    data = make_law_data(params=n, tokens=20 * n, loss=1.7 + 400.0 / n**0.34 + 1500.0 / (20 * n) ** 0.30)
    fit = fit_law(data, "chinchilla", COARSE)
    text = " | ".join(identifiability_warnings(data, fit, bootstrap_law(data, fit, n_boot=30)))
    assert "params spans 5x (under a decade)" in text
    assert "nearly collinear" in text
    assert "only 8 runs to resample" in text


def test_no_warnings_for_a_good_design():
    data = chinchilla_points(np.geomspace(1e7, 1e10, 6), np.geomspace(1e8, 1e11, 6))
    # A tight grid-stage ftol: at the default (2.2e-9, absolute for an objective of ~4e-5) how many starts stop
    # within 1e-5 of the best turns on last-bit differences in the data (NumPy 1.26 and 2.x round geomspace
    # differently): 1 start with one, 3 with the other. With 1e-12, 40 of 243 agree on both.
    fit = fit_law(data, "chinchilla", FitOptions(grid="coarse", ftol=1e-12))
    assert identifiability_warnings(data, fit, bootstrap_law(data, fit, n_boot=100)) == ()


def test_log_likelihood_is_laplace_for_small_delta_and_aic_prefers_the_true_form():
    r = np.random.default_rng(0).laplace(0, 0.01, 300)
    b = np.mean(np.abs(r))  # Laplace MLE of the scale; the Huber likelihood tends to it as delta -> 0
    assert log_likelihood(r, np.ones_like(r))[0] == pytest.approx(-r.size * (1 + math.log(2 * b)), rel=1e-6)
    data = chinchilla_points(np.geomspace(1e7, 1e10, 6), np.geomspace(1e8, 1e11, 6))
    rows = compare_forms(data, [fit_law(data, "kaplan", COARSE), fit_law(data, "chinchilla", COARSE)])
    assert [r.form for r in rows] == ["chinchilla", "kaplan"] and rows[0].delta_aic == 0
    assert rows[1].delta_aic > 10 and sum(r.akaike_weight for r in rows) == pytest.approx(1.0)
