"""Energy-optimal plans: which (N, D, M) gives the lowest predicted loss for an energy budget, and the least
energy that reaches a target loss, from a fitted law and the measured energy of stored runs.

**Energy model.** Each finished run with a measured ``energy_j`` gives joules per token
``j = energy_j / tokens``. Across runs, ``log j = c0 + c1 log N + c2 log M`` is fitted by least squares (N
parameters counted as in the law's data, M batch tokens): energy per token grows with model size (c1 about 1
when joules follow FLOPs) and usually falls with batch size (better hardware utilisation). With a single
measured batch size c2 is fixed at 0; with a single model size c1 is fixed at 1 (joules proportional to
6ND FLOPs); both are then stated in ``fixed``. The measured median J/token of each (N, M) is reported beside
the model. The energy figures carry the least direct source among the runs (counter / integrated /
estimated).

**Search.** N and M on log grids (``GRID_PARAMS`` x ``GRID_BATCH`` points) over the measured ranges, widened
by ``extrapolate`` (default 1: no extrapolation beyond the measured sizes and batches). For an energy budget
E: ``D = E / j(N, M)``, ``K = D / M``, loss from the law (a Chinchilla or Kaplan law has no batch term, so its
plan uses the batch size that makes tokens cheapest); the grid cell with the lowest loss wins. For a target
loss: the tokens that reach it at each (N, M) (closed form, :func:`wattscale.analysis.laws.forms.tokens_for_loss`),
times j, the cell with the least energy wins.

A best cell on the edge of the searched range is reported in ``at_edge``: the optimum may lie beyond the
measured sizes or batches (widen the runs, or allow ``extrapolate``).

**Intervals.** Each converged law replicate of the bootstrap is paired with an energy-model replicate fitted
on runs resampled with replacement (same count, seed + 1), and the plan is recomputed for every pair; the
percentile intervals therefore include both the law's and the energy measurements' uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wattscale.analysis.laws.bootstrap import Estimate, LawBootstrap, estimate
from wattscale.analysis.laws.data import LawData
from wattscale.analysis.laws.fit import LawFit
from wattscale.analysis.laws.forms import tokens_for_loss
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult
from wattscale.units import JOULES_PER_KWH

GRID_PARAMS = 121
GRID_BATCH = 61


@dataclass(frozen=True)
class EnergyModel(JsonResult):
    """log(J/token) = intercept + coef_log_params log N + coef_log_batch log M, fitted on measured runs."""

    intercept: float
    coef_log_params: float
    coef_log_batch: float
    fixed: tuple[str, ...]
    n_runs: int
    residual_sd_log: float
    params_range: tuple[float, float]
    batch_tokens_range: tuple[float, float]
    measured: tuple[dict, ...]  # median joules_per_token per (params, batch_tokens)
    energy_source: str

    def joules_per_token(self, params: np.ndarray, batch_tokens: np.ndarray) -> np.ndarray:
        """Predicted joules per training token at model size N and batch size M (tokens)."""
        return np.exp(self.intercept + self.coef_log_params * np.log(params)
                      + self.coef_log_batch * np.log(batch_tokens))


@dataclass(frozen=True)
class EnergyPlan(JsonResult):
    """The lowest-loss (N, D, M) for an energy budget, with intervals."""

    energy_kwh: float
    form: str
    params: Estimate
    tokens: Estimate
    batch_tokens: Estimate
    steps: Estimate
    loss: Estimate
    joules_per_token: Estimate
    energy_source: str
    at_edge: tuple[str, ...]  # "params"/"batch_tokens" when the best cell is on the edge of the searched range


@dataclass(frozen=True)
class EnergyTarget(JsonResult):
    """The least energy (and its N, D, M) that reaches a target loss, with intervals; inf when unreachable."""

    loss: float
    form: str
    energy_kwh: Estimate
    params: Estimate
    tokens: Estimate
    batch_tokens: Estimate
    energy_source: str
    at_edge: tuple[str, ...]


def _at_edge(n_best: float, m_best: float, n: np.ndarray, m: np.ndarray) -> tuple[str, ...]:
    """Which of N, M sits on the edge of its searched range (the optimum may lie beyond it)."""
    out = []
    if n.max() > n.min() and n_best in (n.min(), n.max()):
        out.append("params")
    if m.max() > m.min() and m_best in (m.min(), m.max()):
        out.append("batch_tokens")
    return tuple(out)


def _energy_points(data: LawData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if data.energy_j is None or data.batch_tokens is None:
        raise ConfigError("energy_j: no measured energy per run (or no batch size); plan-energy needs runs with "
                          "energy (the store records it) or CSV columns energy_j and batch_tokens")
    ok = np.isfinite(data.energy_j) & (data.energy_j > 0)
    if np.unique(data.run_id[ok]).size < 2:
        raise ConfigError(f"energy_j: {int(ok.sum())} point(s) with measured energy; at least 2 runs are needed")
    return data.params[ok], data.batch_tokens[ok], data.energy_j[ok] / data.tokens[ok], data.run_id[ok]


def _regress(log_n: np.ndarray, log_m: np.ndarray, log_j: np.ndarray) -> tuple[np.ndarray, tuple[str, ...], float]:
    """Least squares for (c0, c1, c2); fixes c2 = 0 / c1 = 1 when the data have one batch size / one size."""
    fixed = []
    vary_n, vary_m = np.ptp(log_n) > 0, np.ptp(log_m) > 0
    target = log_j - (0.0 if vary_n else log_n)  # c1 = 1 when N does not vary
    cols = [np.ones_like(log_j)] + ([log_n] if vary_n else []) + ([log_m] if vary_m else [])
    coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), target, rcond=None)
    c = [coef[0], coef[1] if vary_n else 1.0, coef[-1] if vary_m else 0.0]
    if not vary_n:
        fixed.append("coef_log_params = 1 (one model size measured: joules assumed proportional to FLOPs)")
    if not vary_m:
        fixed.append("coef_log_batch = 0 (one batch size measured: no batch-size effect can be estimated)")
    resid = log_j - (c[0] + c[1] * log_n + c[2] * log_m)
    return np.array(c), tuple(fixed), float(np.sqrt(np.mean(resid**2)))


def fit_energy_model(data: LawData) -> EnergyModel:
    """The joules-per-token model from the runs' measured energy (see the module docstring)."""
    n, m, j, _ = _energy_points(data)
    coef, fixed, sd = _regress(np.log(n), np.log(m), np.log(j))
    keys = sorted(set(zip(n.tolist(), m.tolist(), strict=True)))
    measured = tuple({"params": kn, "batch_tokens": km, "joules_per_token": float(np.median(j[(n == kn) & (m == km)])),
                      "n_runs": int(((n == kn) & (m == km)).sum())} for kn, km in keys)
    return EnergyModel(intercept=float(coef[0]), coef_log_params=float(coef[1]), coef_log_batch=float(coef[2]),
                       fixed=fixed, n_runs=int(n.size), residual_sd_log=sd,
                       params_range=(float(n.min()), float(n.max())),
                       batch_tokens_range=(float(m.min()), float(m.max())),
                       measured=measured, energy_source=data.energy_source or "unspecified")


def _energy_replicates(data: LawData, n_rep: int, seed: int) -> np.ndarray:
    """[n_rep, 3] energy-model coefficients refitted on runs resampled with replacement."""
    n, m, j, _ = _energy_points(data)
    rng = np.random.default_rng(seed)
    out = np.empty((n_rep, 3))
    for r in range(n_rep):
        pick = rng.integers(0, n.size, n.size)
        out[r], _, _ = _regress(np.log(n[pick]), np.log(m[pick]), np.log(j[pick]))
    return out


def _grid(model: EnergyModel, extrapolate: float) -> tuple[np.ndarray, np.ndarray]:
    if extrapolate < 1:
        raise ConfigError(f"extrapolate: must be >= 1 (a factor beyond the measured range), got {extrapolate}")
    (n_lo, n_hi), (m_lo, m_hi) = model.params_range, model.batch_tokens_range
    n = np.geomspace(n_lo / extrapolate, n_hi * extrapolate, GRID_PARAMS if n_hi > n_lo or extrapolate > 1 else 1)
    m = np.geomspace(m_lo / extrapolate, m_hi * extrapolate, GRID_BATCH if m_hi > m_lo or extrapolate > 1 else 1)
    big_n, big_m = np.meshgrid(n, m, indexing="ij")
    return big_n.ravel(), big_m.ravel()


def _law_loss(form: str, params: dict, n: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if form == "three-term":
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / m ** p["beta"] + p["C"] / (d / m) ** p["gamma"]
    if form == "chinchilla":
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]
    if form == "kaplan":
        return ((p["Nc"] / n) ** (p["alpha_N"] / p["alpha_D"]) + p["Dc"] / d) ** p["alpha_D"]
    raise ConfigError(f"form: energy plans support chinchilla, kaplan and three-term, not {form!r}")


def _coef_j(coef: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.exp(coef[..., 0:1] + coef[..., 1:2] * np.log(n) + coef[..., 2:3] * np.log(m))


def _pairs(fit: LawFit, boot: LawBootstrap | None, data: LawData, model: EnergyModel):
    """(law params [R, 1] arrays, energy coefficients [R, 3]) for the paired replicates, or None."""
    if boot is None or boot.replicates.shape[0] < 2:
        return None
    reps = boot.replicate_params()
    return reps, _energy_replicates(data, boot.replicates.shape[0], boot.seed + 1)


def _plan_inputs(fit: LawFit, boot: LawBootstrap | None, data: LawData, extrapolate: float):
    """What both planners search over: the energy model, the (N, M) grid, the point and replicate coefficients."""
    model = fit_energy_model(data)
    n, m = _grid(model, extrapolate)
    point_coef = np.array([[model.intercept, model.coef_log_params, model.coef_log_batch]])
    level = 0.95 if boot is None else boot.level
    return model, n, m, point_coef, _pairs(fit, boot, data, model), level


def plan_energy(fit: LawFit, boot: LawBootstrap | None, data: LawData, energy_kwh: Sequence[float],
                extrapolate: float = 1.0) -> list[EnergyPlan]:
    """The lowest-loss (N, D, M) for each energy budget (kWh), with intervals."""
    model, n, m, point_coef, pairs, level = _plan_inputs(fit, boot, data, extrapolate)
    out = []
    for kwh in energy_kwh:
        if not kwh > 0:
            raise ConfigError(f"--kwh: energy budgets must be > 0, got {kwh}")

        def best(params: dict, coef: np.ndarray, joules: float = kwh * JOULES_PER_KWH) -> dict[str, np.ndarray]:
            j = _coef_j(coef, n, m)  # [R, G]
            d = joules / j
            loss = _law_loss(fit.form, params, n, d, m)
            i = np.nanargmin(loss, axis=1)
            r = np.arange(loss.shape[0])
            return {"params": n[i], "tokens": d[r, i], "batch_tokens": m[i], "steps": d[r, i] / m[i],
                    "loss": loss[r, i], "joules_per_token": j[r, i]}

        value = best(fit.params, point_coef)
        reps = best(pairs[0], pairs[1]) if pairs else None
        est = {k: estimate(value[k][0], reps[k] if reps else np.array([]), level) for k in value}
        out.append(EnergyPlan(energy_kwh=float(kwh), form=fit.form, energy_source=model.energy_source,
                              at_edge=_at_edge(value["params"][0], value["batch_tokens"][0], n, m), **est))
    return out


def energy_for_losses(fit: LawFit, boot: LawBootstrap | None, data: LawData, losses: Sequence[float],
                      extrapolate: float = 1.0) -> list[EnergyTarget]:
    """The least energy (kWh) reaching each target loss, and the (N, D, M) that does it, with intervals."""
    model, n, m, point_coef, pairs, level = _plan_inputs(fit, boot, data, extrapolate)
    out = []
    for target in losses:
        def least(params: dict, coef: np.ndarray, target: float = target) -> dict[str, np.ndarray]:
            j = _coef_j(coef, n, m)  # [R, G]
            d = np.broadcast_to(tokens_for_loss(fit.form, params, n, m, target), j.shape)  # inf: unreachable
            energy = d * j / JOULES_PER_KWH
            i = np.argmin(energy, axis=1)
            r = np.arange(energy.shape[0])
            never = ~np.isfinite(energy[r, i])  # no (N, M) in range reaches the target: no plan
            return {"energy_kwh": energy[r, i], "params": np.where(never, np.nan, n[i]), "tokens": d[r, i],
                    "batch_tokens": np.where(never, np.nan, m[i])}

        value = least(fit.params, point_coef)
        reps = least(pairs[0], pairs[1]) if pairs else None
        est = {k: estimate(value[k][0], reps[k] if reps else np.array([]), level) for k in value}
        out.append(EnergyTarget(loss=float(target), form=fit.form, energy_source=model.energy_source,
                                at_edge=_at_edge(value["params"][0], value["batch_tokens"][0], n, m), **est))
    return out
