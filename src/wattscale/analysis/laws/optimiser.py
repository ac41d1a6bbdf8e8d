"""A batched, box-constrained L-BFGS in torch: many independent small problems minimised in lock-step.

Why this and not scipy: a scaling-law fit is thousands of independent 5-7 parameter problems (one per start,
and per bootstrap replicate). Each scipy call pays Python overhead per iteration and per finite-difference
gradient; stacking the starts into one scipy problem (a block-diagonal objective) would make L-BFGS share
one curvature history across unrelated problems and stop only when the slowest start stops. Here every start
keeps its own history, step and convergence test, but all of them are evaluated as one [S, n] tensor
expression with autograd gradients, and converged starts leave the active set, so each iteration costs one
vectorised objective evaluation over the starts still running.

The algorithm per start is L-BFGS (memory ``history``) with the usual two-loop recursion, H0 scaled by
s'y/y'y, pairs with s'y <= 1e-10 |s||y| skipped, a projected step for the box (variables at a bound whose
gradient points outwards are frozen for that step) and a backtracking Armijo line search (c1 = 1e-4, halving).
Stopping tests are scipy L-BFGS-B's: ``(f_prev - f) <= ftol * max(|f_prev|, |f|, 1)`` or projected-gradient
inf-norm ``<= gtol``; defaults are scipy's (ftol 2.22e-9, gtol 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Status codes per start.
CONVERGED_GTOL, CONVERGED_FTOL, MAX_ITER, LINE_SEARCH_FAILED, NON_FINITE = 0, 1, 2, 3, 4
STATUS_NAMES = {CONVERGED_GTOL: "gtol", CONVERGED_FTOL: "ftol", MAX_ITER: "max_iter",
                LINE_SEARCH_FAILED: "line_search_failed", NON_FINITE: "non_finite"}

# (theta [S, P], rows [S] int64: which problem each start belongs to) -> (values [S], gradients [S, P])
ValueGrad = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BatchResult:
    """Final state of every start: x [S, P], f [S], status [S] (codes above), iterations [S]."""

    x: np.ndarray
    f: np.ndarray
    status: np.ndarray
    iterations: np.ndarray

    @property
    def converged(self) -> np.ndarray:
        """True where a stopping test (not the iteration cap or a failure) ended the start."""
        return self.status <= CONVERGED_FTOL


def autograd_value_grad(objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> ValueGrad:
    """A ValueGrad from an objective (theta, rows) -> values [S], differentiated by autograd."""

    def value_grad(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        f = objective(x, rows)
        (g,) = torch.autograd.grad(f.sum(), x)  # starts are independent, so d(sum)/dx_s = df_s/dx_s
        return f.detach(), g.detach()

    return value_grad


def _free(x: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mask of variables not held at a bound by a gradient pointing outwards."""
    return ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))


def _two_loop(g: np.ndarray, s_hist: np.ndarray, y_hist: np.ndarray, rho: np.ndarray, gamma: np.ndarray,
              order: list[int]) -> np.ndarray:
    """H g by the two-loop recursion for all starts at once: s_hist/y_hist [S, m, P], rho [S, m] (0 = skipped)."""
    q = g.copy()
    alphas = []
    for i in reversed(order):  # newest first
        a = rho[:, i] * np.einsum("sp,sp->s", s_hist[:, i], q)
        q -= a[:, None] * y_hist[:, i]
        alphas.append(a)
    r = gamma[:, None] * q
    for i, a in zip(order, reversed(alphas), strict=True):  # oldest first
        b = rho[:, i] * np.einsum("sp,sp->s", y_hist[:, i], r)
        r += (a - b)[:, None] * s_hist[:, i]
    return r


class _Evaluator:
    """numpy in, numpy out around a torch ValueGrad (zero-copy both ways)."""

    def __init__(self, value_grad: ValueGrad) -> None:
        self.value_grad = value_grad

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, g = self.value_grad(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(rows))
        return f.numpy(), g.numpy()


def _line_search(evaluate: _Evaluator, x, f, g, d, t0, rows, lo, hi, max_halvings: int = 40):
    """Backtracking Armijo (c1 = 1e-4) on the projected path; returns x_new, f_new, g_new, ok mask."""
    t = t0.copy()
    xt = np.clip(x + t[:, None] * d, lo, hi)
    ft, gt = evaluate(xt, rows)
    good = np.isfinite(ft) & (ft <= f + 1e-4 * ((xt - x) * g).sum(1))
    if good.all():  # the usual case: the unit step is accepted everywhere
        return xt, ft, gt, good
    x_new, f_new, g_new = np.where(good[:, None], xt, x), np.where(good, ft, f), np.where(good[:, None], gt, g)
    ok = good.copy()
    todo = np.flatnonzero(~good)
    for _ in range(max_halvings - 1):
        t[todo] *= 0.5
        xt = np.clip(x[todo] + t[todo, None] * d[todo], lo, hi)
        ft, gt = evaluate(xt, rows[todo])
        good = np.isfinite(ft) & (ft <= f[todo] + 1e-4 * ((xt - x[todo]) * g[todo]).sum(1))
        idx = todo[good]
        x_new[idx], f_new[idx], g_new[idx], ok[idx] = xt[good], ft[good], gt[good], True
        todo = todo[~good]
        if todo.size == 0:
            break
    return x_new, f_new, g_new, ok


def batched_lbfgs(value_grad: ValueGrad, x0: np.ndarray, rows: np.ndarray | None = None, *,
                  lower: np.ndarray, upper: np.ndarray, max_iter: int = 1000, history: int = 10,
                  ftol: float = 2.220446049250313e-09, gtol: float = 1e-5) -> BatchResult:
    """Minimise independently from every start in x0 [S, P]; see the module docstring."""
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    x = np.clip(np.asarray(x0, dtype=np.float64), lo, hi)
    n_starts, p = x.shape
    rows = np.zeros(n_starts, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    evaluate = _Evaluator(value_grad)
    f, g = evaluate(x, rows)
    f, g = f.copy(), g.copy()
    status = np.full(n_starts, MAX_ITER, dtype=np.int64)
    status[~np.isfinite(f)] = NON_FINITE
    iters = np.zeros(n_starts, dtype=np.int64)
    act = np.flatnonzero(status == MAX_ITER)
    # State of the active starts only, compacted whenever some finish.
    xa, fa, ga, ra = x[act], f[act], g[act], rows[act]
    s_hist = np.zeros((act.size, history, p))
    y_hist = np.zeros_like(s_hist)
    rho = np.zeros((act.size, history))
    gamma = np.ones(act.size)
    for it in range(max_iter):
        if act.size == 0:
            break
        gf = ga * _free(xa, ga, lo, hi)
        order = [(it - 1 - j) % history for j in range(min(it, history))][::-1]  # oldest .. newest slots
        d = -_two_loop(gf, s_hist, y_hist, rho, gamma, order) * (gf != 0)
        lost = (d * ga).sum(1) >= 0
        t0 = np.ones(act.size) if it > 0 else 1.0 / np.maximum(np.linalg.norm(gf, axis=1), 1.0)
        if lost.any():  # restart a start that lost its descent direction from steepest descent
            d[lost], rho[lost], gamma[lost] = -gf[lost], 0.0, 1.0
            t0[lost] = 1.0 / np.maximum(np.linalg.norm(gf[lost], axis=1), 1.0)
        xn, fn, gn, ok = _line_search(evaluate, xa, fa, ga, d, t0, ra, lo, hi)
        s, y = xn - xa, gn - ga
        sy, yy = (s * y).sum(1), (y * y).sum(1)
        good = ok & (sy > 1e-10 * np.sqrt((s * s).sum(1) * yy))
        slot = it % history
        s_hist[:, slot], y_hist[:, slot] = s, y
        rho[:, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma = np.where(good, sy / np.where(good, yy, 1.0), gamma)
        iters[act] += 1
        pg = np.abs(gn * _free(xn, gn, lo, hi)).max(1)
        f_stop = (fa - fn) <= ftol * np.maximum(np.maximum(np.abs(fa), np.abs(fn)), 1.0)
        new = np.where(~ok, LINE_SEARCH_FAILED,
                       np.where(pg <= gtol, CONVERGED_GTOL, np.where(f_stop, CONVERGED_FTOL, MAX_ITER)))
        xa, fa, ga = xn, fn, gn
        done = new != MAX_ITER
        if done.any():
            x[act[done]], f[act[done]], status[act[done]] = xa[done], fa[done], new[done]
            keep = ~done
            act, xa, fa, ga, ra = act[keep], xa[keep], fa[keep], ga[keep], ra[keep]
            s_hist, y_hist, rho, gamma = s_hist[keep], y_hist[keep], rho[keep], gamma[keep]
    x[act], f[act] = xa, fa
    return BatchResult(x=x, f=f, status=status, iterations=iters)
