"""Scaling-law forms: parameters, prediction, start grids, bounds and closed-form optima.

A form is data (:class:`LawForm`): how to compute log-loss from fit-space parameters and log-variables (in
torch, so the fitter gets gradients by autograd), how fit-space parameters map to the reported ones, a grid
of starting points and box bounds. The fitter (:mod:`wattscale.analysis.laws.fit`) only ever calls these
fields, so a user adds a form with :func:`register_form` without touching it.

Built-in forms (N parameters, D tokens, M batch size in tokens, K optimiser steps, D = M*K):

- ``chinchilla``: ``L = E + A/N^alpha + B/D^beta`` (Hoffmann et al. 2022), fitted as
  ``log L = LSE(e, a - alpha log N, b - beta log D)`` with ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``.
  Default starts: the full Hoffmann grid of Besiroglu et al. 2024 (e in -1..1 step 0.5, a and b in 0..25
  step 5, alpha and beta in 0..2 step 0.5: 4,500 starts).
- ``kaplan``: ``L = ((Nc/N)^(alpha_N/alpha_D) + Dc/D)^alpha_D`` (Kaplan et al. 2020, eq. 1.5), fitted with
  ``nc = log Nc``, ``dc = log Dc`` and ``r = alpha_N/alpha_D`` (the ratio, not alpha_N, is what the inner sum
  sees: this decouples the two exponents). No irreducible term. Default starts: nc, dc in {10, 20, 30, 40},
  r in {0.5, 1, 2}, alpha_D in {0.05, 0.1, 0.3, 0.6} (192 starts).
- ``three-term``: ``L = E + A/N^alpha + B/M^beta + C/K^gamma`` (Schaipp 2026), fitted as a 4-way LSE.
  Default starts: e in {-1, 0, 1}, a, b, c in {0, 8, 16, 24}, alpha, beta, gamma in {0.25, 0.75, 1.5}
  (5,184 starts; the Hoffmann-style full product would be 135,000).

Closed-form optima (all functions take natural parameters as a mapping name -> array, so bootstrap replicates
of shape [R, 1] broadcast against a grid of budgets of shape [F]):

- Compute-optimal allocation for ``C = 6 N D``: :func:`compute_optimal` gives ``N*(C)``, ``D*(C)``,
  ``L*(C)``; :func:`flops_for_loss` gives ``C(L)``, the inverse of ``L*(C)``. For ``chinchilla``,
  ``N* = G (C/6)^(beta/(alpha+beta))`` with ``G = (alpha A / (beta B))^(1/(alpha+beta))`` and
  ``L*(C) = E + K (C/6)^(-alpha beta/(alpha+beta))``, so ``C(L)`` is closed-form too.
- ``three-term``: ``M*(D) = (beta B/(gamma C))^(1/(beta+gamma)) D^(gamma/(beta+gamma))``
  (:func:`optimal_batch_tokens`); at ``M*`` the law is of the Chinchilla form with
  ``beta' = beta gamma/(beta+gamma)`` and ``B' = B k^-beta + C k^gamma`` where ``k`` is the coefficient of
  ``M*`` (:func:`implied_chinchilla`); the compute optima of ``three-term`` are those of that law.
  :func:`batch_band` gives the batch sizes whose loss is within ``epsilon`` (absolute, in loss units) of the
  optimum at fixed ``D``; with ``x = M/M*`` the excess loss is
  ``Q((x^-beta - 1)/beta + (x^gamma - 1)/gamma)``, ``Q = beta B M*^-beta``, so the band is solved in x.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

from wattscale.errors import ConfigError

# Variables a form may use, as named in LawData and in the CSV columns.
VARIABLES = ("params", "tokens", "batch_tokens", "steps")
FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D (training, forward + backward)

ParamMap = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class LawForm:
    """A scaling-law form: everything the fitter and the optima need to know about it.

    ``log_loss(theta, log_x)``: theta [S, P] fit-space parameters (torch float64), log_x [n, V] the logs of
    ``variables`` in order -> log predicted loss [S, n]. ``to_natural(theta)``: numpy [..., P] fit space ->
    [..., P] reported parameters (named ``names``); ``from_natural`` the inverse. ``start_grid``: for each fit
    parameter the values whose Cartesian product is the default grid of starts. ``lower``/``upper``: box
    bounds in fit space (a fit that ends on one is reported). ``log_loss_vjp`` (optional): the analytic
    gradient, ``(theta, log_x) -> (log_loss [S, n], vjp)`` with ``vjp(u [S, n]) = sum_i u_i dlog_loss_i/dtheta``;
    without it the fitter differentiates ``log_loss`` by autograd.
    """

    name: str
    formula: str
    variables: tuple[str, ...]
    fit_names: tuple[str, ...]
    names: tuple[str, ...]
    log_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    to_natural: Callable[[np.ndarray], np.ndarray]
    from_natural: Callable[[np.ndarray], np.ndarray]
    start_grid: tuple[tuple[float, ...], ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    log_loss_vjp: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Callable]] | None = None

    def __post_init__(self) -> None:
        n = len(self.fit_names)
        if not (len(self.names) == len(self.start_grid) == len(self.lower) == len(self.upper) == n):
            raise ConfigError(f"form {self.name!r}: names, start_grid, lower and upper must each have {n} entries")
        unknown = [v for v in self.variables if v not in VARIABLES]
        if unknown:
            raise ConfigError(f"form {self.name!r}: unknown variable(s) {unknown}; known: {list(VARIABLES)}")

    def starts(self) -> np.ndarray:
        """The default grid of starting points, [S, P] in fit space."""
        return np.array(list(product(*self.start_grid)), dtype=np.float64)

    def predict(self, law_params: ParamMap, /, **variables: np.ndarray) -> np.ndarray:
        """Predicted loss from natural parameters and variables given by name (arrays broadcast).

        Example: ``get_form("chinchilla").predict(fit.params, params=1e9, tokens=2e10)``.
        """
        missing = [v for v in self.variables if v not in variables]
        if missing:
            raise ConfigError(f"form {self.name!r} needs variable(s) {missing}")
        cols = np.broadcast_arrays(*(np.asarray(variables[v], dtype=np.float64) for v in self.variables))
        shape = cols[0].shape
        log_x = torch.from_numpy(np.stack([np.log(c).ravel() for c in cols], axis=1))
        theta = self.from_natural(np.array([float(law_params[k]) for k in self.names]))
        out = self.log_loss(torch.from_numpy(theta[None, :]), log_x)[0].exp().numpy()
        return out.reshape(shape)


_FORMS: dict[str, LawForm] = {}


def register_form(form: LawForm, *, replace: bool = False) -> None:
    """Add a form to the registry (``replace=True`` to overwrite one of the same name)."""
    if form.name in _FORMS and not replace:
        raise ConfigError(f"form {form.name!r} is already registered; pass replace=True to overwrite it")
    _FORMS[form.name] = form


def get_form(name: str | LawForm) -> LawForm:
    """A registered form by name (a LawForm passes through)."""
    if isinstance(name, LawForm):
        return name
    if name not in _FORMS:
        raise ConfigError(f"form: unknown form {name!r}; known forms: {', '.join(sorted(_FORMS))}")
    return _FORMS[name]


def form_names() -> tuple[str, ...]:
    """Names of the registered forms, sorted."""
    return tuple(sorted(_FORMS))


# --- built-in forms --------------------------------------------------------------------------------------


# exp() of a log-term above this would overflow float64; terms are clamped there (never reached by real data
# inside the box bounds below, which keep every log-term under ~100 for N, D, M, K >= 1).
_MAX_LOG_TERM = 700.0


def _lse_power_law(theta: torch.Tensor, log_x: torch.Tensor) -> torch.Tensor:
    """log(exp(e) + sum_j exp(c_j - k_j log x_j)) for theta = (e, c_1..c_V, k_1..k_V)."""
    return _lse_power_law_vjp(theta, log_x)[0]


def _lse_power_law_vjp(theta: torch.Tensor, log_x: torch.Tensor):
    """log-loss [S, n] and a function u [S, n] -> sum_i u_i d(log-loss_i)/d(theta) [S, P] (analytic).

    No max-shift: the constant term exp(e) >= exp(-10) keeps the sum away from 0 and the clamp keeps it
    finite, so each point costs one exp per power-law term and one log.
    """
    v = log_x.shape[1]
    const = torch.exp(theta[:, :1])  # [S, 1]
    powers = [torch.exp((theta[:, 1 + j:2 + j] - theta[:, 1 + v + j:2 + v + j] * log_x[:, j]).clamp_max(_MAX_LOG_TERM))
              for j in range(v)]  # each [S, n]
    total = const + powers[0]
    for term in powers[1:]:
        total = total + term
    log_loss = torch.log(total)

    def vjp(u: torch.Tensor) -> torch.Tensor:
        ut = u / total
        grad = torch.empty(theta.shape, dtype=theta.dtype)
        grad[:, 0] = const[:, 0] * ut.sum(1)
        for j in range(v):
            w = ut * powers[j]  # u_i times the share of term j in the sum
            grad[:, 1 + j] = w.sum(1)
            grad[:, 1 + v + j] = -(w @ log_x[:, j])
        return grad

    return log_loss, vjp


def _lse_natural(n_exp_terms: int) -> tuple[Callable, Callable]:
    """to_natural/from_natural for (e, coefficients..., exponents...): exp on the first 1+k entries."""
    k = 1 + n_exp_terms

    def to_nat(theta: np.ndarray) -> np.ndarray:
        out = np.array(theta, dtype=np.float64, copy=True)
        out[..., :k] = np.exp(out[..., :k])
        return out

    def from_nat(nat: np.ndarray) -> np.ndarray:
        out = np.array(nat, dtype=np.float64, copy=True)
        out[..., :k] = np.log(out[..., :k])
        return out

    return to_nat, from_nat


def _kaplan_log_loss(theta: torch.Tensor, log_x: torch.Tensor) -> torch.Tensor:
    """alpha_D * log((Nc/N)^r + Dc/D) for theta = (nc, dc, r, alpha_D), r = alpha_N / alpha_D."""
    return _kaplan_log_loss_vjp(theta, log_x)[0]


def _kaplan_log_loss_vjp(theta: torch.Tensor, log_x: torch.Tensor):
    """Kaplan log-loss [S, n] and its analytic vector-Jacobian product (see LawForm.log_loss_vjp)."""
    nc, dc, r, a_d = (theta[:, i:i + 1] for i in range(4))
    gap_n = nc - log_x[:, 0]  # [S, n]: log(Nc/N)
    t_n, t_d = r * gap_n, dc - log_x[:, 1]
    inner = torch.logaddexp(t_n, t_d)
    share_n = torch.sigmoid(t_n - t_d)  # d inner / d t_n

    def vjp(u: torch.Tensor) -> torch.Tensor:
        ua = u * a_d
        un = ua * share_n
        return torch.stack([(un * r).sum(1), (ua - un).sum(1), (un * gap_n).sum(1), (u * inner).sum(1)], dim=1)

    return a_d * inner, vjp


def _kaplan_to_natural(theta: np.ndarray) -> np.ndarray:
    """(nc, dc, r, alpha_D) -> (Nc, Dc, alpha_N, alpha_D)."""
    out = np.array(theta, dtype=np.float64, copy=True)
    out[..., :2] = np.exp(out[..., :2])
    out[..., 2] = out[..., 2] * out[..., 3]
    return out


def _kaplan_from_natural(nat: np.ndarray) -> np.ndarray:
    """(Nc, Dc, alpha_N, alpha_D) -> (nc, dc, r, alpha_D)."""
    out = np.array(nat, dtype=np.float64, copy=True)
    out[..., :2] = np.log(out[..., :2])
    out[..., 2] = out[..., 2] / out[..., 3]
    return out


_HOFFMANN_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_HOFFMANN_AB = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_HOFFMANN_EXP = (0.0, 0.5, 1.0, 1.5, 2.0)
# Box bounds in fit space: wide enough never to bind on real data; a fit that ends on one is flagged.
_LOG_COEF = (-20.0, 80.0)
_EXPONENT = (0.0, 5.0)
_LOG_E = (-10.0, 5.0)

_chin_nat = _lse_natural(2)
CHINCHILLA = LawForm(
    name="chinchilla",
    formula="L = E + A/N^alpha + B/D^beta",
    variables=("params", "tokens"),
    fit_names=("e", "a", "b", "alpha", "beta"),
    names=("E", "A", "B", "alpha", "beta"),
    log_loss=_lse_power_law,
    log_loss_vjp=_lse_power_law_vjp,
    to_natural=_chin_nat[0],
    from_natural=_chin_nat[1],
    start_grid=(_HOFFMANN_E, _HOFFMANN_AB, _HOFFMANN_AB, _HOFFMANN_EXP, _HOFFMANN_EXP),
    lower=(_LOG_E[0], _LOG_COEF[0], _LOG_COEF[0], _EXPONENT[0], _EXPONENT[0]),
    upper=(_LOG_E[1], _LOG_COEF[1], _LOG_COEF[1], _EXPONENT[1], _EXPONENT[1]),
)

KAPLAN = LawForm(
    name="kaplan",
    formula="L = ((Nc/N)^(alpha_N/alpha_D) + Dc/D)^alpha_D",
    variables=("params", "tokens"),
    fit_names=("nc", "dc", "r", "alpha_D"),
    names=("Nc", "Dc", "alpha_N", "alpha_D"),
    log_loss=_kaplan_log_loss,
    log_loss_vjp=_kaplan_log_loss_vjp,
    to_natural=_kaplan_to_natural,
    from_natural=_kaplan_from_natural,
    start_grid=((10.0, 20.0, 30.0, 40.0), (10.0, 20.0, 30.0, 40.0), (0.5, 1.0, 2.0), (0.05, 0.1, 0.3, 0.6)),
    lower=(-20.0, -20.0, 1e-3, 1e-3),
    upper=(120.0, 120.0, 50.0, 5.0),
)

_three_nat = _lse_natural(3)
THREE_TERM = LawForm(
    name="three-term",
    formula="L = E + A/N^alpha + B/M^beta + C/K^gamma",
    variables=("params", "batch_tokens", "steps"),
    fit_names=("e", "a", "b", "c", "alpha", "beta", "gamma"),
    names=("E", "A", "B", "C", "alpha", "beta", "gamma"),
    log_loss=_lse_power_law,
    log_loss_vjp=_lse_power_law_vjp,
    to_natural=_three_nat[0],
    from_natural=_three_nat[1],
    start_grid=((-1.0, 0.0, 1.0), (0.0, 8.0, 16.0, 24.0), (0.0, 8.0, 16.0, 24.0), (0.0, 8.0, 16.0, 24.0),
                (0.25, 0.75, 1.5), (0.25, 0.75, 1.5), (0.25, 0.75, 1.5)),
    lower=(_LOG_E[0],) + (_LOG_COEF[0],) * 3 + (_EXPONENT[0],) * 3,
    upper=(_LOG_E[1],) + (_LOG_COEF[1],) * 3 + (_EXPONENT[1],) * 3,
)

for _form in (CHINCHILLA, KAPLAN, THREE_TERM):
    register_form(_form)


# --- closed-form optima ----------------------------------------------------------------------------------


def _a(params: ParamMap, key: str) -> np.ndarray:
    return np.asarray(params[key], dtype=np.float64)


def optimal_batch_tokens(params: ParamMap, tokens: np.ndarray) -> np.ndarray:
    """Three-term law: the loss-minimising batch size M*(D) in tokens for a token budget D."""
    b, c, beta, gamma = (_a(params, k) for k in ("B", "C", "beta", "gamma"))
    return batch_law_coefficient(params) * np.asarray(tokens, dtype=np.float64) ** (gamma / (beta + gamma))


def batch_law_coefficient(params: ParamMap) -> np.ndarray:
    """Three-term law: k in M*(D) = k * D^(gamma/(beta+gamma))."""
    b, c, beta, gamma = (_a(params, k) for k in ("B", "C", "beta", "gamma"))
    return (beta * b / (gamma * c)) ** (1.0 / (beta + gamma))


def batch_law_exponent(params: ParamMap) -> np.ndarray:
    """Three-term law: the exponent gamma/(beta+gamma) of M*(D)."""
    beta, gamma = _a(params, "beta"), _a(params, "gamma")
    return gamma / (beta + gamma)


def implied_chinchilla(params: ParamMap) -> dict[str, np.ndarray]:
    """Three-term law at the optimal batch M*(D): the Chinchilla-form law L(N, D) it implies."""
    b, c, beta, gamma = (_a(params, k) for k in ("B", "C", "beta", "gamma"))
    k = batch_law_coefficient(params)
    return {"E": _a(params, "E"), "A": _a(params, "A"), "alpha": _a(params, "alpha"),
            "B": b * k ** (-beta) + c * k ** gamma, "beta": beta * gamma / (beta + gamma)}


def _band_x(beta: np.ndarray, gamma: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve (x^-beta - 1)/beta + (x^gamma - 1)/gamma = ratio for x < 1 and x > 1 (vectorised bisection in log x).

    The left side is 0 at x = 1 and increases monotonically away from it on both sides, so each root is unique.
    """
    def h(log_x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (np.exp(-beta * log_x) - 1.0) / beta + (np.exp(gamma * log_x) - 1.0) / gamma - ratio

    roots = []
    for far in (-200.0, 200.0):  # x from e^-200 to e^200: far beyond any batch size
        shape = np.broadcast(beta, gamma, ratio).shape
        inner, outer = np.zeros(shape), np.full(shape, far)
        for _ in range(100):  # interval 200 / 2^100: exact to float precision
            mid = 0.5 * (inner + outer)
            above = h(mid) > 0
            outer, inner = np.where(above, mid, outer), np.where(above, inner, mid)
        roots.append(np.exp(0.5 * (inner + outer)))
    return roots[0], roots[1]


def batch_band(params: ParamMap, tokens: np.ndarray, epsilon: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Three-term law: (M_low, M_high) in tokens, the batch sizes whose loss at fixed D is within epsilon of M*(D)."""
    if not epsilon > 0:
        raise ConfigError(f"epsilon: must be > 0 (loss units), got {epsilon}")
    b, beta, gamma = (_a(params, k) for k in ("B", "beta", "gamma"))
    m_opt = optimal_batch_tokens(params, tokens)
    q = beta * b * m_opt ** (-beta)  # excess loss = q * ((x^-beta - 1)/beta + (x^gamma - 1)/gamma), x = M/M*
    x_lo, x_hi = _band_x(beta, gamma, epsilon / q)
    return m_opt * x_lo, m_opt * x_hi


def _chinchilla_params(form: LawForm, params: ParamMap) -> dict[str, np.ndarray]:
    if form.name == "chinchilla":
        return {k: _a(params, k) for k in ("E", "A", "B", "alpha", "beta")}
    if form.name == "three-term":
        return implied_chinchilla(params)
    raise ConfigError(f"form {form.name!r} has no Chinchilla-type closed-form optimum")


def compute_optimal(form: str | LawForm, params: ParamMap, flops: np.ndarray) -> dict[str, np.ndarray]:
    """N*(C), D*(C), L*(C) for C = 6ND: keys ``params``, ``tokens``, ``loss`` (arrays broadcast with flops)."""
    form = get_form(form)
    c6 = np.asarray(flops, dtype=np.float64) / FLOPS_PER_PARAM_TOKEN
    if form.name == "kaplan":
        nc, dc, a_n, a_d = (_a(params, k) for k in ("Nc", "Dc", "alpha_N", "alpha_D"))
        r = a_n / a_d
        n_opt = (r * nc ** r * c6 / dc) ** (1.0 / (r + 1.0))
        d_opt = (r * nc ** r / dc) ** (-1.0 / (r + 1.0)) * c6 ** (r / (r + 1.0))  # = c6 / n_opt, also at C = inf
        return {"params": n_opt, "tokens": d_opt, "loss": ((nc / n_opt) ** r + dc / d_opt) ** a_d}
    p = _chinchilla_params(form, params)
    s = p["alpha"] + p["beta"]
    # A term with a zero coefficient or exponent (loss not falling with N or D) has no interior optimum: NaN/inf,
    # which analyze_law names in its warnings.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / s)
        n_opt = g * c6 ** (p["beta"] / s)
        d_opt = c6 ** (p["alpha"] / s) / g  # = c6 / n_opt, also at C = inf
        loss = p["E"] + p["A"] * n_opt ** -p["alpha"] + p["B"] * d_opt ** -p["beta"]
    return {"params": n_opt, "tokens": d_opt, "loss": loss}


def flops_for_loss(form: str | LawForm, params: ParamMap, loss: np.ndarray) -> np.ndarray:
    """C(L): the compute (FLOPs, C = 6ND) at which the compute-optimal loss L*(C) equals ``loss``.

    NaN where the target is at or below the irreducible loss E (never reached).
    """
    form = get_form(form)
    loss = np.asarray(loss, dtype=np.float64)
    if form.name == "kaplan":
        # L*(C) is a pure power law in C: L* = L*(C=6) * (C/6)^(-p) with p read off two points.
        l1, l2 = compute_optimal(form, params, 6.0)["loss"], compute_optimal(form, params, 6.0 * math.e)["loss"]
        p_exp = np.log(l1) - np.log(l2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 6.0 * np.exp((np.log(l1) - np.log(loss)) / p_exp)
    p = _chinchilla_params(form, params)
    s = p["alpha"] + p["beta"]
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / s)
    k = p["A"] * g ** -p["alpha"] + p["B"] * g ** p["beta"]
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(loss > p["E"], loss - p["E"], np.nan)
        return FLOPS_PER_PARAM_TOKEN * (excess / k) ** (-s / (p["alpha"] * p["beta"]))


def tokens_for_loss(form: str | LawForm, params: ParamMap, n_params: np.ndarray, batch_tokens: np.ndarray,
                    loss: float) -> np.ndarray:
    """Training tokens D at which the law reaches ``loss`` for model size N and batch size M (inf: never).

    Closed forms: chinchilla ``D = (B / (L - E - A/N^alpha))^(1/beta)``; three-term
    ``D = M (C / (L - E - A/N^alpha - B/M^beta))^(1/gamma)``; kaplan ``D = Dc / (L^(1/alpha_D) - (Nc/N)^r)``.
    """
    form = get_form(form)
    n, m = np.asarray(n_params, dtype=np.float64), np.asarray(batch_tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if form.name == "chinchilla":
            rem = loss - _a(params, "E") - _a(params, "A") / n ** _a(params, "alpha")
            d = (_a(params, "B") / rem) ** (1.0 / _a(params, "beta"))
        elif form.name == "three-term":
            rem = (loss - _a(params, "E") - _a(params, "A") / n ** _a(params, "alpha")
                   - _a(params, "B") / m ** _a(params, "beta"))
            d = m * (_a(params, "C") / rem) ** (1.0 / _a(params, "gamma"))
        elif form.name == "kaplan":
            r = _a(params, "alpha_N") / _a(params, "alpha_D")
            rem = loss ** (1.0 / _a(params, "alpha_D")) - (_a(params, "Nc") / n) ** r
            d = _a(params, "Dc") / rem
        else:
            raise ConfigError(f"form {form.name!r} has no closed form for the tokens that reach a loss")
        return np.where(rem > 0, d, np.inf)
