"""`wattscale analyze`: efficiency, repeated-measures statistics, returns on tokens and dynamics.

Three inputs: the store (default), a runs export (``--runs-file``), or any long-format CSV
(``--csv FILE --metric COL --factor COL --subject COL``, statistics only).
"""

from __future__ import annotations

import argparse
import importlib.util
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
)
from wattscale.errors import ConfigError
from wattscale.footprint import add_footprint_flags
from wattscale.jsonout import strict_json


def load_metrics_hook(path: Path) -> dict[str, Any]:
    """The ``METRICS`` dict of a user's Python file: name -> function(run record) -> float | None."""
    if not path.is_file():
        raise ConfigError(f"--metrics-hook: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"wattscale_metrics_hook_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--metrics-hook: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report its failure as bad input, not a traceback
        raise ConfigError(f"--metrics-hook: importing {path} failed: {type(exc).__name__}: {exc}") from None
    metrics = getattr(module, "METRICS", None)
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and callable(f) for k, f in metrics.items()):
        raise ConfigError(f"--metrics-hook: {path} must define METRICS = {{'name': function(run) -> float}}")
    return metrics


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse a study (store or export) or a long CSV, print it, optionally write JSON/CSV files."""
    if args.output:  # before the work: a folder that cannot take the files would waste the analysis
        from wattscale.output_paths import check_output_folder

        check_output_folder(args.output, "-o/--output")
    if args.csv:
        return _analyze_csv(args)
    if args.factor:
        raise ConfigError("--factor: only with --csv; for stored runs use --by")
    from wattscale.analysis.dynamics import DynamicsConfig
    from wattscale.analysis.study.analysis import AnalysisOptions, analyze_study
    from wattscale.analysis.study.data import load_from_export, load_from_store

    options = AnalysisOptions(
        by=args.by, subject=args.subject, metrics=tuple(args.metric) if args.metric else None, alpha=args.alpha,
        peak_flops=args.peak_flops, energy_basis=args.energy_basis, include_dynamics=not args.no_dynamics,
        extra_metrics=load_metrics_hook(Path(args.metrics_hook)) if args.metrics_hook else {},
        footprint=footprint_settings(args),
        dynamics=DynamicsConfig(volatility_window=args.volatility_window,
                                backslide_tolerance_nats=args.backslide_tolerance, spike_k=args.spike_k,
                                spike_window=args.spike_window, stable_volatility_nats=args.stable_volatility))
    if args.runs_file:
        if args.file:
            raise ConfigError("--runs-file: give a runs export or an experiment FILE, not both")
        data = load_from_export(Path(args.runs_file), args.experiment)
    else:
        experiment, url = experiment_and_store(args)
        data = load_from_store(existing_store(url), experiment)
    result = analyze_study(data, options).to_dict()
    _emit(result, args, lambda console: _print_study(result, console))
    return 0


def _print_study(result: dict, console: Any) -> None:
    from wattscale.analysis.render import print_study

    print_study(result, console)


def _analyze_csv(args: argparse.Namespace) -> int:
    from wattscale.analysis.study.long_table import analyze_long_csv

    missing = [flag for flag, value in (("--metric", args.metric), ("--factor", args.factor),
                                        ("--subject", args.subject)) if not value]
    if missing:
        raise ConfigError(f"--csv: also give {', '.join(missing)} (the value, factor and subject columns)")
    if len(args.metric) != 1:
        raise ConfigError("--metric: give exactly one value column with --csv")
    result = analyze_long_csv(Path(args.csv), args.metric[0], args.factor, args.subject, args.alpha).to_dict()

    def show(console: Any) -> None:
        from wattscale.analysis.render import print_comparison, print_level_summary

        console.print(f"[bold]{result['metric']}[/bold] by {result['factor']} from {result['source']}")
        print_level_summary(result["levels"], console)
        for note in result["notes"]:
            console.print(f"note: {note}")
        print_comparison(result["statistics"], console)

    _emit(result, args, show)
    return 0


def _emit(result: dict, args: argparse.Namespace, show: Any) -> None:
    """--json prints the object; otherwise the terminal view; -o/--output also writes the files."""
    from rich.console import Console

    text = strict_json(result)
    if args.output:
        from wattscale.analysis.tidy import write_outputs

        written = write_outputs(result, Path(args.output), text) if "runs" in result else _write_json(args, text)
    if args.json:
        print(text)
        return
    console = Console(width=160)
    show(console)
    if args.output:
        console.print(f"\nwrote {', '.join(str(p) for p in written)}")


def _write_json(args: argparse.Namespace, text: str) -> list[Path]:
    folder = Path(args.output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "analysis.json").write_text(text)
    except OSError as exc:
        raise ConfigError(f"-o/--output: cannot write to {folder} ({exc.strerror}); choose a writable folder") from None
    return [folder / "analysis.json"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `analyze` (alias `analyse`)."""
    p = add_command(sub, "analyze", "efficiency, repeated-measures statistics, returns on tokens and training dynamics",
                    ["wattscale analyze --experiment token-scale -o analysis",
                     "wattscale analyze experiments/token_scale.toml --variant smoke --metric val_loss joules",
                     "wattscale analyze --experiment token-scale --carbon-intensity grid.csv --pue 1.2",
                     "wattscale analyze --csv data.csv --metric loss --factor tokens --subject seed --json"],
                    aliases=["analyse"], parents=[common])
    add_file_flags(p)
    p.add_argument("--experiment", help="analyse this experiment's runs (default: the FILE's experiment, else every "
                   "finished run in the store)")
    p.add_argument("--by", help="within-subject factor: a run field (tokens_seen, data_tokens, preset ...), a grid "
                   "key (train.lr) or condition (default: tokens_seen when it identifies the conditions)")
    p.add_argument("--subject", help="subject field (default: repetition, else seed)")
    p.add_argument("--metric", nargs="+", action="extend",
                   help="metrics to test, e.g. --metric val_loss joules (default: every metric); with --csv: the "
                   "value column")
    p.add_argument("--runs-file", help="analyse a runs export (.csv/.parquet from `wattscale export`, or .json from "
                   "`wattscale runs --json`) instead of the store (no dynamics)")
    p.add_argument("--csv", help="a long-format CSV, one row per observation: needs --metric, --factor, --subject")
    p.add_argument("--factor", help="with --csv: the within-subject factor column")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (default 0.05)")
    p.add_argument("--peak-flops", type=float,
                   help="peak FLOP/s for MFU over all of a run's devices (per-device peak x devices), overriding "
                   "each run's recorded peak (e.g. 989.5e12 for one H100 SXM in bf16)")
    p.add_argument("--energy-basis", choices=("train", "job"), default="train",
                   help="energy, tokens and time of the efficiency metrics: train (default: the training phase, "
                   "without warm-up, evaluations, checkpoints and saving) or job (the whole job)")
    p.add_argument("--metrics-hook", help="a Python file defining METRICS = {name: function(run_record) -> float}")
    p.add_argument("--volatility-window", type=int, default=3, help="val-loss changes per rolling SD (default 3)")
    p.add_argument("--backslide-tolerance", type=float, default=0.0, help="nats above the best loss (default 0)")
    p.add_argument("--spike-k", type=float, default=3.0, help="spike threshold in rolling MADs (default 3)")
    p.add_argument("--spike-window", type=int, default=25, help="steps in the spike rolling window (default 25)")
    p.add_argument("--stable-volatility", type=float, default=0.01,
                   help="volatility (nats) below which an interval is stable (default 0.01)")
    p.add_argument("--no-dynamics", action="store_true", help="skip the training-dynamics analysis")
    add_footprint_flags(p)  # CO2e and cost metrics (co2e_g, co2e_g_per_token, cost) on the energy basis
    add_output_flag(p, "folder to write analysis.json and the tidy CSV tables into", old=("--out",))
    add_json_flag(p, "the full result as one JSON object on stdout")
    p.set_defaults(func=cmd_analyze)
