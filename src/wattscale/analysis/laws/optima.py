"""Derived quantities of a fitted law, each with its bootstrap interval.

Every quantity is computed once from the fit on all data (the value) and once per converged bootstrap
replicate (the interval and SE, :func:`wattscale.analysis.laws.bootstrap.estimate`); without a bootstrap the
intervals are NaN. The closed forms are those of :mod:`wattscale.analysis.laws.forms` (C = 6 N D).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wattscale.analysis.laws.bootstrap import Estimate, LawBootstrap, estimate
from wattscale.analysis.laws.fit import LawFit
from wattscale.analysis.laws.forms import (
    batch_band,
    batch_law_coefficient,
    batch_law_exponent,
    compute_optimal,
    flops_for_loss,
    implied_chinchilla,
    optimal_batch_tokens,
)
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult

BAND_EPSILON = 0.01  # loss units (nats/token)


@dataclass(frozen=True)
class ComputeOptimum(JsonResult):
    """The compute-optimal allocation at one budget: N*(C), D*(C), L*(C) and D*/N*."""

    flops: float
    params: Estimate
    tokens: Estimate
    loss: Estimate
    tokens_per_param: Estimate


@dataclass(frozen=True)
class LossTarget(JsonResult):
    """C(L): the compute, and its optimal allocation, at which the compute-optimal loss equals a target."""

    loss: float
    flops: Estimate
    params: Estimate
    tokens: Estimate


@dataclass(frozen=True)
class BatchOptimum(JsonResult):
    """Three-term law at one token budget: M*(D) and the band of batch sizes within epsilon of it."""

    tokens: float
    batch_tokens: Estimate
    band_low: Estimate
    band_high: Estimate
    epsilon: float


@dataclass(frozen=True)
class BatchLaw(JsonResult):
    """Three-term law: M*(D) = coefficient * D^exponent, and the Chinchilla-form law at M*."""

    coefficient: Estimate
    exponent: Estimate
    implied_chinchilla: dict[str, Estimate]


def _reps(boot: LawBootstrap | None) -> dict[str, np.ndarray] | None:
    return None if boot is None or boot.replicates.shape[0] < 2 else boot.replicate_params()


def _est(value: np.ndarray, reps: np.ndarray | None, level: float) -> list[Estimate]:
    value = np.atleast_1d(value)
    if reps is None:
        nan = float("nan")
        return [Estimate(value=float(v), ci_low=nan, ci_high=nan, se=nan) for v in value]
    reps = np.broadcast_to(reps, (reps.shape[0], value.shape[0]))
    return [estimate(v, reps[:, j], level) for j, v in enumerate(value)]


def _level(boot: LawBootstrap | None) -> float:
    return 0.95 if boot is None else boot.level


def compute_optima(fit: LawFit, boot: LawBootstrap | None, flops: Sequence[float]) -> list[ComputeOptimum]:
    """N*(C), D*(C), L*(C) with intervals for each compute budget C (FLOPs)."""
    c = np.asarray(flops, dtype=np.float64)
    if not (c > 0).all():
        raise ConfigError("flops: every compute budget must be > 0")
    point = compute_optimal(fit.form, fit.params, c)
    reps = _reps(boot)
    rep = compute_optimal(fit.form, reps, c[None, :]) if reps is not None else None
    cols = {k: _est(point[k], None if rep is None else rep[k], _level(boot)) for k in ("params", "tokens", "loss")}
    ratio = _est(point["tokens"] / point["params"], None if rep is None else rep["tokens"] / rep["params"],
                 _level(boot))
    return [ComputeOptimum(flops=float(ci), params=cols["params"][i], tokens=cols["tokens"][i],
                           loss=cols["loss"][i], tokens_per_param=ratio[i]) for i, ci in enumerate(c)]


def loss_targets(fit: LawFit, boot: LawBootstrap | None, losses: Sequence[float]) -> list[LossTarget]:
    """C(L) and the allocation there, with intervals, for each target loss.

    The value is NaN where the target is at or below the fitted E (unreachable); replicates that cannot reach it
    count as infinite compute, so the upper interval end becomes infinite when more than the tail does.
    """
    target = np.asarray(losses, dtype=np.float64)
    c = flops_for_loss(fit.form, fit.params, target)
    at = compute_optimal(fit.form, fit.params, c)
    reps = _reps(boot)
    c_rep = flops_for_loss(fit.form, reps, target[None, :]) if reps is not None else None
    if c_rep is not None:
        c_rep = np.where(np.isnan(c_rep), np.inf, c_rep)  # a replicate whose E is above the target never gets there
    at_rep = compute_optimal(fit.form, reps, c_rep) if reps is not None else None
    level = _level(boot)
    fl = _est(c, c_rep, level)
    n = _est(at["params"], None if at_rep is None else at_rep["params"], level)
    d = _est(at["tokens"], None if at_rep is None else at_rep["tokens"], level)
    return [LossTarget(loss=float(t), flops=fl[i], params=n[i], tokens=d[i]) for i, t in enumerate(target)]


def _require_three_term(fit: LawFit) -> None:
    if fit.form != "three-term":
        raise ConfigError(f"form: batch-size optima need the three-term law, not {fit.form!r}; fit --form three-term")


def batch_law(fit: LawFit, boot: LawBootstrap | None) -> BatchLaw:
    """M*(D) = k D^s (k, s with intervals) and the implied Chinchilla-form law at M* (with intervals)."""
    _require_three_term(fit)
    reps = _reps(boot)
    level = _level(boot)
    implied = implied_chinchilla(fit.params)
    implied_rep = implied_chinchilla(reps) if reps is not None else None
    return BatchLaw(
        coefficient=_est(batch_law_coefficient(fit.params), None if reps is None else batch_law_coefficient(reps),
                         level)[0],
        exponent=_est(batch_law_exponent(fit.params), None if reps is None else batch_law_exponent(reps), level)[0],
        implied_chinchilla={k: _est(v, None if implied_rep is None else implied_rep[k], level)[0]
                            for k, v in implied.items()},
    )


def batch_optima(fit: LawFit, boot: LawBootstrap | None, tokens: Sequence[float],
                 epsilon: float = BAND_EPSILON) -> list[BatchOptimum]:
    """M*(D) and the epsilon band (tokens per batch) with intervals for each token budget D."""
    _require_three_term(fit)
    d = np.asarray(tokens, dtype=np.float64)
    if not (d > 0).all():
        raise ConfigError("tokens: every token budget must be > 0")
    reps = _reps(boot)
    level = _level(boot)
    m = _est(optimal_batch_tokens(fit.params, d), None if reps is None else optimal_batch_tokens(reps, d[None, :]),
             level)
    lo, hi = batch_band(fit.params, d, epsilon)
    lo_rep, hi_rep = batch_band(reps, d[None, :], epsilon) if reps is not None else (None, None)
    low, high = _est(lo, lo_rep, level), _est(hi, hi_rep, level)
    return [BatchOptimum(tokens=float(di), batch_tokens=m[i], band_low=low[i], band_high=high[i], epsilon=epsilon)
            for i, di in enumerate(d)]
