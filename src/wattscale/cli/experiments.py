"""`wattscale plan`, `run` and `experiments`: experiment files, their runs, and the experiments in a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from wattscale.cli.common import (
    EXIT_RUNS_FAILED,
    add_command,
    add_json_flag,
    existing_store,
    store_exists,
    store_url,
)
from wattscale.errors import WattscaleError
from wattscale.footprint import add_footprint_flags
from wattscale.jsonout import strict_json


def _load_plan(args: argparse.Namespace, prepare: bool = True):  # -> ExperimentPlan
    from wattscale.experiment import load_experiment, plan_experiment

    spec = load_experiment(Path(args.file), variant=args.variant, settings=args.set or ())
    return plan_experiment(spec, Path(args.cache_dir), prepare=prepare)


def _experiment_store(args: argparse.Namespace, plan) -> str:
    """--store beats $WATTSCALE_STORE beats the file's experiment.store beats ./wattscale.db."""
    return store_url(args, plan.spec.design.store)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print an experiment's runs in order, total tokens, and time/energy/CO2e/cost estimates with their basis."""
    from wattscale.experiment.estimate import EstimateInputs, estimate_plan
    from wattscale.footprint import resolve_footprint
    from wattscale.plan_tables import plan_summary, print_plan
    from wattscale.store import open_store

    plan = _load_plan(args, prepare=False)
    url = _experiment_store(args, plan)
    # The experiment file's [footprint] table (with any --set footprint.*) comes after flags and environment.
    footprint = resolve_footprint(args, file_settings=plan.spec.footprint)
    stored: list[dict] = []
    calibrations: list[dict] = []
    if store_exists(url):
        with open_store(url, create=False) as store:
            stored = store.list_runs()
            calibrations = store.list_calibrations()
    estimates = estimate_plan(plan, EstimateInputs(stored, calibrations, footprint))
    if args.json:
        print(strict_json(plan_summary(plan, estimates, url, footprint)))
    else:
        print_plan(plan, estimates, url, footprint)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run every planned run of an experiment that has not ended (resumable; locally or on Ray)."""
    plan = _load_plan(args)
    url = _experiment_store(args, plan)
    if args.executor == "ray":
        from wattscale.experiment.ray_executor import run_ray

        result = run_ray(plan, url, Path(args.cache_dir), address=args.address, cpus_per_run=args.cpus_per_run,
                         gpus_per_run=args.gpus_per_run, show_progress=not args.no_progress)
    else:
        from wattscale.experiment.local import run_local

        result = run_local(plan, url, Path(args.cache_dir), show_progress=not args.no_progress)
    if args.json:
        print(strict_json({"experiment": result.experiment, "store": url, "planned": result.planned,
                           "finished": result.finished, "diverged": result.diverged,
                           "already_done": result.already_done, "complete": result.complete,
                           "failed": [{"run_id": run_id, "message": message} for run_id, message in result.failed]}))
    else:
        print(f"experiment {result.experiment}: {result.finished} finished, {result.diverged} diverged, "
              f"{len(result.failed)} failed of {result.planned} runs ({result.already_done} were already done)")
        print(f"  store: {url}   analyze: wattscale --store {url} analyze --experiment {result.experiment}")
    for run_id, message in result.failed:
        print(f"  failed: {run_id}: {message}", file=sys.stderr)
    return 0 if result.complete else EXIT_RUNS_FAILED


def cmd_experiments(args: argparse.Namespace) -> int:
    """List the experiments in the store (or forget one's plan)."""
    from wattscale.store import open_store

    with open_store(existing_store(store_url(args)), create=False) as store:
        if args.delete:
            if not store.delete_experiment(args.delete):
                raise WattscaleError(f"--delete: no experiment {args.delete!r} in the store; "
                                     "see `wattscale experiments`")
            if args.json:
                print(strict_json({"deleted_experiment": args.delete}))
            else:
                print(f"forgot the plan of experiment {args.delete!r} (its runs stay in the store)")
            return 0
        rows = store.list_experiments()
    if args.json:
        print(strict_json(rows))
    else:
        for row in rows:
            print(f"{row['name']}: {row['finished_runs']}/{row['planned_runs']} runs finished, "
                  f"order {row['order_design']} (seed {row['order_seed']}), created {row['created_at']}")
    return 0


def _add_experiment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="experiment TOML file (see experiments/)")
    p.add_argument("--variant", help="a [variants.NAME] table of the file to merge in, e.g. smoke")
    p.add_argument("--set", nargs="+", action="extend", metavar="SECTION.KEY=VALUE",
                   help="override settings, e.g. --set train.lr=1e-3 train.seed=2 (repeatable)")
    p.add_argument("--cache-dir", default=".wattscale_cache", help="token-shard cache (default .wattscale_cache)")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `plan`, `run` and `experiments`."""
    p = add_command(sub, "plan", "print an experiment's runs and estimated time, energy, CO2e and cost (runs nothing)",
                    ["wattscale plan experiments/token_scale.toml --variant smoke",
                     "wattscale plan study.toml --set train.lr=1e-3 --json"], parents=[common])
    _add_experiment_flags(p)
    add_footprint_flags(p)
    add_json_flag(p, "the plan as one JSON object")
    p.set_defaults(func=cmd_plan)

    p = add_command(sub, "run", "run every planned run of an experiment file (resumable)",
                    ["wattscale run experiments/token_scale.toml --variant smoke",
                     "wattscale run study.toml --executor ray --gpus-per-run 1"], parents=[common])
    _add_experiment_flags(p)
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (default: one run after another here) or ray (runs as Ray tasks)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs a Ray task reserves (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs a Ray task reserves (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_json_flag(p, "the outcome as one JSON object")
    p.set_defaults(func=cmd_run)

    p = add_command(sub, "experiments", "list the experiments in the store",
                    ["wattscale experiments", "wattscale experiments --delete token-scale-smoke"],
                    parents=[common])
    p.add_argument("--delete", metavar="NAME", help="forget an experiment's plan (its runs stay)")
    add_json_flag(p, "a JSON array of experiments")
    p.set_defaults(func=cmd_experiments)
