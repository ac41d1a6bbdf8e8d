"""`wattscale runs`, `show`, `delete`, `energy`, `export` and `export-hf`: the runs in a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from wattscale.cli.common import (
    add_command,
    add_file_flags,
    add_json_flag,
    add_list_argument,
    add_output_flag,
    existing_store,
    experiment_and_store,
    positive_rate_hz,
    store_url,
)
from wattscale.errors import ConfigError
from wattscale.jsonout import strict_json

# Named statically (the parser must not import SQLAlchemy); tests check them against store_schema.
RUN_STATUSES = ("pending", "running", "finished", "diverged", "failed", "interrupted")
EXPORT_TABLES = ("runs", "evaluations", "train_steps", "power_samples", "energy_measurements", "experiments",
                 "experiment_runs", "calibrations")


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs (optionally one experiment's, with some statuses, the last N) as a table or JSON."""
    from wattscale.store import open_store

    experiment, url = experiment_and_store(args)
    with open_store(existing_store(url), create=False) as store:
        runs = store.list_runs(experiment=experiment)
        if experiment is not None and not runs and store.get_experiment(experiment) is None:
            known = ", ".join(repr(e["name"]) for e in store.list_experiments()) or "none"
            raise ConfigError(f"--experiment: no experiment {experiment!r} in {store.display_url} "
                              f"(experiments there: {known}); see `wattscale experiments`")
    if args.status:
        runs = [r for r in runs if r["status"] in args.status]
    if args.limit is not None:
        runs = runs[-args.limit:] if args.limit else []
    if args.json:
        print(strict_json(runs))
        return 0
    from wattscale.tables import print_runs_table

    print_runs_table(runs)
    return 0


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a count of runs >= 0")
    return value


def run_details(store: Any, run_id: str) -> dict[str, Any]:
    """One run's record, its evaluations, and its energy by phase (scope 'phase': joules and seconds per phase)."""
    record = store.get_run(run_id)
    if record is None:
        raise ConfigError(f"RUN_ID: no run {run_id!r} in {store.display_url}; see `wattscale runs`")
    phases: dict[str, dict[str, float]] = {}
    for row in store.energy_measurements(run_id):
        if row["scope"] != "phase":
            continue
        phase = phases.setdefault(row["phase"] or "-", {"energy_j": 0.0, "phase_seconds": 0.0})
        phase["energy_j"] += row["energy_j"]
        phase["phase_seconds"] = max(phase["phase_seconds"], row["phase_seconds"] or 0.0)
    return {"run": record, "evaluations": store.evaluations(run_id),
            "energy_by_phase": [{"phase": name, **values} for name, values in phases.items()]}


def cmd_show(args: argparse.Namespace) -> int:
    """Print one run's record, its evaluations and its energy by phase."""
    from wattscale.store import open_store

    with open_store(existing_store(store_url(args)), create=False) as store:
        details = run_details(store, args.run_id)
    if args.json:
        print(strict_json(details))
        return 0
    run = details["run"]
    print(f"run {run['run_id']}: {run['status']}")
    for key, value in run.items():
        if key not in ("run_id", "status", "config_json") and value is not None:
            print(f"  {key}: {value}")
    print(f"evaluations ({len(details['evaluations'])}):")
    for row in details["evaluations"]:
        print(f"  step {row['step']}  tokens {row['tokens_seen']:,}  val_loss {row['val_loss']}")
    print("energy by phase:" if details["energy_by_phase"] else "energy by phase: none recorded")
    for row in details["energy_by_phase"]:
        print(f"  {row['phase']}: {row['energy_j']:.1f} J over {row['phase_seconds']:.1f} s")
    return 0


def _confirm(run_ids: list[str]) -> bool:
    """Ask on a terminal; without one, refuse (the caller passes --yes in scripts)."""
    if not sys.stdin.isatty():
        raise ConfigError("delete: not a terminal, so no one can confirm; pass --yes to delete "
                          f"{len(run_ids)} run(s) without asking")
    answer = input(f"delete {len(run_ids)} run(s) ({', '.join(run_ids)}) and all their rows from the store? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete runs from every store table (after a confirmation); their run folders stay."""
    from wattscale.store import open_store

    with open_store(existing_store(store_url(args)), create=False) as store:
        records = []
        for run_id in dict.fromkeys(args.run_ids):
            record = store.get_run(run_id)
            if record is None:
                raise ConfigError(f"RUN_ID: no run {run_id!r} in {store.display_url}; see `wattscale runs` "
                                  "(nothing deleted)")
            records.append(record)
        ids = [r["run_id"] for r in records]
        if not args.yes and not _confirm(ids):
            print("nothing deleted", file=sys.stderr)
            return 0
        rows = store.delete_runs(ids)
    folders = {r["run_id"]: r.get("run_dir") for r in records}
    if args.json:
        print(strict_json({"deleted": ids, "rows": rows, "run_dirs": folders}))
        return 0
    print(f"deleted {len(ids)} run(s) and {sum(rows.values())} rows from the store")
    for run_id, folder in folders.items():
        if folder:
            print(f"  {run_id}: its run folder stays at {folder} (remove it yourself if you no longer need it)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a store table as CSV or Parquet."""
    from wattscale.store import open_store

    path = args.output or args.path
    if path is None:
        raise ConfigError("-o/--output: missing; give the file to write, e.g. -o runs.csv")
    if args.output and args.path and args.output != args.path:
        raise ConfigError(f"-o/--output: also given as a path ({args.path}); give the output file once, with -o")
    with open_store(existing_store(store_url(args)), create=False) as store:
        n = store.export(Path(path), table=args.table, fmt=args.format)
    if args.json:
        print(strict_json({"path": str(Path(path).resolve()), "table": args.table, "rows": n}))
    else:
        print(f"wrote {n} {args.table} rows to {path}")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    """Write a finished run's weights as a Hugging Face LlamaForCausalLM checkpoint."""
    from wattscale.export import export_run_to_hf

    out = export_run_to_hf(existing_store(store_url(args)), args.run_id, Path(args.output))
    if args.json:
        print(strict_json({"run_id": args.run_id, "path": str(Path(out).resolve())}))
    else:
        print(f"wrote Hugging Face checkpoint to {out} (load with LlamaForCausalLM.from_pretrained)")
    return 0


def cmd_energy(args: argparse.Namespace) -> int:
    """A run's energy per device with its source, CO2e, and the energy at lower sampling rates."""
    from wattscale.energy.report import energy_report
    from wattscale.store import open_store

    with open_store(existing_store(store_url(args)), create=False) as store:
        rates = [tuple(args.rates)] if args.rates else []
        report = energy_report(store, args.run_id, args.grid_gco2e_per_kwh, *rates)
    if args.json:
        print(strict_json(report.to_dict()))
        return 0
    from wattscale.tables import print_energy_report

    print_energy_report(report)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `runs`, `show`, `delete`, `energy`, `export` and `export-hf`."""
    p = add_command(sub, "runs", "list the runs in the store",
                    ["wattscale runs", "wattscale runs experiments/token_scale.toml --variant smoke",
                     "wattscale runs --status failed interrupted --limit 5 --json"], parents=[common])
    add_file_flags(p)
    p.add_argument("--experiment", help="only this experiment's runs (default: the FILE's experiment, else all)")
    p.add_argument("--status", nargs="+", action="extend", choices=RUN_STATUSES, metavar="STATUS",
                   help=f"only runs with these statuses: {', '.join(RUN_STATUSES)}")
    p.add_argument("--limit", type=_non_negative_int, metavar="N", help="only the last N runs")
    add_json_flag(p, "a JSON array of run records")
    p.set_defaults(func=cmd_runs)

    p = add_command(sub, "show", "one run's record, evaluations and energy by phase",
                    ["wattscale show 3f2a9c1d0b7e4a55", "wattscale show 3f2a9c1d0b7e4a55 --json"], parents=[common])
    p.add_argument("run_id", metavar="RUN_ID", help="a run's id (see `wattscale runs`)")
    add_json_flag(p, "the run as one JSON object")
    p.set_defaults(func=cmd_show)

    p = add_command(sub, "delete", "delete runs and all their rows from the store (asks first)",
                    ["wattscale delete 3f2a9c1d0b7e4a55", "wattscale delete RUN_A RUN_B --yes --json"],
                    parents=[common])
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="the runs to delete (see `wattscale runs`)")
    p.add_argument("--yes", action="store_true", help="do not ask (required when not on a terminal)")
    add_json_flag(p, "what was deleted as one JSON object")
    p.set_defaults(func=cmd_delete)

    p = add_command(sub, "energy", "a run's energy, power, CO2e and sampling-rate analysis",
                    ["wattscale energy 3f2a9c1d0b7e4a55", "wattscale energy 3f2a9c1d0b7e4a55 --rates 100 10 1 --json"],
                    parents=[common])
    p.add_argument("run_id", metavar="RUN_ID", help="a run's id (see `wattscale runs`)")
    p.add_argument("--grid-gco2e-per-kwh", type=float, help="grid carbon intensity for CO2e (default: the run's)")
    add_list_argument(p, "--rates", item=positive_rate_hz, metavar="HZ",
                      help="sampling rates in Hz to re-compute the energy at (default 1000 100 10 1 0.1)")
    add_json_flag(p, "the report as one JSON object")
    p.set_defaults(func=cmd_energy)

    p = add_command(sub, "export", "write a store table as CSV or Parquet",
                    ["wattscale export -o runs.csv", "wattscale export --table evaluations -o evals.parquet"],
                    parents=[common])
    add_output_flag(p, "output file (.csv or .parquet)")
    p.add_argument("path", nargs="?", help=argparse.SUPPRESS)  # the old positional spelling, for one release
    p.add_argument("--table", default="runs", choices=EXPORT_TABLES, help="the table to write (default runs)")
    p.add_argument("--format", choices=("csv", "parquet"), help="file format (default: from the file suffix)")
    add_json_flag(p, "what was written as one JSON object")
    p.set_defaults(func=cmd_export)

    p = add_command(sub, "export-hf", "write a run as a Hugging Face Llama checkpoint",
                    ["wattscale export-hf 3f2a9c1d0b7e4a55 -o hf_model"], parents=[common])
    p.add_argument("run_id", metavar="RUN_ID", help="a finished run's id (see `wattscale runs`)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    add_json_flag(p, "what was written as one JSON object")
    p.set_defaults(func=cmd_export_hf)
