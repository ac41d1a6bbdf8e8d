"""`wattscale runs`, `show`, `delete`, `energy`, `export` and `export-hf`: the runs in a store."""

from __future__ import annotations

import argparse
import dataclasses
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
    footprint_settings,
    positive_rate_hz,
    store_url,
)
from wattscale.errors import ConfigError
from wattscale.footprint import add_footprint_flags
from wattscale.jsonout import strict_json

# Named statically (the parser must not import SQLAlchemy); tests check them against store_schema.
RUN_STATUSES = ("pending", "running", "finished", "diverged", "failed", "interrupted")
EXPORT_TARGETS = ("table", "mlflow", "tensorboard")
EXPORT_TABLES = ("runs", "evaluations", "train_steps", "power_samples", "energy_measurements", "experiments",
                 "experiment_runs", "calibrations")


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs (optionally one experiment's, with some statuses, the last N) as a table or JSON."""
    from wattscale.store import open_store

    experiment, url = experiment_and_store(args)
    settings = footprint_settings(args)  # before the store: a bad CSV or flag is refused first
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
    from wattscale.footprint import run_footprint

    for run in runs:  # the job's energy (energy_j) as facility energy, CO2e and cost, with the inputs
        found = run_footprint(run, settings)
        run["footprint"] = found.as_dict() if found else None
    if args.json:
        print(strict_json(runs))
        return 0
    from wattscale.tables import print_runs_table

    print_runs_table(runs, settings)
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
    """Print one run's record, its evaluations, its energy by phase, and its carbon and cost."""
    from wattscale.footprint import run_footprint
    from wattscale.store import open_store

    settings = footprint_settings(args)  # before the store: a bad CSV or flag is refused first
    with open_store(existing_store(store_url(args)), create=False) as store:
        details = run_details(store, args.run_id)
    found = run_footprint(details["run"], settings)
    details["footprint"] = found.as_dict() if found else None
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
    if found is not None:
        co2e = "-" if found.co2e_g is None else f"{found.co2e_g:.3g} gCO2e"
        cost = "-" if found.cost is None else f"{found.cost:.3g} {found.currency}"
        print(f"footprint: {found.facility_energy_j:.1f} J facility ({found.energy_source or 'unknown'} x PUE "
              f"{found.pue:.2f}), {co2e}, {cost}")
        print(f"  inputs: {found.inputs}; carbon basis: {found.carbon_basis or 'no carbon intensity given'}")
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
    """Write a store table as CSV or Parquet, or log runs to MLflow or TensorBoard (--to)."""
    if args.to != "table":
        return _export_to_tracker(args)
    from wattscale.store import open_store

    if len(args.run_ids) > 1 or args.experiment is not None:
        raise ConfigError("RUN_ID: --to table writes a whole table (give -o FILE); run ids and --experiment "
                          "choose runs for --to mlflow or --to tensorboard")
    if args.tracking_uri is not None:
        raise ConfigError("--tracking-uri: only for --to mlflow; add --to mlflow, or drop it")
    args.path = args.run_ids[0] if args.run_ids else None  # the old positional spelling of -o
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


def _export_to_tracker(args: argparse.Namespace) -> int:
    """`export --to mlflow|tensorboard`: replay the chosen runs, each into a tracker run of its own."""
    if args.to == "mlflow":
        if not args.tracking_uri:
            raise ConfigError("--tracking-uri: missing; --to mlflow needs one, e.g. --tracking-uri "
                              "sqlite:///mlflow.db (or a folder such as ./mlruns)")
        if args.output:
            raise ConfigError("-o/--output: --to mlflow writes to --tracking-uri; drop -o")
        spec = f"mlflow:{args.tracking_uri}"
    else:
        if not args.output:
            raise ConfigError("-o/--output: missing; --to tensorboard needs the folder for the event files, e.g. -o tb")
        if args.tracking_uri:
            raise ConfigError("--tracking-uri: only for --to mlflow; --to tensorboard writes to -o DIR")
        spec = f"tensorboard:{args.output}"
    if args.table != "runs" or args.format:
        raise ConfigError(f"--table/--format: only for --to table (a CSV or Parquet file), not --to {args.to}")
    from wattscale.store import open_store
    from wattscale.trackers import export_runs, parse_spec

    parsed = parse_spec(spec, "--to")
    if args.to == "mlflow":
        parsed = dataclasses.replace(parsed, experiment=args.mlflow_experiment or args.experiment or "wattscale")
    with open_store(existing_store(store_url(args)), create=False) as store:
        from wattscale.trackers.replay import select_runs

        run_ids = select_runs(store, args.run_ids, args.experiment)
        summaries = export_runs(store, run_ids, parsed, max_points=args.max_points)
    if args.json:
        print(strict_json({"to": args.to, "target": parsed.target, "runs": [s.to_dict() for s in summaries]}))
        return 0
    for summary in summaries:
        where = summary.tracker.get("run_id") or summary.tracker.get("log_dir")
        print(f"{summary.run_id} ({summary.status}): {summary.params} params, {summary.metric_values} metric values "
              f"({summary.intervals} intervals, {summary.evaluations} evaluations, {summary.power_points} power "
              f"points) -> {args.to} {where}")
    print(f"logged {len(summaries)} run(s) to {args.to} {parsed.target}")
    return 0


def _max_points(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 (points per curve)")
    return value


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
    """A run's energy per device with its source, its facility energy, CO2e and cost, and the energy at lower
    sampling rates."""
    from wattscale.energy.report import DEFAULT_RESAMPLE_HZ, energy_report
    from wattscale.store import open_store

    settings = footprint_settings(args)
    with open_store(existing_store(store_url(args)), create=False) as store:
        rates = tuple(args.rates) if args.rates else DEFAULT_RESAMPLE_HZ
        report = energy_report(store, args.run_id, resample_hz=rates, footprint=settings)
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
                     "wattscale runs --status failed interrupted --limit 5 --json",
                     "wattscale runs --carbon-intensity grid.csv --price-per-kwh 0.30 --currency EUR --pue 1.2"],
                    parents=[common])
    add_file_flags(p)
    p.add_argument("--experiment", help="only this experiment's runs (default: the FILE's experiment, else all)")
    p.add_argument("--status", nargs="+", action="extend", choices=RUN_STATUSES, metavar="STATUS",
                   help=f"only runs with these statuses: {', '.join(RUN_STATUSES)}")
    p.add_argument("--limit", type=_non_negative_int, metavar="N", help="only the last N runs")
    add_footprint_flags(p)
    add_json_flag(p, "a JSON array of run records (each with a footprint object: facility energy, CO2e, cost "
                     "and their inputs)")
    p.set_defaults(func=cmd_runs)

    p = add_command(sub, "show", "one run's record, evaluations and energy by phase",
                    ["wattscale show 3f2a9c1d0b7e4a55", "wattscale show 3f2a9c1d0b7e4a55 --json"], parents=[common])
    p.add_argument("run_id", metavar="RUN_ID", help="a run's id (see `wattscale runs`)")
    add_footprint_flags(p)
    add_json_flag(p, "the run as one JSON object (with a footprint object: facility energy, CO2e, cost, inputs)")
    p.set_defaults(func=cmd_show)

    p = add_command(sub, "delete", "delete runs and all their rows from the store (asks first)",
                    ["wattscale delete 3f2a9c1d0b7e4a55", "wattscale delete RUN_A RUN_B --yes --json"],
                    parents=[common])
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="the runs to delete (see `wattscale runs`)")
    p.add_argument("--yes", action="store_true", help="do not ask (required when not on a terminal)")
    add_json_flag(p, "what was deleted as one JSON object")
    p.set_defaults(func=cmd_delete)

    p = add_command(sub, "energy", "a run's energy, power, CO2e, cost and sampling-rate analysis",
                    ["wattscale energy 3f2a9c1d0b7e4a55", "wattscale energy 3f2a9c1d0b7e4a55 --rates 100 10 1 --json",
                     "wattscale energy 3f2a9c1d0b7e4a55 --carbon-intensity 350 --price-per-kwh 0.3 --currency EUR"],
                    parents=[common])
    p.add_argument("run_id", metavar="RUN_ID", help="a run's id (see `wattscale runs`)")
    add_footprint_flags(p)  # without a carbon intensity: the run's own meter.grid_gco2e_per_kwh, if it had one
    # The old spelling of --carbon-intensity (a constant only), kept for one release.
    p.add_argument("--grid-gco2e-per-kwh", dest="carbon_intensity", type=float, help=argparse.SUPPRESS)
    add_list_argument(p, "--rates", item=positive_rate_hz, metavar="HZ",
                      help="sampling rates in Hz to re-compute the energy at (default 1000 100 10 1 0.1)")
    add_json_flag(p, "the report as one JSON object")
    p.set_defaults(func=cmd_energy)

    p = add_command(sub, "export", "write a store table as CSV or Parquet, or log runs to MLflow or TensorBoard",
                    ["wattscale export -o runs.csv", "wattscale export --table evaluations -o evals.parquet",
                     "wattscale export --to mlflow --tracking-uri sqlite:///mlflow.db",
                     "wattscale export --to tensorboard -o tb 3f2a9c1d0b7e4a55 --json"],
                    parents=[common])
    p.add_argument("--to", choices=EXPORT_TARGETS, default="table",
                   help="table (default): one store table as a file; mlflow or tensorboard: each chosen run's "
                        "parameters, energy per interval and phase, losses, sampled power and totals")
    add_output_flag(p, "output file (.csv or .parquet); with --to tensorboard, the folder for the event files")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID",
                   help="with --to mlflow/tensorboard: the runs to log (default: --experiment's, else every run)")
    p.add_argument("--table", default="runs", choices=EXPORT_TABLES, help="the table to write (default runs)")
    p.add_argument("--format", choices=("csv", "parquet"), help="file format (default: from the file suffix)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="with --to mlflow: sqlite:///FILE.db, a folder (MLflow's file store) or http(s)://HOST:PORT "
                        "of your server; required (no default)")
    p.add_argument("--experiment", help="with --to mlflow/tensorboard: log this experiment's runs")
    p.add_argument("--mlflow-experiment", metavar="NAME",
                   help="with --to mlflow: the MLflow experiment (default: --experiment, else wattscale)")
    p.add_argument("--max-points", type=_max_points, default=1000, metavar="N",
                   help="with --to mlflow/tensorboard: at most N points per sampled-power and training-loss curve "
                        "(default 1000)")
    add_json_flag(p, "what was written as one JSON object")
    p.set_defaults(func=cmd_export)

    p = add_command(sub, "export-hf", "write a run as a Hugging Face Llama checkpoint",
                    ["wattscale export-hf 3f2a9c1d0b7e4a55 -o hf_model"], parents=[common])
    p.add_argument("run_id", metavar="RUN_ID", help="a finished run's id (see `wattscale runs`)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    add_json_flag(p, "what was written as one JSON object")
    p.set_defaults(func=cmd_export_hf)
