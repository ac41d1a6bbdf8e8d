"""The three-term law's optimal batch size M*(D) on Step-Law's released runs, next to the published figures.

A reported comparison, not a tuned test: the fit is wattscale's default (full three-term grid, summed Huber
with delta 1e-3, 1,000 run bootstrap replicates) and nothing is adjusted to move the exponent.

Data: ``../shared/data/external/steplaw/dense_lr_bs_loss.csv`` (Li et al. 2025, "Predictable Scale: Part I",
see SOURCE.md there). Run selection, decided here:

- dense runs only; runs with ``smooth loss`` > 4 dropped (diverged: SOURCE.md lists 181 such rows, the next
  highest value is 3.16);
- for each (N, D, bs) the run with the lowest ``smooth loss``, i.e. the best learning rate tried at that batch
  size: the three-term law has no learning-rate term, and its batch-size term describes a batch size used at
  a well-tuned learning rate. This keeps the sub-optimal batch sizes (10 per (N, D)), which is what
  identifies beta and gamma;
- loss: ``smooth loss`` (the training-loss curve smoothed, at the last step; Step-Law fits the same column);
  N: ``N`` (non-embedding parameters, exactly ``numl*(4h^2 + 3h*ffnh)``); M = ``bs`` x 2048 tokens;
  K = ``ti`` steps; D = M K (within 0.22% of the file's D).

Published figures compared against: M*(D) ~ 0.667 D^0.566 (Schaipp 2026 on public runs, as quoted in
DESIGN.md), and Step-Law's own fit of the optimal batch, bs_tokens = exp(bs_intercept) D^bs_coefD, whose
1,000 bootstrap fits are in ``1004_fitted_lr_bs_scaling_model_parameters.csv`` (mean about 0.581 D^0.5709).

    python benchmarks/steplaw_batch_law.py [--boot 1000] [--grid full]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wattscale.analysis.laws.analysis import analyze_law
from wattscale.analysis.laws.data import make_law_data
from wattscale.analysis.laws.fit import FitOptions
from wattscale.hardware import device_info

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WATTSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
STEPLAW = SHARED / "external" / "steplaw"
RESULTS = ROOT / "benchmarks" / "results"
SEQ_LEN = 2048
SCHAIPP = {"coefficient": 0.667, "exponent": 0.566, "source": "Schaipp 2026 (arXiv 2607.01487), as quoted in DESIGN.md"}


def select_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Non-diverged runs, then the best learning rate per (N, D, bs)."""
    ok = frame[frame["smooth loss"] <= 4.0]
    return ok.loc[ok.groupby(["N", "D", "bs"])["smooth loss"].idxmin()].reset_index(drop=True)


def steplaw_own_fit() -> dict:
    """Step-Law's bootstrap fits of the optimal batch size in tokens: mean and 95% range of the exponent."""
    fits = pd.read_csv(STEPLAW / "1004_fitted_lr_bs_scaling_model_parameters.csv")
    expo, icpt = fits["bs_coefD"].to_numpy(), fits["bs_intercept"].to_numpy()
    return {"coefficient_exp_mean_intercept": float(np.exp(icpt.mean())), "exponent_mean": float(expo.mean()),
            "exponent_2.5_97.5": [float(np.percentile(expo, 2.5)), float(np.percentile(expo, 97.5))],
            "n_fits": int(len(fits)), "source": "1004_fitted_lr_bs_scaling_model_parameters.csv (bs_tokens = "
                                                  "exp(bs_intercept) * D^bs_coefD)"}


def main() -> None:
    """Fit, compare, write benchmarks/results/steplaw_batch_law.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--grid", choices=("full", "coarse"), default="full")
    args = parser.parse_args()
    if not (STEPLAW / "dense_lr_bs_loss.csv").is_file():
        raise SystemExit(f"Step-Law run data not found in {STEPLAW}; set WATTSCALE_SHARED_DATA to the shared data")
    runs = select_runs(pd.read_csv(STEPLAW / "dense_lr_bs_loss.csv"))
    data = make_law_data(params=runs["N"], batch_tokens=runs["bs"] * SEQ_LEN, steps=runs["ti"],
                         loss=runs["smooth loss"], run_id=runs["exp_name"], param_counting="non_embedding",
                         source=str(STEPLAW / "dense_lr_bs_loss.csv"))
    t0 = time.perf_counter()
    analysis = analyze_law(data, "three-term", FitOptions(grid=args.grid), n_boot=args.boot,
                           compare=["chinchilla"], tokens=[1e9, 1e10, 1e11, 1e12])
    seconds = time.perf_counter() - t0
    law = analysis.batch_law
    groups = runs.groupby(["N", "D"])
    observed = [{"params": float(n), "tokens": float(d), "best_batch_tokens": float(g.loc[g["smooth loss"].idxmin(),
                                                                                           "bs"] * SEQ_LEN),
                 "predicted_batch_tokens": float(law.coefficient.value * d ** law.exponent.value)}
                for (n, d), g in groups]
    result = {
        "benchmark": "steplaw_batch_law", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python benchmarks/steplaw_batch_law.py --boot {args.boot} --grid {args.grid}",
        "selection": "dense runs, smooth loss <= 4, best learning rate (lowest smooth loss) per (N, D, bs)",
        "n_runs_in_file": int(len(pd.read_csv(STEPLAW / "dense_lr_bs_loss.csv"))), "n_points": len(data),
        "m_star_exponent": law.exponent.to_dict(), "m_star_coefficient": law.coefficient.to_dict(),
        "published_schaipp": SCHAIPP, "published_steplaw_own_fit": steplaw_own_fit(),
        "exponent_minus_0_566": law.exponent.value - SCHAIPP["exponent"],
        "observed_best_batch_per_n_d": observed, "analysis": analysis.to_dict(), "seconds": seconds,
        "machine": device_info(torch.device("cpu")),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "steplaw_batch_law.json"
    out.write_text(json.dumps(result, indent=2, default=str, allow_nan=True))
    e, c = law.exponent, law.coefficient
    print(f"M*(D) = {c.value:.4g} [{c.ci_low:.4g}, {c.ci_high:.4g}] * D^{e.value:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}]"
          f" on {len(data)} runs; published: 0.667 D^0.566 (Schaipp), Step-Law's own "
          f"{result['published_steplaw_own_fit']['coefficient_exp_mean_intercept']:.3g} D^"
          f"{result['published_steplaw_own_fit']['exponent_mean']:.4f}; {seconds:.1f} s")
    for w in analysis.warnings:
        print(f"warning: {w}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
