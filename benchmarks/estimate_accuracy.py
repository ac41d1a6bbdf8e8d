"""How accurate are calibration-based estimates? The measurement behind the uncertainty constants.

1. Calibrate (`wattscale.train.calibrate.calibrate_one`, the code `wattscale calibrate` runs) llama-tiny,
   llama-1m and llama-4m at one batch and sequence length, and llama-1m at a second batch size.
2. Cross-predict by FLOPs (`wattscale.experiment.calibrated`): each preset from the other two (the middle
   one interpolated, the ends extrapolated), and llama-1m's other batch from the three presets; the
   relative error of the predicted training tokens/s against the directly calibrated one.
3. Train real runs (the trainer, a temporary store), each right after a fresh calibration of its preset (so
   that the machine is as busy in both: on a shared machine its load decides the speed), and compare their
   whole-job wall time and energy with the estimate from that calibration and with the FLOP-scaled one.

Writes benchmarks/results/estimate_accuracy_<device>.json with the machine and its load average.

    python benchmarks/estimate_accuracy.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from wattscale.config import build_run_config
from wattscale.experiment.calibrated import CalibrationPoint, estimate_from_calibration
from wattscale.hardware import device_info
from wattscale.train import train
from wattscale.train.calibrate import CalibrationSettings, CalibrationTarget, calibrate_one

RESULTS = Path(__file__).resolve().parent / "results"


def _point(row: dict) -> CalibrationPoint:
    return CalibrationPoint.from_row({**row, "measured_at": "now"})


def main() -> None:
    """Calibrate, cross-predict, train, compare; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = p.parse_args()
    settings = CalibrationSettings(steps=args.steps, repeats=args.repeats, threads=args.threads)
    presets = ("llama-tiny", "llama-1m", "llama-4m")
    rows = {name: calibrate_one(CalibrationTarget(name, "fp32", args.batch, args.seq_len, "cpu"), settings)
            for name in presets}
    other_batch = calibrate_one(CalibrationTarget("llama-1m", "fp32", args.batch * 4, args.seq_len, "cpu"), settings)
    points = {name: _point(row) for name, row in rows.items()}

    def rate_error(target_row: dict, using: list[CalibrationPoint]) -> dict:
        config = build_run_config(overrides={"model": {"preset": target_row["preset"]}, "train": {
            "tokens": 10**6, "batch_size": target_row["batch_size"], "seq_len": target_row["seq_len"],
            "eval_interval_tokens": 0, "device": "cpu", "precision": "fp32"}})
        est = estimate_from_calibration(config, 10**6, using)
        predicted = 10**6 / est.parts_seconds["train"]
        return {"target": f"{target_row['preset']} {target_row['batch_size']}x{target_row['seq_len']}",
                "from": [f"{q.preset} {q.batch_size}x{q.seq_len}" for q in using], "basis": est.basis,
                "measured_tokens_per_second": target_row["tokens_per_second"],
                "predicted_tokens_per_second": predicted,
                "relative_error": predicted / target_row["tokens_per_second"] - 1,
                "time_relative_error": target_row["tokens_per_second"] / predicted - 1,
                "stated_uncertainty": est.uncertainty}

    cross = [rate_error(rows[name], [points[o] for o in presets if o != name]) for name in presets]
    cross.append(rate_error(other_batch, list(points.values())))
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for name, tokens in (("llama-tiny", 100_000), ("llama-1m", 40_960), ("llama-tiny", 40_960)):
            config = build_run_config(overrides={"model": {"preset": name}, "train": {
                "tokens": tokens, "batch_size": args.batch, "seq_len": args.seq_len, "device": "cpu",
                "precision": "fp32", "run_root": f"{folder}/runs", "threads": args.threads, "eval_tokens": 4096,
                "eval_interval_tokens": tokens // 4}, "data": {"synthetic_mb": 1.0}, "meter": {"idle_seconds": 0.0}})
            fresh = calibrate_one(CalibrationTarget(name, "fp32", args.batch, args.seq_len, "cpu"), settings)
            direct = estimate_from_calibration(config, tokens, [_point(fresh)])
            scaled = estimate_from_calibration(config, tokens, [points[o] for o in presets if o != name])
            result = train(config, f"{folder}/store.db", show_progress=False, cache_dir=Path(folder) / "cache")
            for label, est in (("direct", direct), ("flop_scaled", scaled)):
                runs.append({"preset": name, "tokens": tokens, "estimate": label, "basis": est.basis,
                             "load_average_at_calibration": fresh["load_average"],
                             "load_average_after_run": os.getloadavg()[0],
                             "stated_uncertainty": est.uncertainty, "estimated_seconds": est.seconds,
                             "wall_seconds": result.wall_seconds,
                             "time_relative_error": est.seconds / result.wall_seconds - 1,
                             "estimated_energy_j": est.joules, "energy_j": result.energy_j,
                             "energy_relative_error": est.joules / result.energy_j - 1 if result.energy_j else None,
                             "parts_seconds": est.parts_seconds})
    out = {"benchmark": "estimate_accuracy", "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": device_info(torch.device("cpu")), "load_average_1_5_15": os.getloadavg(),
           "settings": vars(args), "calibrations": list(rows.values()) + [other_batch],
           "cross_predictions": cross, "real_runs": runs,
           "command": "python benchmarks/estimate_accuracy.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "estimate_accuracy_cpu.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    for c in cross:
        print(f"{c['target']} from {c['from']}: tokens/s error {c['relative_error']:+.0%} "
              f"(stated +-{c['stated_uncertainty']:.0%})")
    for r in runs:
        print(f"{r['preset']} {r['estimate']}: time {r['time_relative_error']:+.0%}, energy "
              f"{r['energy_relative_error']:+.0%} (stated +-{r['stated_uncertainty']:.0%})")
    print(f"wrote {path}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f} s")
