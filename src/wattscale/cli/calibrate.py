"""`wattscale calibrate`: measure this machine once (a few real training steps per preset and precision)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from wattscale.cli.common import add_command, add_json_flag, add_list_argument, store_url
from wattscale.errors import ConfigError
from wattscale.jsonout import strict_json

PRECISIONS = ("fp32", "bf16", "tf32")
SHOWN = ("preset", "precision", "batch_size", "seq_len", "tokens_per_second", "tokens_per_second_min",
         "tokens_per_second_max", "flops_per_second", "power_w", "energy_source", "eval_tokens_per_second",
         "checkpoint_seconds")


def _targets(args: argparse.Namespace) -> tuple[list[Any], str | None]:
    """What to calibrate, and the experiment file's store (None without a FILE)."""
    from wattscale.train.calibrate import DEFAULT_PRESETS, CalibrationTarget

    if args.device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise ConfigError(f"--device: {args.device!r} must be auto, cpu, cuda or cuda:N")
    if args.file is None:
        if args.variant is not None or args.set:
            raise ConfigError("--variant/--set: only with an experiment FILE, e.g. `wattscale calibrate study.toml "
                              "--variant smoke`")
        precisions = args.precision or _default_precisions(args.device or "auto")
        presets = args.preset or list(DEFAULT_PRESETS)
        return [CalibrationTarget(preset, precision, args.batch_size or 16, args.seq_len, args.device or "auto")
                for preset in presets for precision in precisions], None
    from wattscale.experiment import load_experiment, plan_experiment

    spec = load_experiment(Path(args.file), variant=args.variant, settings=args.set or ())
    plan = plan_experiment(spec, Path(args.cache_dir), prepare=False)
    seen: dict[tuple, Any] = {}
    for run in plan.runs:
        tc = run.config.train
        if args.preset and run.config.model.name not in args.preset:
            continue
        for precision in args.precision or [tc.precision]:
            target = CalibrationTarget(run.config.model.name, precision, args.batch_size or tc.batch_size,
                                       args.seq_len or run.config.seq_len, args.device or tc.device,
                                       None if args.batch_size else tc.micro_batch_size, args.threads or tc.threads)
            seen.setdefault((target.preset, target.precision, target.batch_size, target.seq_len), target)
    if not seen:
        raise ConfigError(f"--preset: none of {', '.join(args.preset)} is trained by {args.file}; leave --preset "
                          "out to calibrate the file's presets")
    return list(seen.values()), spec.design.store


def _default_precisions(device: str) -> list[str]:
    """fp32 on CPU (the trainer's default there); bf16 and fp32 on a CUDA device that supports bf16."""
    import torch

    from wattscale.hardware import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and torch.cuda.is_bf16_supported():
        return ["bf16", "fp32"]
    return ["fp32"]


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrate each target, store the rows, print them."""
    from wattscale.energy.meter import MeterConfig
    from wattscale.store import open_store
    from wattscale.train.calibrate import CalibrationSettings, calibrate_one, check_target

    targets, file_store = _targets(args)
    for target in targets:
        check_target(target)
    meter = MeterConfig(idle_seconds=0.0, sample_hz=args.sample_hz, cpu_tdp_w_per_core=args.cpu_tdp_w_per_core,
                        kinds=tuple(args.meters) if args.meters else MeterConfig().kinds)
    settings = CalibrationSettings(steps=args.steps, repeats=args.repeats, warmup_steps=args.warmup_steps,
                                   threads=args.threads, meter=meter)
    url = store_url(args, file_store)
    rows = []
    with open_store(url) as store:  # opened first: a store that cannot be written fails before minutes of work
        for target in targets:
            if not args.json:
                print(f"calibrating {target.preset} ({target.precision}, batch {target.batch_size}, seq_len "
                      f"{target.seq_len or 'context'}) ...", file=sys.stderr, flush=True)
            row = calibrate_one(target, settings)
            row["calibration_id"] = store.add_calibration(row)  # each one kept as soon as it is measured
            rows.append(row)
    if args.json:
        print(strict_json({"store": url, "calibrations": rows}))
        return 0
    from wattscale.tables import _cell  # the one number format of every table

    host = rows[0]
    print(f"{host['hostname']}: {host['device_name']} ({host['device_type']}, {host['threads']} threads), "
          f"torch {host['torch_version']}")
    for row in rows:
        spread = (row["tokens_per_second_max"] - row["tokens_per_second_min"]) / row["tokens_per_second"]
        power = "-" if row["power_w"] is None else f"{row['power_w']:.1f} W ({row['energy_source']})"
        print(f"  {row['preset']} {row['precision']} {row['batch_size']}x{row['seq_len']}: "
              f"{_cell(row['tokens_per_second'])} tokens/s (repeats span {spread:.0%}), "
              f"{row['flops_per_second'] / 1e9:,.1f} GFLOP/s, {power}, eval {_cell(row['eval_tokens_per_second'])} "
              f"tokens/s, checkpoint {_cell(row['checkpoint_seconds'])} s")
    print(f"stored {len(rows)} calibration(s) in {url}; `wattscale plan FILE` and `wattscale train ... --dry-run` "
          "now estimate from them")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `calibrate`."""
    p = add_command(
        sub, "calibrate", "measure this machine's training speed and power once, for estimates before running",
        ["wattscale calibrate", "wattscale calibrate experiments/token_scale_energy.toml --variant smoke",
         "wattscale calibrate --preset llama-tiny --steps 3 --repeats 2 --json",
         "wattscale calibrate --preset llama-4m llama-16m --precision fp32 bf16"],
        parents=[common],
        description="Measure this machine once: for each preset and precision, a few real optimiser steps of the\n"
                    "trainer (after untimed warm-up steps), repeated, measured with the Monitor: tokens/s and its\n"
                    "spread, FLOP/s, watts by component with their energy source, evaluation speed and one\n"
                    "checkpoint's write time. Stored in the store's calibrations table; `wattscale plan` and\n"
                    "`wattscale train --dry-run` estimate planned runs from it. With FILE: the presets, batch\n"
                    "sizes, sequence lengths, devices and precisions its runs use, and its store.")
    p.add_argument("file", nargs="?", metavar="FILE", help="an experiment TOML file: calibrate what its runs use")
    p.add_argument("--variant", help="with FILE: a [variants.NAME] table of the file, e.g. smoke")
    p.add_argument("--set", nargs="+", action="extend", metavar="SECTION.KEY=VALUE",
                   help="with FILE: override its settings, e.g. --set train.batch_size=8")
    add_list_argument(p, "--preset", metavar="PRESET",
                      help="presets to calibrate (default: FILE's presets, else llama-tiny llama-1m llama-4m)")
    add_list_argument(p, "--precision", metavar="PRECISION",
                      help="fp32, bf16 or tf32 (CUDA) (default: FILE's precision, else fp32 on CPU and bf16 + fp32 "
                           "on CUDA)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: FILE's, else 16)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: FILE's, else the preset's context)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: FILE's, else auto)")
    p.add_argument("--steps", type=int, default=5,
                   help="timed optimiser steps per repeat (default 5; a tiny preset's run on for at least 0.5 s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, for the spread (default 3, at least 2)")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, as the trainer)")
    add_list_argument(p, "--meters", metavar="KIND",
                      help="meter kinds to try: nvml rapl cpu-estimate (default) or none")
    p.add_argument("--sample-hz", type=float, default=10.0, help="power sampling rate, 1 to 1000 Hz (default 10)")
    p.add_argument("--cpu-tdp-w-per-core", type=float, default=10.0,
                   help="watts per busy core for the CPU estimate when no meter is readable (default 10)")
    p.add_argument("--cache-dir", default=".wattscale_cache", help="with FILE: token-shard cache (default "
                   ".wattscale_cache)")
    add_json_flag(p, "the stored calibrations as one JSON object")
    p.set_defaults(func=cmd_calibrate)
