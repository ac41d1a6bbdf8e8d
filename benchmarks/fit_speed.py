"""Fit speed: wattscale's batched L-BFGS over the whole start grid vs a per-start scipy.optimize.minimize loop.

Data: Epoch AI's reconstruction of the Chinchilla points (240 after dropping the 5 highest losses, D = C/(6N);
``../shared/data/external/chinchilla_epoch``); synthetic Chinchilla-law points of the same size when absent.
Grid: the full Hoffmann grid of Besiroglu et al. (2024), 4,500 starts, the same for every method.

- **ours**: ``wattscale.analysis.laws.fit.fit_law`` (grid stage with scipy's default tolerances, then the
  polish of the distinct optima), timed end to end, with torch on 1 thread (the default) and on 2.
- **scipy, notebook way**: for each start ``scipy.optimize.minimize(objective, x0, method="L-BFGS-B")`` with
  default options and finite-difference gradients, the best successful result kept: the loop of the published
  notebooks (Besiroglu et al. 2024).
- **scipy, analytic gradient**: the same loop with ``jac=True`` and a hand-written numpy gradient, a stronger
  baseline than the notebooks use.

Both scipy objectives are written here in numpy, independently of wattscale. Ours runs before and after the
scipy loops (shared-machine drift hits all alike); its median is used. The ratio is baseline seconds / ours.

    python benchmarks/fit_speed.py [--baseline-starts N]   # N < 4500: a random subset, time scaled up
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

from wattscale.analysis.laws.data import law_data_from_csv, make_law_data
from wattscale.analysis.laws.fit import FitOptions, fit_law
from wattscale.analysis.laws.forms import get_form
from wattscale.hardware import device_info

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WATTSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
EPOCH = SHARED / "external" / "chinchilla_epoch" / "svg_extracted_data.csv"
RESULTS = ROOT / "benchmarks" / "results"
DELTA = 1e-3


def load_data():
    """Epoch's 240 points, or 240 synthetic Chinchilla-law points when the shared data are absent."""
    if EPOCH.is_file():
        data = law_data_from_csv(EPOCH, {"params": "Model Size", "flops": "Training FLOP"}, param_counting="total")
        return data.subset(data.loss < np.sort(data.loss)[-5]), str(EPOCH)
    rng = np.random.default_rng(0)
    n, d = 10 ** rng.uniform(7.7, 10.2, 240), 10 ** rng.uniform(8.4, 11.5, 240)
    loss = (1.82 + 482.0 / n**0.348 + 2085.0 / d**0.366) * np.exp(rng.normal(0, 0.01, 240))
    return make_law_data(params=n, tokens=d, loss=loss), "synthetic (Epoch data not found)"


def numpy_objective(theta, log_n, log_d, log_l):
    """Summed Huber (delta 1e-3) of log residuals for theta = (a, b, e, alpha, beta), the notebooks' order."""
    a, b, e, alpha, beta = theta
    pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    r = np.abs(log_l - pred)
    return float(np.sum(np.where(r <= DELTA, 0.5 * r * r, DELTA * (r - 0.5 * DELTA))))


def numpy_objective_and_grad(theta, log_n, log_d, log_l):
    """The same objective with its analytic gradient."""
    a, b, e, alpha, beta = theta
    t_n, t_d = a - alpha * log_n, b - beta * log_d
    pred = np.logaddexp(np.logaddexp(t_n, t_d), e)
    res = pred - log_l
    psi = np.clip(res, -DELTA, DELTA)
    p_n, p_d, p_e = np.exp(t_n - pred), np.exp(t_d - pred), np.exp(e - pred)
    grad = np.array([np.sum(psi * p_n), np.sum(psi * p_d), np.sum(psi * p_e), -np.sum(psi * p_n * log_n),
                     -np.sum(psi * p_d * log_d)])
    return float(np.sum(psi * (res - 0.5 * psi))), grad


def scipy_loop(data, starts, analytic: bool) -> dict:
    """One scipy L-BFGS-B per start; the best successful result (the notebooks' rule)."""
    args = (np.log(data.params), np.log(data.tokens), np.log(data.loss))
    best, n_success, t0 = None, 0, time.perf_counter()
    for e, a, b, alpha, beta in starts:  # our grid is (e, a, b, alpha, beta); the notebooks order (a, b, e, ...)
        x0 = np.array([a, b, e, alpha, beta])
        if analytic:
            res = minimize(numpy_objective_and_grad, x0, args=args, method="L-BFGS-B", jac=True)
        else:
            res = minimize(numpy_objective, x0, args=args, method="L-BFGS-B")
        n_success += bool(res.success)
        if res.success and (best is None or res.fun < best.fun):
            best = res
    seconds = time.perf_counter() - t0
    a, b, e, alpha, beta = best.x
    return {"seconds": seconds, "n_starts": len(starts), "n_success": n_success, "objective": float(best.fun),
            "params": {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha),
                       "beta": float(beta)}}


def ours(data, threads: int) -> dict:
    """Our fit on the full grid; seconds end to end (grid + polish)."""
    t0 = time.perf_counter()
    fit = fit_law(data, "chinchilla", FitOptions(threads=threads))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "objective": fit.objective, "params": fit.params, "n_starts": fit.n_starts,
            "n_starts_at_best": fit.n_starts_at_best, "n_starts_converged": fit.n_starts_converged,
            "converged": fit.converged, "threads": threads}


def main() -> None:
    """Run the three methods side by side and write benchmarks/results/fit_speed.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-starts", type=int, default=4500,
                        help="starts for the scipy loops (default all 4,500; fewer: a random subset, time scaled up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours before and after the loops (each)")
    args = parser.parse_args()
    data, source = load_data()
    grid = get_form("chinchilla").starts()
    subset = grid if args.baseline_starts >= len(grid) else \
        grid[np.random.default_rng(0).choice(len(grid), args.baseline_starts, replace=False)]
    scale = len(grid) / len(subset)
    runs_1 = [ours(data, 1) for _ in range(args.repeats)]
    runs_2 = [ours(data, 2) for _ in range(args.repeats)]
    fd = scipy_loop(data, subset, analytic=False)
    jac = scipy_loop(data, subset, analytic=True)
    runs_1 += [ours(data, 1) for _ in range(args.repeats)]
    runs_2 += [ours(data, 2) for _ in range(args.repeats)]
    ours_s = statistics.median(r["seconds"] for r in runs_1)
    ours_2 = statistics.median(r["seconds"] for r in runs_2)
    ref = runs_1[0]
    agree = {name: max(abs(ref["params"][k] / base["params"][k] - 1) for k in ref["params"])
             for name, base in (("scipy_notebook", fd), ("scipy_analytic", jac))}
    result = {
        "benchmark": "fit_speed", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python benchmarks/fit_speed.py --baseline-starts {args.baseline_starts} --repeats {args.repeats}",
        "data": source, "n_points": len(data), "grid_starts": len(grid), "baseline_starts_run": len(subset),
        "baseline_time_scale": scale,
        "ours_threads_1": {"seconds_median": ours_s, "runs": runs_1},
        "ours_threads_2": {"seconds_median": ours_2, "runs": runs_2},
        "scipy_notebook": fd | {"seconds_full_grid": fd["seconds"] * scale},
        "scipy_analytic": jac | {"seconds_full_grid": jac["seconds"] * scale},
        "speedup_vs_scipy_notebook": fd["seconds"] * scale / ours_s,
        "speedup_vs_scipy_analytic": jac["seconds"] * scale / ours_s,
        "target_speedup": 10.0,
        "max_relative_param_difference": agree,
        "objective_relative_difference": {"scipy_notebook": ref["objective"] / fd["objective"] - 1,
                                          "scipy_analytic": ref["objective"] / jac["objective"] - 1},
        "machine": device_info(torch.device("cpu")) | {"load_average_at_end": os.getloadavg()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "fit_speed.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{len(data)} points, {len(grid)} starts ({source})")
    print(f"ours: {ours_s:.2f} s (1 thread, median of {len(runs_1)}), {ours_2:.2f} s (2 threads)")
    for name, r in (("scipy notebook (FD gradients)", fd), ("scipy analytic gradient", jac)):
        print(f"{name}: {r['seconds'] * scale:.1f} s for the full grid; speedup {r['seconds'] * scale / ours_s:.0f}x")
    print(f"same optimum: max relative parameter difference {agree}, objective ours/theirs - 1 = "
          f"{result['objective_relative_difference']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
