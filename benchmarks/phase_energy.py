"""Training-phase energy vs whole-job energy: the same run with ten evaluations and with only the final one.

Two `llama-4m` runs with the same seed, data and budget, trained in this process with the CPU estimate
meter: one evaluates (and checkpoints) ten times, the other evaluates once at the end and writes no
intermediate checkpoint. Their training phases do the same work, so their training-phase J/token should
agree; their whole-job J/token should not, by the cost of nine evaluations and checkpoints. The script also
checks that the phases add up to each run's total (energy and seconds).

A shared 2-core machine drifts by more than the effect within minutes, so a short warm-up run comes first
(not counted), then `--rounds` rounds each train both variants, in alternating order; the summary gives the
per-round ratios and their medians.

    python benchmarks/phase_energy.py                          # llama-4m, 524,288 tokens, 2 rounds
    python benchmarks/phase_energy.py --tokens 262144 --rounds 3 --data ../shared/data/tinystories

Writes benchmarks/results/phase_energy_<preset>_cpu.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from wattscale.config import build_run_config
from wattscale.hardware import device_info, measured_matmul_flops
from wattscale.store import open_store
from wattscale.train import train

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {  # label -> train settings that differ
    "ten_evaluations": {},  # the defaults: evaluate (and checkpoint) every tenth of the budget
    "final_evaluation_only": {"eval_interval_tokens": 0, "checkpoint_interval_tokens": 0},
}


def run_variant(tmp: Path, label: str, args: argparse.Namespace, cache: Path) -> dict:
    """Train one variant into its own store (in `tmp`); return its phase figures from the store."""
    config = build_run_config(overrides={
        "model": {"preset": args.preset},
        "train": {"tokens": args.tokens, "batch_size": args.batch, "seq_len": args.seq_len, "seed": args.seed,
                  "eval_tokens": args.eval_tokens, "run_root": str(tmp / f"runs_{label}"), "device": "cpu",
                  "precision": "fp32", **VARIANTS[label]},
        "data": {"source": args.data},
        "meter": {"kinds": ["cpu-estimate"], "sample_hz": 10.0, "idle_seconds": 2.0},
    })
    store_path = tmp / f"{label}.db"
    result = train(config, str(store_path), show_progress=False, cache_dir=cache)
    with open_store(str(store_path)) as store:
        record = store.get_run(result.run_id)
        rows = store.energy_measurements(result.run_id)
        evaluations = store.evaluations(result.run_id)
    run_j = sum(r["energy_j"] for r in rows if r["scope"] == "run")
    phase_rows = [r for r in rows if r["scope"] == "phase"]
    phases = {r["phase"]: {"energy_j": r["energy_j"], "seconds": r["phase_seconds"]} for r in phase_rows}
    job_seconds = next(r["end_seconds"] - r["start_seconds"] for r in rows if r["scope"] == "run")
    return {
        "run_id": result.run_id, "status": record["status"], "evaluations": len(evaluations),
        "tokens_seen": record["tokens_seen"], "final_val_loss": record["final_val_loss"],
        "energy_source": record["energy_source"],
        "job": {"energy_j": record["energy_j"], "seconds": record["wall_seconds"],
                "joules_per_token": record["energy_j"] / record["tokens_seen"]},
        "train": {"energy_j": record["train_energy_j"], "seconds": record["train_seconds"],
                  "tokens": record["train_tokens"],
                  "joules_per_token": record["train_energy_j"] / record["train_tokens"]},
        "phases": phases,
        "phase_sums": {"energy_j": sum(p["energy_j"] for p in phases.values()), "run_rows_energy_j": run_j,
                       "energy_rel_diff": sum(p["energy_j"] for p in phases.values()) / run_j - 1,
                       "seconds": sum(p["seconds"] for p in phases.values()), "job_seconds": job_seconds,
                       "seconds_rel_diff": sum(p["seconds"] for p in phases.values()) / job_seconds - 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-4m")
    parser.add_argument("--tokens", type=int, default=524_288)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=65_536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="synthetic", help="'synthetic' (default) or a text file/folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        warm = argparse.Namespace(**{**vars(args), "tokens": args.batch * args.seq_len * 8})
        (tmp / "warmup").mkdir()
        run_variant(tmp / "warmup", "final_evaluation_only", warm, tmp / "cache")  # data, allocator, threads
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            runs = {}
            for label in order:
                folder = tmp / f"round{r}_{label}"
                folder.mkdir()
                runs[label] = run_variant(folder, label, args, tmp / "cache")
            rounds.append({"order": order, "runs": runs})
    train_ratios = [x["runs"]["ten_evaluations"]["train"]["joules_per_token"]
                    / x["runs"]["final_evaluation_only"]["train"]["joules_per_token"] for x in rounds]
    job_ratios = [x["runs"]["ten_evaluations"]["job"]["joules_per_token"]
                  / x["runs"]["final_evaluation_only"]["job"]["joules_per_token"] for x in rounds]
    summary = {
        "train_joules_per_token_ratio_per_round": train_ratios,
        "job_joules_per_token_ratio_per_round": job_ratios,
        "train_joules_per_token_ratio_median": statistics.median(train_ratios),
        "job_joules_per_token_ratio_median": statistics.median(job_ratios),
        "train_within_15_percent": abs(statistics.median(train_ratios) - 1) <= 0.15,
        "max_phase_sum_rel_diff": max(abs(run["phase_sums"]["energy_rel_diff"]) for x in rounds
                                      for run in x["runs"].values()),
        "max_phase_seconds_rel_diff": max(abs(run["phase_sums"]["seconds_rel_diff"]) for x in rounds
                                          for run in x["runs"].values()),
    }
    out = {
        "benchmark": "phase_energy", "command": "python benchmarks/phase_energy.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**device_info(torch.device("cpu")),
                    "fp32_matmul_flops": measured_matmul_flops(torch.device("cpu"), torch.float32, 1024, 1.0)},
        "settings": vars(args) | {"out": None}, "meter": "cpu-estimate (10 W per busy core), 10 Hz",
        "rounds": rounds, "summary": summary,
    }
    path = args.out or RESULTS / f"phase_energy_{args.preset}_cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    for r, x in enumerate(rounds):
        for label, run in x["runs"].items():
            print(f"round {r} {label}: {run['evaluations']} evaluations; train {run['train']['joules_per_token']:.4g} "
                  f"J/token ({run['train']['seconds']:.1f} s); job {run['job']['joules_per_token']:.4g} J/token "
                  f"({run['job']['seconds']:.1f} s); phases sum to the run within "
                  f"{abs(run['phase_sums']['energy_rel_diff']):.2e}")
    print(f"ten evaluations / final only, median over rounds: train J/token "
          f"{summary['train_joules_per_token_ratio_median']:.3f}, job J/token "
          f"{summary['job_joules_per_token_ratio_median']:.3f}; wrote {path}")


if __name__ == "__main__":
    main()
