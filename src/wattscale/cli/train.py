"""`wattscale train` (one run to an exact token budget) and `wattscale quickstart` (the whole product, small)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from wattscale.cli.common import (
    EXIT_DIVERGED,
    add_command,
    add_json_flag,
    add_list_argument,
    add_output_flag,
    fmt_loss,
    store_url,
)
from wattscale.footprint import add_footprint_flags
from wattscale.jsonout import strict_json

# Choices are named statically: importing config (torch) while building the parser would slow every command.
SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "tf32")
PARALLEL_MODES = ("ddp", "fsdp")


def _train_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """CLI flags as config tables; None means 'not given' and leaves the file's value alone."""
    return {
        "model": {"preset": args.preset, "vocab_size": args.vocab_size},
        "train": {k: getattr(args, k) for k in (
            "tokens", "data_tokens", "epochs", "repeat", "seed", "batch_size", "micro_batch_size", "seq_len",
            "lr", "schedule",
            "warmup_fraction", "eval_interval_tokens", "eval_tokens", "checkpoint_interval_tokens",
            "device", "precision", "run_root", "name", "threads", "parallel", "log_interval_steps")}
        | {"compile": args.compile or None, "deterministic": args.deterministic or None, "track": args.track or None},
        "data": {"source": args.data, "tokenizer": args.tokenizer, "synthetic_mb": args.synthetic_mb,
                 "val_source": args.val_data, "text_field": args.text_field},
        "meter": {"sample_hz": args.sample_hz, "cpu_tdp_w_per_core": args.cpu_tdp_w_per_core,
                  "idle_seconds": args.idle_seconds, "grid_gco2e_per_kwh": args.grid_gco2e_per_kwh,
                  "kinds": tuple(args.meters) if args.meters else None},
    }


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) one run and print its outcome."""
    from wattscale.config import build_run_config, load_toml
    from wattscale.train import train

    tables = load_toml(Path(args.config)) if args.config else None
    config = build_run_config(tables, _train_overrides(args))
    if args.dry_run:
        return dry_run(config, args)
    result = train(config, store_url(args), show_progress=not args.no_progress,
                   cache_dir=Path(args.cache_dir))
    if os.environ.get("RANK", "0") != "0":
        pass  # under torchrun every rank gets the same result; rank 0 prints it
    elif args.json:
        print(strict_json({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}))
    elif result.already_done:
        print(f"run {result.run_id} already {result.status}: final val_loss {fmt_loss(result.final_val_loss)}")
    else:
        print(f"run {result.run_id} {result.status}: {result.tokens_seen:,} tokens in {result.steps} steps, "
              f"{result.wall_seconds:.1f} s, final val_loss {fmt_loss(result.final_val_loss)}, "
              f"val_ppl {fmt_loss(result.final_val_ppl)}")
        print(f"  store: {store_url(args)}   run dir: {result.run_dir}")
    return EXIT_DIVERGED if result.status == "diverged" else 0


def dry_run(config: Any, args: argparse.Namespace) -> int:
    """Print the resolved run's estimate (tokens, FLOPs, time, energy, CO2e, cost); train and write nothing."""
    from wattscale.cli.common import store_exists
    from wattscale.config import run_id_for
    from wattscale.data import data_fingerprint, open_cached_data
    from wattscale.experiment.estimate import EstimateInputs, estimate_run
    from wattscale.footprint import resolve_footprint
    from wattscale.model import flops_per_token
    from wattscale.plan_tables import print_dry_run
    from wattscale.store import open_store

    footprint = resolve_footprint(args)
    data = open_cached_data(config.data, config.model.vocab_size, Path(args.cache_dir))
    run_id = run_id_for(config, data.cache_key if data else data_fingerprint(config.data, config.model.vocab_size))
    url = store_url(args)
    runs: list[dict] = []
    calibrations: list[dict] = []
    if store_exists(url):  # read only: a dry run never creates the store
        with open_store(url, create=False) as store:
            runs, calibrations = store.list_runs(), store.list_calibrations()
    estimate = estimate_run(config, run_id, EstimateInputs(runs, calibrations, footprint))
    if args.json:
        print(strict_json({"dry_run": True, "run_id": run_id, "store": url, "preset": config.model.name,
                           "tokens": config.train.tokens, "batch_size": config.train.batch_size,
                           "seq_len": config.seq_len, "device": config.train.device,
                           "precision": config.train.precision,
                           "flops_per_token": flops_per_token(config.model, config.seq_len),
                           "estimate": estimate.to_dict()}))
    else:
        print_dry_run(config, run_id, estimate)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train small models on the built-in corpus and show where the results are."""
    from wattscale.quickstart import run_quickstart

    out = Path(args.output)
    if not args.json:
        run_quickstart(out, show_progress=not args.no_progress)
        return 0
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON object
        result = run_quickstart(out, show_progress=not args.no_progress)
    print(strict_json({"output": str(out.resolve()), "store": str(result.store), "run_ids": list(result.run_ids),
                       "report": str(result.report.resolve())}))
    return 0


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [model], [train] and [data] tables (optional: [meter], and "
                   "[gpu] for a power limit or locked SM clock); flags override it")
    p.add_argument("--preset", help="model preset (see `wattscale presets`)")
    p.add_argument("--tokens", type=int, help="exact training-token budget")
    p.add_argument("--data-tokens", type=int,
                   help="train on the first N unique tokens of the training split (with --epochs: tokens = N x E)")
    p.add_argument("--epochs", type=float, help="passes over --data-tokens (tokens = data_tokens x epochs)")
    p.add_argument("--repeat", type=int, help="index telling apart otherwise identical runs (default 0)")
    p.add_argument("--seed", type=int, help="seed for initialisation and data order (default 0)")
    p.add_argument("--data", help="'synthetic' (default), a .txt/.jsonl/.parquet file or folder, or hf:NAME")
    p.add_argument("--val-data", help="separate validation file (default: a held-out split of --data)")
    p.add_argument("--text-field", help="text column for jsonl/parquet/hf sources (default 'text')")
    p.add_argument("--tokenizer", help="tokenizer.json to use (default: train byte-level BPE on the data)")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocabulary size")
    p.add_argument("--synthetic-mb", type=float, help="size of the generated corpus in MB (default 4)")
    p.add_argument("--batch-size", type=int, help="sequences per optimiser step (default 16)")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward pass (gradient accumulation)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the model's context length)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default cosine)")
    p.add_argument("--warmup-fraction", type=float, help="fraction of steps spent warming up (default 0.05)")
    p.add_argument("--eval-interval-tokens", type=int, help="evaluate every N tokens (default budget/10)")
    p.add_argument("--eval-tokens", type=int, help="validation tokens per evaluation (default 65536)")
    p.add_argument("--checkpoint-interval-tokens", type=int, help="checkpoint every N tokens (default: eval)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, help="auto (default: fp32 on CPU, bf16 autocast on CUDA), "
                   "fp32, bf16, or tf32 (fp32 weights with TF32 tensor-core matmuls; CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels only (torch.use_deterministic_algorithms; math attention on CUDA): "
                        "identical bits for identical seeds on the same GPU model and software, slower; "
                        "part of the run id")
    p.add_argument("--log-interval-steps", type=int,
                   help="steps between reads of the loss from the device (default 10): the progress line and the "
                        "divergence check lag by at most this many steps; the stored per-step rows are the same")
    p.add_argument("--run-root", help="folder for checkpoints and final weights (default wattscale_runs)")
    p.add_argument("--name", help="a free-text name stored with the run")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--parallel", choices=PARALLEL_MODES,
                   help="under torchrun with several processes: ddp (default) or fsdp (FSDP2 sharding)")
    add_list_argument(p, "--meters", metavar="KIND",
                      help="meter kinds to try: nvml rapl cpu-estimate (default) or none")
    p.add_argument("--sample-hz", type=float, help="power sampling rate, 1 to 1000 Hz (default 10)")
    p.add_argument("--idle-seconds", type=float, help="idle baseline measured before a run (default 3; 0 skips)")
    p.add_argument("--cpu-tdp-w-per-core", type=float, help="watts per busy core for the CPU estimate (default 10)")
    p.add_argument("--grid-gco2e-per-kwh", type=float, help="your grid's carbon intensity, for CO2e (no default)")
    p.add_argument("--track", action="append", metavar="SPEC",
                   help="also log energy per interval and phase, losses and totals at each evaluation to a tracker: "
                        "mlflow:URI (e.g. mlflow:sqlite:///mlflow.db) or tensorboard:DIR; repeatable; not part of "
                        "the run id")
    p.add_argument("--cache-dir", default=".wattscale_cache", help="token-shard cache (default .wattscale_cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    add_json_flag(p, "the run's outcome as one JSON object")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `train` and `quickstart`."""
    p = add_command(sub, "train", "train one model to an exact token budget, metering its energy",
                    ["wattscale train --preset llama-tiny --tokens 200000",
                     "wattscale train --config run.toml --seed 1 --meters nvml rapl --json",
                     "wattscale train --preset llama-tiny --tokens 200000 --track mlflow:sqlite:///mlflow.db "
                     "--track tensorboard:tb",
                     "wattscale train --preset llama-4m --tokens 2000000 --dry-run --carbon-intensity 350"],
                    parents=[common])
    add_train_flags(p)
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the settings and print the run's estimate (tokens, FLOPs, time, energy, CO2e, cost, "
                        "basis, uncertainty); train nothing and write nothing, not even the store")
    add_footprint_flags(p)
    p.set_defaults(func=cmd_train)

    p = add_command(sub, "quickstart", "train a small study on the built-in corpus and write its report",
                    ["wattscale quickstart", "wattscale quickstart -o demo --json"],
                    description="Train a small study on the built-in corpus and write its report:\n"
                                "llama-1m, 3 token budgets (8,192, 16,384 and 32,768 tokens) x 3 seeds = 9 runs,\n"
                                "about 1.5 minutes on 2 CPU cores. Run it again to resume; the results stay in "
                                "--output.")
    add_output_flag(p, "folder for the store, runs, cache and report (default quickstart)", default="quickstart",
                    old=("--out",))
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_json_flag(p, "where the results are as one JSON object (the progress goes to stderr)")
    p.set_defaults(func=cmd_quickstart)
