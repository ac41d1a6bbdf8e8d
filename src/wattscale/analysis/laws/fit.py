"""Fit a scaling-law form: summed Huber loss of log-loss residuals, batched L-BFGS from a grid of starts.

The method is Hoffmann et al. (2022) approach 3 with the corrections of Besiroglu et al. (2024):

- objective: ``sum_i w_i * Huber_delta(log L_pred(x_i) - log L_i)``, the SUM (not the mean, whose tiny
  values stopped L-BFGS early in the original), ``delta = 1e-3`` by default (``FitOptions.huber_delta``);
- parameters in log-sum-exp form (``log L = LSE(e, a - alpha log N, ...)``), see :mod:`.forms`;
- L-BFGS (box-bounded, :mod:`.optimiser`) from every start of the form's grid (the full Hoffmann grid of
  4,500 starts for ``chinchilla``), the lowest objective kept;
- the distinct local optima found (up to 8, best first: ``LawFit.candidates``) are then polished with tight
  tolerances (``POLISH``: ftol 1e-13, gtol 1e-10, 1,000 iterations) and the best polished one is the fit. The
  grid stage uses scipy's default tolerances, which stop early on this flat, nearly-L1 objective: the best
  start is still the right basin, but the stopping point depends on where a start came from. Polishing makes
  the optimum independent of that (it moves the Epoch fit by < 1e-5 relative) and the bootstrap, which starts
  every replicate from the candidates, uses the same tight tolerances so that replicates are not anchored at
  the full-data optimum (with scipy's tolerances the bootstrap SEs came out ~40% too small, with ftol 1e-11
  ~15% too small, with 1e-12 to 1e-15 the same to 1%);
- reported with it: how many starts reached it (objective within ``agree_rtol`` = 1e-5 relative of the best),
  how many met a stopping test, whether the best one did, and which parameters ended on a bound.

:func:`log_likelihood` turns residuals into the Huber-likelihood of Besiroglu et al. with a fitted scale
(with delta = 1e-3 on standardised residuals this is, to 1e-6, a Laplace likelihood); :func:`compare_forms`
ranks forms fitted on the same points by AIC = 2k - 2 log-likelihood, k = parameters + 1 (the scale).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from wattscale.analysis.laws.data import LawData
from wattscale.analysis.laws.forms import LawForm, get_form
from wattscale.analysis.laws.optimiser import BatchResult, ValueGrad, autograd_value_grad, batched_lbfgs
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult
from wattscale.limits import MAX_THREADS
from wattscale.threads import torch_threads

HUBER_DELTA = 1e-3
AGREE_RTOL = 1e-5
NEAR_RTOL = 1e-3
N_CANDIDATES = 8  # distinct local optima kept from the grid (bootstrap starts)
POLISH = {"ftol": 1e-13, "gtol": 1e-10, "max_iter": 1000}
CHUNK_ROWS = 256  # starts per tensor block: keeps each [rows, points] block near the cache


@dataclass(frozen=True)
class FitOptions:
    """Fitter settings; every default is the documented one."""

    huber_delta: float = HUBER_DELTA
    grid: str = "full"  # "full": the form's grid; "coarse": every other value of each grid axis
    max_iter: int = 1000
    ftol: float = 2.220446049250313e-09  # scipy L-BFGS-B's default (factr 1e7 * machine eps)
    gtol: float = 1e-5
    agree_rtol: float = AGREE_RTOL
    threads: int | None = 1  # torch threads during the fit (None: leave torch's setting); docs: Methods

    def __post_init__(self) -> None:
        if not self.huber_delta > 0:
            raise ConfigError(f"huber_delta: must be > 0, got {self.huber_delta}")
        if self.grid not in ("full", "coarse"):
            raise ConfigError(f"grid: {self.grid!r} is not one of full, coarse")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter: must be >= 1, got {self.max_iter}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"--threads: {self.threads} must lie in [1, {MAX_THREADS}] torch threads")


@dataclass(frozen=True)
class LawFit(JsonResult):
    """The best fit of one form, with the diagnostics of the multi-start search."""

    form: str
    formula: str
    params: dict[str, float]  # reported (natural) parameters, e.g. A, B, E, alpha, beta
    fit_params: dict[str, float]  # log-sum-exp space, e.g. a, b, e, alpha, beta
    objective: float  # sum of weighted Huber losses at the best start
    huber_delta: float
    n_points: int
    n_runs: int
    n_starts: int
    n_starts_at_best: int  # grid starts whose objective is within agree_rtol (1e-5) of the best
    n_starts_near_best: int  # ... within 0.1%
    n_starts_converged: int
    converged: bool  # the polished best ended by a stopping test (not the iteration cap or a failure)
    stop_reason: str
    iterations: int  # of the polish
    at_bound: tuple[str, ...]  # fit parameters that ended on a box bound
    rmse_log_loss: float  # weighted root-mean-square residual of log-loss
    param_counting: str
    seconds: float
    candidates: tuple[tuple[float, ...], ...] = field(default=())  # distinct local optima (fit space), best first
    candidate_objectives: tuple[float, ...] = field(default=())

    def predict(self, **variables: np.ndarray) -> np.ndarray:
        """Predicted loss at the given variables (params=..., tokens=..., ...)."""
        return get_form(self.form).predict(self.params, **variables)


def log_variables(form: LawForm, data: LawData) -> torch.Tensor:
    """[n, V] logs of the form's variables from the data."""
    return torch.from_numpy(np.log(np.stack([data.variable(v) for v in form.variables], axis=1)))


def huber_value_grad(form: LawForm, log_x: torch.Tensor, log_y: torch.Tensor, weights: torch.Tensor,
                     delta: float) -> ValueGrad:
    """Summed weighted Huber loss of log residuals and its gradient; weights [R, n], one row per problem."""

    def block(theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = weights[rows] if weights.shape[0] > 1 else weights
        if form.log_loss_vjp is None:
            def obj(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                res = form.log_loss(t, log_x) - log_y
                a = res.abs()
                return (w * torch.where(a <= delta, 0.5 * res * res, delta * (a - 0.5 * delta))).sum(1)
            return autograd_value_grad(obj)(theta, rows)
        log_pred, vjp = form.log_loss_vjp(theta, log_x)
        res = log_pred - log_y
        psi = res.clamp(-delta, delta)  # Huber'(r)
        huber = psi * (res - 0.5 * psi)  # = r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond
        f = (huber @ w[0]) if w.shape[0] == 1 else (w * huber).sum(1)
        return f, vjp(w * psi)

    def value_grad(theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if theta.shape[0] <= CHUNK_ROWS:
            return block(theta, rows)
        parts = [block(theta[i:i + CHUNK_ROWS], rows[i:i + CHUNK_ROWS]) for i in range(0, theta.shape[0], CHUNK_ROWS)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return value_grad


def grid_starts(form: LawForm, grid: str = "full") -> np.ndarray:
    """The form's grid of starts [S, P]; ``coarse`` keeps every other value of each axis."""
    if grid == "full":
        return form.starts()
    from itertools import product

    return np.array(list(product(*(axis[::2] for axis in form.start_grid))), dtype=np.float64)


def run_starts(form: LawForm, data: LawData, starts: np.ndarray, options: FitOptions,
               weights: np.ndarray | None = None, rows: np.ndarray | None = None) -> BatchResult:
    """Minimise from every start; ``weights`` [R, n] and ``rows`` [S] give each start its own problem."""
    log_x = log_variables(form, data)
    log_y = torch.from_numpy(np.log(data.loss))
    w = np.asarray(data.weight if weights is None else weights, dtype=np.float64).reshape(-1, len(data))
    w = torch.from_numpy(w)
    value_grad = huber_value_grad(form, log_x, log_y, w, options.huber_delta)
    with torch_threads(options.threads):
        return batched_lbfgs(value_grad, starts, rows, lower=np.array(form.lower), upper=np.array(form.upper),
                             max_iter=options.max_iter, ftol=options.ftol, gtol=options.gtol)


def _candidates(result: BatchResult, k: int, min_gap: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Up to k end points, best first, each differing from every one kept by > min_gap in some fit parameter."""
    order = np.argsort(np.where(np.isfinite(result.f), result.f, np.inf))
    picked: list[int] = []
    for i in order:
        if not np.isfinite(result.f[i]) or len(picked) == k:
            break
        if all(np.abs(result.x[i] - result.x[j]).max() > min_gap for j in picked):
            picked.append(int(i))
    return result.x[picked], result.f[picked]


def at_bound(form: LawForm, theta: np.ndarray, rtol: float = 1e-6) -> tuple[str, ...]:
    """Fit parameters within rtol of the box span from a bound."""
    lo, hi = np.array(form.lower), np.array(form.upper)
    near = (theta - lo <= rtol * (hi - lo)) | (hi - theta <= rtol * (hi - lo))
    return tuple(name for name, hit in zip(form.fit_names, near, strict=True) if hit)


def points_needed(form: str | LawForm) -> int:
    """Distinct points a fit of ``form`` needs: one more than its parameters (else it passes through every point)."""
    return len(get_form(form).fit_names) + 1


def check_fit_data(data: LawData, form: str | LawForm) -> None:
    """ConfigError unless the data have enough distinct points for ``form`` (see `points_needed`)."""
    form = get_form(form)
    columns = [data.variable(v) for v in form.variables] + [data.loss]
    distinct = int(np.unique(np.stack(columns, axis=1), axis=0).shape[0]) if len(data) else 0
    need = points_needed(form)
    if distinct < need:
        same = f"; all {len(data)} rows are identical" if len(data) > 1 and distinct == 1 else ""
        raise ConfigError(f"points: a {form.name} fit has {need - 1} parameters and needs at least {need} distinct "
                          f"points ({', '.join(form.variables)}, loss), got {len(data)} row(s), {distinct} distinct"
                          f"{same}; add runs")


def fit_law(data: LawData, form: str | LawForm = "chinchilla", options: FitOptions | None = None,
            starts: np.ndarray | None = None) -> LawFit:
    """Fit one form from a grid of starts (the form's grid unless ``starts`` [S, P] fit space is given).

    Raises ConfigError when the data have fewer distinct points than `points_needed`.
    """
    form = get_form(form)
    check_fit_data(data, form)
    options = options or FitOptions()
    x0 = grid_starts(form, options.grid) if starts is None else np.asarray(starts, dtype=np.float64)
    if x0.ndim != 2 or x0.shape[1] != len(form.fit_names):
        raise ConfigError(f"starts: need an array [S, {len(form.fit_names)}] in fit space "
                          f"({', '.join(form.fit_names)})")
    t0 = time.perf_counter()
    result = run_starts(form, data, x0, options)
    if not np.isfinite(result.f).any():
        raise ConfigError(f"form {form.name!r}: the objective is not finite from any start; check the data")
    f_grid = float(np.min(np.where(np.isfinite(result.f), result.f, np.inf)))
    at_best = int((result.f <= f_grid + options.agree_rtol * abs(f_grid)).sum())
    near_best = int((result.f <= f_grid + NEAR_RTOL * abs(f_grid)).sum())
    cand_x, _ = _candidates(result, N_CANDIDATES)
    polished = run_starts(form, data, cand_x, replace(options, **POLISH))
    seconds = time.perf_counter() - t0
    best = int(np.argmin(np.where(np.isfinite(polished.f), polished.f, np.inf)))
    f_best, theta = float(polished.f[best]), polished.x[best]
    distinct_x, distinct_f = _candidates(polished, N_CANDIDATES)  # polished starts often meet again
    from wattscale.analysis.laws.optimiser import STATUS_NAMES

    return LawFit(
        form=form.name, formula=form.formula,
        params=dict(zip(form.names, map(float, form.to_natural(theta)), strict=True)),
        fit_params=dict(zip(form.fit_names, map(float, theta), strict=True)),
        objective=f_best, huber_delta=options.huber_delta, n_points=len(data), n_runs=data.n_runs,
        n_starts=int(x0.shape[0]),
        n_starts_at_best=at_best, n_starts_near_best=near_best,
        n_starts_converged=int(result.converged.sum()), converged=bool(polished.converged[best]),
        stop_reason=STATUS_NAMES[int(polished.status[best])], iterations=int(polished.iterations[best]),
        at_bound=at_bound(form, theta), rmse_log_loss=rmse_log_loss(form, theta, data),
        param_counting=data.param_counting, seconds=seconds,
        candidates=tuple(tuple(map(float, x)) for x in distinct_x),
        candidate_objectives=tuple(map(float, distinct_f)),
    )


def residuals(form: LawForm, theta: np.ndarray, data: LawData) -> np.ndarray:
    """log L_pred - log L at fit-space parameters theta [P], one per point."""
    with torch.no_grad():
        pred = form.log_loss(torch.from_numpy(np.asarray(theta, dtype=np.float64)[None, :]), log_variables(form, data))
    return pred[0].numpy() - np.log(data.loss)


def rmse_log_loss(form: LawForm, theta: np.ndarray, data: LawData) -> float:
    """Weighted root-mean-square of the log-loss residuals."""
    r = residuals(form, theta, data)
    return float(math.sqrt(np.sum(data.weight * r * r) / np.sum(data.weight)))


def log_likelihood(r: np.ndarray, weights: np.ndarray, delta: float = HUBER_DELTA) -> tuple[float, float]:
    """Maximised Huber log-likelihood of residuals r (scale fitted): (log-likelihood, scale)."""
    # Normaliser of exp(-Huber_delta(u)) over the real line (Besiroglu et al. 2024, appendix); erfc for the
    # normal tail keeps scipy.stats (seconds to import) out of the CLI's path.
    sf = 0.5 * math.erfc(delta / math.sqrt(2.0))
    log_z = math.log(math.sqrt(2 * math.pi) * (1 - 2 * sf) + 2 * math.exp(-0.5 * delta * delta) / delta)
    abs_r = np.abs(r)

    def neg(log_scale: float) -> float:
        u = abs_r / math.exp(log_scale)
        h = np.where(u <= delta, 0.5 * u * u, delta * (u - 0.5 * delta))
        return float(np.sum(weights * (h + log_z + log_scale)))

    # The negative log-likelihood is convex in the log scale: golden-section search on a wide bracket.
    centre = math.log(max(float(np.average(abs_r, weights=weights)) * delta, 1e-300))
    lo, hi = centre - 20.0, centre + 20.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = neg(a), neg(b)
    for _ in range(200):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = neg(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = neg(b)
    best = 0.5 * (lo + hi)
    return -neg(best), math.exp(best)


@dataclass(frozen=True)
class FormComparison(JsonResult):
    """One row of an information-criterion comparison of forms fitted to the same points."""

    form: str
    n_params: int
    n_points: int
    log_likelihood: float
    aic: float
    delta_aic: float
    akaike_weight: float
    rmse_log_loss: float


def compare_forms(data: LawData, fits: list[LawFit]) -> list[FormComparison]:
    """AIC (Huber likelihood with fitted scale, k = parameters + 1) for fits on the same data, best first."""
    rows = []
    for fit in fits:
        form = get_form(fit.form)
        theta = np.array([fit.fit_params[k] for k in form.fit_names])
        ll, _ = log_likelihood(residuals(form, theta, data), data.weight, fit.huber_delta)
        k = len(form.names) + 1
        rows.append((fit, ll, 2 * k - 2 * ll, k))
    best_aic = min(r[2] for r in rows)
    rel = [math.exp(-0.5 * (r[2] - best_aic)) for r in rows]
    out = [FormComparison(form=f.form, n_params=k, n_points=len(data), log_likelihood=ll, aic=aic,
                          delta_aic=aic - best_aic, akaike_weight=w / sum(rel), rmse_log_loss=f.rmse_log_loss)
           for (f, ll, aic, k), w in zip(rows, rel, strict=True)]
    return sorted(out, key=lambda c: c.aic)
