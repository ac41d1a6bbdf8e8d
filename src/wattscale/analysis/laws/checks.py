"""Model checking for a fitted law: leave-the-largest-scale-out validation and identifiability warnings.

- :func:`leave_largest_out`: refit without the largest model sizes and predict them. Held out are the points
  whose ``params`` is at least the smallest of the largest distinct sizes that together hold
  ``holdout_fraction`` (default 10%) of the points, so at least the single largest size; at least 3 distinct
  sizes must remain to fit. Reported on the held-out points: RMSE of log-loss, mean and max absolute relative
  error of the loss, and the mean signed log error (> 0: the law predicts too high a loss at scale).
- :func:`identifiability_warnings`: plain sentences for what makes a fit untrustworthy: a variable spanning
  under a decade (``SPAN_WARNING`` = 10x), fewer than 3 distinct values of a variable, nearly collinear log
  variables (|r| > 0.95), fewer than 3 points per parameter, parameters on a bound, a best start that did not
  converge or that no other start reached (within 1e-5 relative), fewer than 10 runs to bootstrap, bootstrap
  replicates that did not converge (> 10%), and parameters whose bootstrap interval spans more than a factor of
  10 (or whose exponent interval reaches 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wattscale.analysis.laws.bootstrap import LawBootstrap
from wattscale.analysis.laws.data import LawData
from wattscale.analysis.laws.fit import FitOptions, LawFit, fit_law, points_needed
from wattscale.analysis.laws.forms import get_form
from wattscale.jsonout import JsonResult

SPAN_WARNING = 10.0
HOLDOUT_FRACTION = 0.1
CI_RATIO_WARNING = 10.0


@dataclass(frozen=True)
class Validation(JsonResult):
    """Leave-the-largest-scale-out validation: a fit without the largest sizes, scored on them."""

    holdout_rule: str
    params_threshold: float
    n_train: int
    n_test: int
    rmse_log_loss: float
    mean_abs_rel_error: float
    max_abs_rel_error: float
    mean_log_error: float  # mean of log(L_pred / L): > 0 means the law over-predicts loss at scale
    train_params: dict[str, float]


def leave_largest_out(data: LawData, form: str, options: FitOptions | None = None,
                      holdout_fraction: float = HOLDOUT_FRACTION) -> Validation | None:
    """Fit without the largest model sizes and score the prediction on them (None if too few sizes)."""
    sizes = np.unique(data.params)[::-1]  # largest first
    if sizes.size < 4:
        return None
    threshold = sizes[0]
    for size in sizes:
        threshold = size
        if (data.params >= threshold).sum() >= holdout_fraction * len(data):
            break
    test = data.params >= threshold
    if np.unique(data.params[~test]).size < 3 or (~test).sum() < points_needed(form):
        return None
    fit = fit_law(data.subset(~test), form, options)
    held = data.subset(test)
    pred = fit.predict(**{v: held.variable(v) for v in get_form(form).variables})
    log_err = np.log(pred) - np.log(held.loss)
    rel = np.abs(pred / held.loss - 1.0)
    return Validation(
        holdout_rule=f"params >= {threshold:.4g} (the largest sizes holding >= {holdout_fraction:.0%} of points)",
        params_threshold=float(threshold), n_train=int((~test).sum()), n_test=int(test.sum()),
        rmse_log_loss=float(np.sqrt(np.mean(log_err**2))), mean_abs_rel_error=float(rel.mean()),
        max_abs_rel_error=float(rel.max()), mean_log_error=float(log_err.mean()), train_params=fit.params)


def _data_warnings(data: LawData, variables: tuple[str, ...], n_params: int) -> list[str]:
    out = []
    for v in variables:
        values = data.variable(v)
        span = float(values.max() / values.min())
        if np.unique(values).size < 3:
            out.append(f"{v}: only {np.unique(values).size} distinct value(s); the {v} term cannot be identified")
        elif span < SPAN_WARNING:
            out.append(f"{v} spans {span:.3g}x (under a decade): the coefficient and exponent of its term are "
                       "weakly identified; widen the range")
    logs = np.log(np.stack([data.variable(v) for v in variables]))
    for i in range(len(variables)):
        for j in range(i + 1, len(variables)):
            if logs[i].std() > 0 and logs[j].std() > 0:
                r = float(np.corrcoef(logs[i], logs[j])[0, 1])
                if abs(r) > 0.95:
                    out.append(f"log {variables[i]} and log {variables[j]} are nearly collinear (r = {r:.3f}): "
                               "their exponents trade off; vary them independently")
    if len(data) < 3 * n_params:
        out.append(f"{len(data)} points for {n_params} parameters (fewer than 3 per parameter)")
    return out


def _fit_warnings(fit: LawFit) -> list[str]:
    out = []
    if fit.at_bound:
        out.append(f"parameter(s) {', '.join(fit.at_bound)} ended on a bound of the search box; the optimum is "
                   "outside it or the data do not constrain them")
    if not fit.converged:
        out.append(f"the best start did not converge ({fit.stop_reason}); raise max_iter")
    if fit.n_starts_at_best < 2 and fit.n_starts > 1:
        out.append(f"only {fit.n_starts_at_best} of {fit.n_starts} starts reached the best objective (within "
                   f"1e-5) and {fit.n_starts_near_best} came within 0.1%: the objective is flat or rugged around "
                   "the optimum; judge the parameters by their bootstrap intervals")
    return out


def _bootstrap_warnings(boot: LawBootstrap) -> list[str]:
    out = []
    if boot.n_clusters < 10:
        out.append(f"only {boot.n_clusters} runs to resample: bootstrap intervals are unreliable")
    if boot.n_converged < 0.9 * boot.n_boot:
        out.append(f"{boot.n_boot - boot.n_converged} of {boot.n_boot} bootstrap replicates did not converge")
    for name, est in boot.params.items():
        lo, hi = est.ci_low, est.ci_high
        if not (np.isfinite(lo) and np.isfinite(hi)):
            continue
        if lo <= 0 < hi or (lo > 0 and hi / lo > CI_RATIO_WARNING):
            out.append(f"{name} is poorly identified: {boot.level:.0%} interval [{lo:.4g}, {hi:.4g}]")
    return out


def identifiability_warnings(data: LawData, fit: LawFit, boot: LawBootstrap | None = None) -> tuple[str, ...]:
    """Sentences naming what the data or the fit cannot support (empty when nothing is wrong)."""
    form = get_form(fit.form)
    out = _data_warnings(data, form.variables, len(form.names)) + _fit_warnings(fit)
    if boot is not None:
        out += _bootstrap_warnings(boot)
    return tuple(out)
