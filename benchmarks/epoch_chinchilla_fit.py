"""wattscale's Chinchilla fit on Epoch AI's reconstruction of the Chinchilla data, next to the published fit.

Data: ``../shared/data/external/chinchilla_epoch/svg_extracted_data.csv`` with D = C / (6N) and the 5
highest-loss rows dropped (240 points), as in Epoch's notebook (SOURCE.md there). Fit: wattscale's defaults
(full Hoffmann grid, summed Huber with delta 1e-3); bootstrap: 4,000 replicates like Epoch's (seed 0).
Published (Besiroglu et al. 2024, data_analysis.ipynb): the Huber-likelihood fit with bootstrap SEs and 95%
intervals, and the notebook's own summed-Huber L-BFGS-B grid fit (the same estimator as ours).

    python benchmarks/epoch_chinchilla_fit.py [--boot 4000]
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from wattscale.analysis.laws.analysis import analyze_law
from wattscale.analysis.laws.data import law_data_from_csv
from wattscale.hardware import device_info

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WATTSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
EPOCH = SHARED / "external" / "chinchilla_epoch" / "svg_extracted_data.csv"
PUBLISHED = {  # value, bootstrap SE, 95% interval (SOURCE.md: cells[25], cells[21], cells[26])
    "E": (1.81686, 0.0257, (1.769, 1.871)), "A": (482.00572, 124.52, (285.0, 744.0)),
    "B": (2085.43420, 1293.28, (1042.0, 5810.0)), "alpha": (0.34781, 0.0154, (0.317, 0.373)),
    "beta": (0.36585, 0.0206, (0.331, 0.415)),
}
PUBLISHED_LBFGS_GRID = {"E": 1.8172, "A": 477.84, "B": 2143.86, "alpha": 0.34731, "beta": 0.36718}


def main() -> None:
    """Fit, bootstrap, compare; write benchmarks/results/epoch_chinchilla_fit.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=4000)
    args = parser.parse_args()
    if not EPOCH.is_file():
        raise SystemExit(f"Epoch AI's Chinchilla data not found at {EPOCH}; set WATTSCALE_SHARED_DATA to the "
                         "shared data folder")
    data = law_data_from_csv(EPOCH, {"params": "Model Size", "flops": "Training FLOP"}, param_counting="total")
    data = data.subset(data.loss < np.sort(data.loss)[-5])
    analysis = analyze_law(data, "chinchilla", n_boot=args.boot, losses=[2.0])
    fit, boot = analysis.fit, analysis.bootstrap
    rows = {k: {"ours": fit.params[k], "ours_se": boot.params[k].se,
                "ours_ci95": [boot.params[k].ci_low, boot.params[k].ci_high],
                "published": v, "published_se": se, "published_ci95": list(ci),
                "difference_in_published_se": (fit.params[k] - v) / se,
                "published_lbfgs_grid": PUBLISHED_LBFGS_GRID[k]}
            for k, (v, se, ci) in PUBLISHED.items()}
    result = {"benchmark": "epoch_chinchilla_fit", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": f"python benchmarks/epoch_chinchilla_fit.py --boot {args.boot}", "n_points": len(data),
              "parameters": rows, "analysis": analysis.to_dict(), "machine": device_info(torch.device("cpu"))}
    out = ROOT / "benchmarks" / "results" / "epoch_chinchilla_fit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=True))
    print(f"{len(data)} points; fit {fit.seconds:.1f} s, {fit.n_starts_at_best}/{fit.n_starts} starts at the best; "
          f"bootstrap {boot.n_converged}/{boot.n_boot} in {boot.seconds:.1f} s")
    for k, r in rows.items():
        print(f"{k:>5}: ours {r['ours']:.5g} (SE {r['ours_se']:.3g}, 95% [{r['ours_ci95'][0]:.4g}, "
              f"{r['ours_ci95'][1]:.4g}])  published {r['published']:.5g} (SE {r['published_se']:.3g}, "
              f"[{r['published_ci95'][0]:.4g}, {r['published_ci95'][1]:.4g}])  "
              f"diff {r['difference_in_published_se']:+.2f} SE")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
