"""The `wattscale` command. Each sub-command parses, calls one typed function, prints.

Exit codes: 0 success; 2 bad input or a broken environment (one-line message naming the field or
file and the fix; nothing in the store changes); 3 the run diverged (recorded in the store as
`diverged`); 4 a sweep ended with failed runs (re-run to retry them); 130 interrupted (resume by
re-running the same command); 1 an internal error (a bug: the message says how to report it, and
WATTSCALE_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from wattscale.errors import WattscaleError
from wattscale.jsonout import strict_json

DEFAULT_STORE = "./wattscale.db"
EXIT_DIVERGED = 3
EXIT_RUNS_FAILED = 4
EXIT_INTERNAL_ERROR = 1
MAX_INT64 = 2**63 - 1
# OS errors that are the environment's, not wattscale's: reported in one line with the file, exit 2.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                                 errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE,
                                 errno.EIO})
# Modules that add sub-commands: each has add_commands(sub, common).
_COMMAND_MODULES: tuple[str, ...] = ("wattscale.cli_analysis", "wattscale.cli_report", "wattscale.cli_laws")


class WattscaleArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, and int/float flags that refuse what no setting can hold.

    Every `type=int` flag refuses integers beyond 64 bits (the store's BIGINT) and every `type=float` flag
    refuses nan and inf, by registering checked converters under the built-in types' names.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", int, _int64)
        self.register("type", float, _finite_float)

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line naming the flag, and where the full usage is, instead of the whole usage text."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int64(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_INT64:
        raise argparse.ArgumentTypeError(f"{text} does not fit in 64 bits (at most 2**63 - 1)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def store_url(args: argparse.Namespace) -> str:
    """--store beats $WATTSCALE_STORE beats ./wattscale.db."""
    given = getattr(args, "store", None)
    if given is not None and not given.strip():
        raise WattscaleError("--store: empty; give a SQLite path or a SQLAlchemy URL (or leave --store out for "
                             f"$WATTSCALE_STORE or {DEFAULT_STORE})")
    return given or os.environ.get("WATTSCALE_STORE") or DEFAULT_STORE


def sampling_rates_hz(text: str) -> tuple[float, ...]:
    """--rates: comma-separated positive sampling rates in Hz."""
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a number; give rates in Hz, "
                                             "e.g. 1000,100,10") from None
        if not (math.isfinite(rate) and rate > 0):
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a positive sampling rate in Hz")
        rates.append(rate)
    return tuple(rates)


def _train_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """CLI flags as config tables; None means 'not given' and leaves the file's value alone."""
    return {
        "model": {"preset": args.preset, "vocab_size": args.vocab_size},
        "train": {k: getattr(args, k) for k in (
            "tokens", "data_tokens", "epochs", "repeat", "seed", "batch_size", "micro_batch_size", "seq_len",
            "lr", "schedule",
            "warmup_fraction", "eval_interval_tokens", "eval_tokens", "checkpoint_interval_tokens",
            "device", "precision", "run_root", "name", "threads", "parallel")} | {"compile": args.compile or None},
        "data": {"source": args.data, "tokenizer": args.tokenizer, "synthetic_mb": args.synthetic_mb,
                 "val_source": args.val_data, "text_field": args.text_field},
        "meter": {"sample_hz": args.sample_hz, "cpu_tdp_w_per_core": args.cpu_tdp_w_per_core,
                  "idle_seconds": args.idle_seconds, "grid_gco2e_per_kwh": args.grid_gco2e_per_kwh,
                  "kinds": tuple(k.strip() for k in args.meters.split(",")) if args.meters else None},
    }


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) one run and print its outcome."""
    from wattscale.config import build_run_config, load_toml
    from wattscale.train import train

    tables = load_toml(Path(args.config)) if args.config else None
    config = build_run_config(tables, _train_overrides(args))
    result = train(config, store_url(args), show_progress=not args.no_progress,
                   cache_dir=Path(args.cache_dir))
    if os.environ.get("RANK", "0") != "0":
        pass  # under torchrun every rank gets the same result; rank 0 prints it
    elif args.json:
        print(strict_json({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}))
    elif result.already_done:
        print(f"run {result.run_id} already {result.status}: final val_loss {_fmt(result.final_val_loss)}")
    else:
        print(f"run {result.run_id} {result.status}: {result.tokens_seen:,} tokens in {result.steps} steps, "
              f"{result.wall_seconds:.1f} s, final val_loss {_fmt(result.final_val_loss)}, "
              f"val_ppl {_fmt(result.final_val_ppl)}")
        print(f"  store: {store_url(args)}   run dir: {result.run_dir}")
    return EXIT_DIVERGED if result.status == "diverged" else 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs as a table or JSON."""
    from wattscale.store import open_store

    with open_store(store_url(args)) as store:
        runs = store.list_runs(experiment=args.experiment)
    if args.json:
        print(strict_json(runs))
        return 0
    from wattscale.tables import print_runs_table

    print_runs_table(runs)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a store table as CSV or Parquet."""
    from wattscale.store import open_store

    with open_store(store_url(args)) as store:
        n = store.export(Path(args.path), table=args.table, fmt=args.format)
    print(f"wrote {n} {args.table} rows to {args.path}")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    """Write a finished run's weights as a Hugging Face LlamaForCausalLM checkpoint."""
    from wattscale.export import export_run_to_hf

    out = export_run_to_hf(store_url(args), args.run_id, Path(args.output))
    print(f"wrote Hugging Face checkpoint to {out} (load with LlamaForCausalLM.from_pretrained)")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    """List model presets with their parameter counts."""
    from wattscale.tables import print_presets_table

    print_presets_table(as_json=args.json)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train small models on the built-in corpus and show where the results are."""
    from wattscale.quickstart import run_quickstart

    run_quickstart(Path(args.out), show_progress=not args.no_progress)
    return 0


def cmd_meters(args: argparse.Namespace) -> int:
    """List the power meters found on this machine, and why the others are not used."""
    from wattscale.energy import MeterConfig, close_meters, discover_meters

    config = MeterConfig(cpu_tdp_w_per_core=args.cpu_tdp_w_per_core, powercap_root=args.powercap_root)
    meters, reasons = discover_meters(config)
    try:
        found = [{"name": m.name, "energy_source": m.energy_source, "devices": list(m.devices),
                  "details": m.describe()} for m in meters]
    finally:
        close_meters(meters)
    if args.json:
        print(strict_json({"meters": found, "not_used": reasons}))
        return 0
    for meter in found:
        print(f"{meter['name']}: {', '.join(meter['devices'])} (energy source: {meter['energy_source']})")
        for key, value in meter["details"].items():
            print(f"    {key}: {value}")
    for reason in reasons:
        print(f"not used: {reason}")
    return 0


def cmd_energy(args: argparse.Namespace) -> int:
    """A run's energy per device with its source, CO2e, and the energy at lower sampling rates."""
    from wattscale.energy.report import energy_report
    from wattscale.store import open_store

    with open_store(store_url(args), create=False) as store:
        report = energy_report(store, args.run_id, args.grid_gco2e_per_kwh, *([args.rates] if args.rates else []))
    if args.json:
        print(strict_json(report.to_dict()))
        return 0
    from wattscale.tables import print_energy_report

    print_energy_report(report)
    return 0


def _load_plan(args: argparse.Namespace, prepare: bool = True):  # -> ExperimentPlan
    from wattscale.experiment import load_experiment, plan_experiment

    spec = load_experiment(Path(args.file), variant=args.variant, settings=args.set or ())
    return plan_experiment(spec, Path(args.cache_dir), prepare=prepare)


def _experiment_store(args: argparse.Namespace, plan) -> str:
    """--store beats the file's experiment.store beats $WATTSCALE_STORE beats ./wattscale.db."""
    return getattr(args, "store", None) or plan.spec.design.store or store_url(args)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print an experiment's runs in order, total tokens, and time/energy estimates from the store."""
    from wattscale.experiment.estimate import estimate_plan
    from wattscale.store import open_store

    plan = _load_plan(args, prepare=False)
    url = _experiment_store(args, plan)
    stored: list[dict] = []
    if _store_exists(url):
        with open_store(url, create=False) as store:
            stored = store.list_runs()
    estimates = estimate_plan(plan, stored)
    from wattscale.tables import plan_summary, print_plan

    if args.json:
        print(strict_json(plan_summary(plan, estimates, url)))
    else:
        print_plan(plan, estimates, url)
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
    print(f"experiment {result.experiment}: {result.finished} finished, {result.diverged} diverged, "
          f"{len(result.failed)} failed of {result.planned} runs ({result.already_done} were already done)")
    print(f"  store: {url}   analyse: wattscale --store {url} runs --experiment {result.experiment}")
    for run_id, message in result.failed:
        print(f"  failed: {run_id}: {message}", file=sys.stderr)
    return 0 if result.complete else EXIT_RUNS_FAILED


def cmd_experiments(args: argparse.Namespace) -> int:
    """List the experiments in the store (or forget one's plan)."""
    from wattscale.store import open_store

    with open_store(store_url(args)) as store:
        if args.delete:
            if not store.delete_experiment(args.delete):
                raise WattscaleError(f"--delete: no experiment {args.delete!r} in the store; "
                                     "see `wattscale experiments`")
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


def _store_exists(url: str) -> bool:
    """False for a SQLite file that does not exist yet (plan must not create it)."""
    if "://" in url:
        return not url.startswith("sqlite") or Path(url.split(":///", 1)[-1]).exists()
    return Path(url).exists()


def _add_experiment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="experiment TOML file (see experiments/)")
    p.add_argument("--variant", help="a [variants.NAME] table of the file to merge in, e.g. smoke")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set data.source=../shared/data/tinystories (repeatable)")
    p.add_argument("--cache-dir", default=".wattscale_cache", help="token-shard cache (default .wattscale_cache)")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [model], [train] and [data] tables; flags override it")
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
    p.add_argument("--schedule", help="cosine (default), wsd or constant")
    p.add_argument("--warmup-fraction", type=float, help="fraction of steps spent warming up (default 0.05)")
    p.add_argument("--eval-interval-tokens", type=int, help="evaluate every N tokens (default budget/10)")
    p.add_argument("--eval-tokens", type=int, help="validation tokens per evaluation (default 65536)")
    p.add_argument("--checkpoint-interval-tokens", type=int, help="checkpoint every N tokens (default: eval)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", help="auto (fp32 on CPU, bf16 autocast on CUDA), fp32, bf16, or tf32 "
                   "(fp32 weights with TF32 tensor-core matmuls; CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--run-root", help="folder for checkpoints and final weights (default wattscale_runs)")
    p.add_argument("--name", help="a free-text name stored with the run")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--parallel", help="under torchrun with several processes: ddp (default) or fsdp (FSDP2 sharding)")
    p.add_argument("--meters", help="meter kinds to try, comma-separated: nvml,rapl,cpu-estimate (default) or none")
    p.add_argument("--sample-hz", type=float, help="power sampling rate, 1 to 1000 Hz (default 10)")
    p.add_argument("--idle-seconds", type=float, help="idle baseline measured before a run (default 3; 0 skips)")
    p.add_argument("--cpu-tdp-w-per-core", type=float, help="watts per busy core for the CPU estimate (default 10)")
    p.add_argument("--grid-gco2e-per-kwh", type=float, help="your grid's carbon intensity, for CO2e (no default)")
    p.add_argument("--cache-dir", default=".wattscale_cache", help="token-shard cache (default .wattscale_cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    store_help = f"results database: a path (SQLite) or SQLAlchemy URL; env WATTSCALE_STORE; default {DEFAULT_STORE}"
    parser = WattscaleArgumentParser(prog="wattscale", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help=store_help)
    common = WattscaleArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[common], help="train one model to an exact token budget")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", parents=[common], help="print an experiment's runs, tokens and estimated time/energy")
    _add_experiment_flags(p)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", parents=[common], help="run an experiment file (resumable)")
    _add_experiment_flags(p)
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (default: one run after another here) or ray (runs as Ray tasks)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs a Ray task reserves (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs a Ray task reserves (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("experiments", parents=[common], help="list the experiments in the store")
    p.add_argument("--delete", metavar="NAME", help="forget an experiment's plan (its runs stay)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("runs", parents=[common], help="list runs in the store")
    p.add_argument("--experiment", help="only this experiment's runs")
    p.add_argument("--json", action="store_true", help="print a JSON array of run records")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("export", parents=[common], help="write a store table as CSV or Parquet")
    p.add_argument("path", help="output file (.csv or .parquet)")
    p.add_argument("--table", default="runs", help="runs (default), evaluations, train_steps, power_samples, "
                   "energy_measurements, experiments, experiment_runs")
    p.add_argument("--format", help="csv or parquet (default: from the file suffix)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-hf", parents=[common], help="write a run as a Hugging Face Llama checkpoint")
    p.add_argument("run_id", help="a finished run's id (see `wattscale runs`)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("energy", parents=[common], help="a run's energy, power, CO2e and sampling-rate analysis")
    p.add_argument("run_id", help="a run's id (see `wattscale runs`)")
    p.add_argument("--grid-gco2e-per-kwh", type=float, help="grid carbon intensity for CO2e (default: the run's)")
    p.add_argument("--rates", type=sampling_rates_hz,
                   help="sampling rates in Hz to re-compute the energy at (default 1000,100,10,1,0.1)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_energy)

    p = sub.add_parser("meters", help="list the power meters found here and why others are not used")
    p.add_argument("--cpu-tdp-w-per-core", type=float, default=10.0,
                   help="watts per busy core for the CPU estimate when no meter is readable (default 10)")
    p.add_argument("--powercap-root", default="/sys/class/powercap", help="where to look for RAPL zones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_meters)

    p = sub.add_parser("presets", help="list model presets and their parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("quickstart", help="train small models on the built-in corpus, end to end")
    p.add_argument("--out", default="quickstart", help="folder for the store, runs and cache (default quickstart)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_quickstart)

    # Commands of the later stages (analysis, scaling laws, report) live in their own modules, each with
    # add_commands(sub, common); they import their heavy dependencies only when a command runs.
    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub, common)
    return parser


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wattscale` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    empty = _first_empty_value(args)
    if empty:
        parser.exit(2, f"wattscale: error: {empty}: empty value; give one, or leave the flag out for its default\n")
    # SIGTERM (e.g. a cluster scheduler) is handled like Ctrl-C: the run is marked interrupted.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return args.func(args)
    except WattscaleError as exc:
        print(f"wattscale: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wattscale: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # the environment's fault in one line; otherwise a bug, with the traceback on request
        if os.environ.get("WATTSCALE_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            print(f"wattscale: error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        first_line = (str(exc).splitlines() or [""])[0]
        print(f"wattscale: internal error: {type(exc).__name__}: {first_line} -- a bug in wattscale; please report "
              "it with the command (WATTSCALE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _first_empty_value(args: argparse.Namespace) -> str | None:
    """The flag (as --name) of the first empty or blank string value; no wattscale setting means anything by ''."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            return dest if dest in _POSITIONALS else "--" + dest.replace("_", "-")
    return None


_POSITIONALS = frozenset({"file", "path", "run_id"})


def _os_error_line(exc: OSError) -> str:
    """An OS error as one line naming the file and what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    fix = {errno.ENOSPC: "free space there, or use another folder (e.g. --run-root)",
           errno.EDQUOT: "free space there, or use another folder (e.g. --run-root)",
           errno.EROFS: "the file system is read-only; use a writable folder",
           errno.EACCES: "check its permissions", errno.EPERM: "check its permissions"}.get(exc.errno, "check the path")
    return f"{exc.strerror or exc}:{where}; {fix}"


if __name__ == "__main__":
    sys.exit(main())
