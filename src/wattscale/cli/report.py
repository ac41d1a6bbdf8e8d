"""`wattscale report` (the HTML report) and `wattscale watch` (the live view)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wattscale.cli.common import (
    add_command,
    add_file_flags,
    add_json_flag,
    add_output_flag,
    existing_store,
    experiment_and_store,
    footprint_settings,
    store_url,
)
from wattscale.footprint import add_footprint_flags
from wattscale.jsonout import strict_json


def cmd_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report and print its path and size."""
    from wattscale.report import write_report

    experiment, url = experiment_and_store(args)
    footprint = footprint_settings(args)  # a bad CSV or value is refused before anything is written
    result = write_report(existing_store(url), Path(args.output), experiment=experiment, run_id=args.run,
                          max_power_points=args.max_power_points, energy_basis=args.energy_basis,
                          footprint=footprint)
    summary = {"path": str(result.path.resolve()), "size_bytes": result.size_bytes, "runs": result.runs,
               "conditions": result.conditions, "seconds": round(result.seconds, 3),
               "pending_sections": list(result.pending_sections)}
    if args.json:
        print(strict_json(summary))
    else:
        print(f"wrote {summary['path']} ({result.size_bytes / 1e6:.1f} MB; {result.runs} runs, "
              f"{result.conditions} conditions, {result.seconds:.1f} s); open it in a browser")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Show running runs (progress, losses, power, energy) until nothing runs; --once prints one snapshot."""
    from rich.console import Console

    from wattscale.report.watch import render_snapshot, watch, watch_snapshot
    from wattscale.store import open_store

    if args.once:
        with open_store(existing_store(store_url(args)), create=False) as store:
            snapshot = watch_snapshot(store, args.experiment)
        if args.json:
            print(strict_json(snapshot))
        else:
            console = Console()
            # Piped (scripts, logs): print wide rather than wrap at 80 columns and elide run ids.
            (console if console.is_terminal else Console(width=200)).print(render_snapshot(snapshot))
        return 0
    try:
        watch(existing_store(store_url(args)), args.experiment, interval_s=args.interval_s, grace_s=args.grace_s)
    except KeyboardInterrupt:
        pass  # stopping the view stops nothing else: exit 0
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `report` and `watch`."""
    p = add_command(sub, "report", "write a self-contained HTML report (works offline)",
                    ["wattscale report -o report.html",
                     "wattscale report experiments/token_scale.toml --variant smoke -o smoke.html --json",
                     "wattscale report -o report.html --carbon-intensity grid.csv --price-per-kwh 0.3 --currency EUR"],
                    parents=[common])
    add_file_flags(p)
    p.add_argument("--experiment", help="one experiment's runs (default: the FILE's experiment, else every run)")
    p.add_argument("--run", metavar="RUN_ID", help="run whose power trace and interval energy are drawn "
                   "(default: the first finished run)")
    add_output_flag(p, "output file (default report.html)", default="report.html")
    p.add_argument("--energy-basis", choices=("train", "job"), default="train",
                   help="energy of the efficiency figures: train (default: the training phase) or job (the whole job)")
    p.add_argument("--max-power-points", type=int, default=2_000,
                   help="points per device in the power figure, thinned by min/max per bucket for display "
                        "only (default 2000)")
    add_footprint_flags(p)  # CO2e and cost per condition in the efficiency section, with their inputs
    add_json_flag(p, "what was written as one JSON object")
    p.set_defaults(func=cmd_report)

    p = add_command(sub, "watch", "live view of running runs: progress, losses, power, energy",
                    ["wattscale watch --experiment token-scale", "wattscale watch --once --json"],
                    description="Live view of the runs that are running in the store (read-only). The trainer "
                    "writes steps, evaluations and power samples in batches at evaluations and checkpoints, so "
                    "'current' power, losses and energy are the latest written, not this second's. Exits when "
                    "nothing has been running for --grace-s seconds, or on Ctrl-C (exit 0).", parents=[common])
    p.add_argument("--experiment", help="one experiment's runs, with runs done / planned")
    p.add_argument("--interval-s", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="exit after nothing has run for this long (covers the gap between runs of a sweep; "
                        "default 10)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit (for scripts)")
    add_json_flag(p, "with --once: the snapshot as one JSON object")
    p.set_defaults(func=cmd_watch)
