"""`wattscale measure [--name N] [--phase-file F] -- CMD ARGS...`: run a command and measure its energy.

The command's own output goes where it would without wattscale; the summary goes to stderr after it ends
(with --json, a JSON object on stdout after the command's own output; with -o, to a file), so it never
mixes with what the command prints. wattscale exits with the command's status (128 + N for signal N).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from wattscale.cli.common import (
    add_command,
    add_json_flag,
    add_list_argument,
    add_output_flag,
    footprint_settings,
    store_url,
)
from wattscale.footprint import add_footprint_flags
from wattscale.jsonout import strict_json

_USAGE_FIX = "put the command after --, e.g. `wattscale measure -- python train.py`"


class _Command(argparse.Action):
    """The words after `--`, kept as a tuple (an empty argument is the command's business, not a flag's)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, tuple(values))


def _gpus(words: list[str] | None) -> Any:
    """--gpus words as a GPU selection: auto, none (-> []), or CUDA indexes and UUIDs."""
    if not words or words == ["auto"]:
        return "auto"
    if words == ["none"]:
        return []
    if "auto" in words or "none" in words:
        from wattscale.errors import ConfigError

        raise ConfigError("--gpus: 'auto' and 'none' stand alone; or list CUDA indexes / GPU UUIDs, e.g. --gpus 0 1")
    return [int(w) if w.isdigit() else w for w in words]


def cmd_measure(args: argparse.Namespace) -> int:
    """Run the command after --, measure it, record it, print the summary, exit with its status."""
    from wattscale.energy.command import MeasureSpec, measure_command
    from wattscale.energy.meter import MeterConfig

    settings = {k: v for k, v in (("sample_hz", args.sample_hz), ("idle_seconds", args.idle_seconds),
                                  ("cpu_tdp_w_per_core", args.cpu_tdp_w_per_core)) if v is not None}
    if args.meters:
        settings["kinds"] = tuple(args.meters)
    config, gpus = MeterConfig(**settings), _gpus(args.gpus)  # bad flags are refused before anything runs
    if args.output:
        _check_output(Path(args.output))
    footprint = footprint_settings(args)  # a bad carbon CSV or price is refused before the command runs
    words = list(args.command or ())
    if not words or words[0] != "--" or len(words) == 1:
        print(f"wattscale measure: error: no command; {_USAGE_FIX} (see `wattscale measure --help`)", file=sys.stderr)
        return 2
    spec = MeasureSpec(argv=tuple(words[1:]), name=args.name, config=config, gpus=gpus,
                       phase_file=Path(args.phase_file) if args.phase_file else None, store=store_url(args))
    out = measure_command(spec)
    data = out.to_dict()
    data["footprint"] = _footprint(out, footprint)
    if args.output:
        Path(args.output).write_text(strict_json(data) + "\n")
    if args.json:
        sys.stdout.flush()
        print(strict_json(data))
    else:
        print_summary(data, sys.stderr)
    return out.exit_code


def _footprint(out: Any, settings: Any) -> dict[str, Any] | None:
    """The job's facility energy, CO2e and cost with their inputs (None when nothing was metered)."""
    from wattscale.footprint import footprint_of

    job = out.result.job
    if job.energy_j is None:
        return None
    return footprint_of(job.energy_j, settings, energy_source=job.source, start=out.started_at,
                        end=out.ended_at).as_dict()


def _check_output(path: Path) -> None:
    """-o must name a file in an existing folder (checked before the command runs, not after)."""
    from wattscale.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"-o/--output: {path} is a folder; give a file path such as {path / 'measure.json'}")
    if not path.parent.is_dir():
        raise ConfigError(f"-o/--output: the folder {path.parent} does not exist; create it or choose another path")


def print_summary(data: dict[str, Any], stream: Any) -> None:
    """The summary table: how the command ended, and time, tokens and energy by phase and component."""
    m = data["measurement"]
    print(f"\nwattscale measure: `{data['command_line']}` {data['status']} ({data['message']}) after "
          f"{data['wall_seconds']:.1f} s", file=stream)
    components = [c for c in ("gpu", "cpu_package", "dram", "cpu_estimate")
                  if any(c in p["components"] for p in m["phases"].values())]
    header = ["phase", "seconds", "tokens", "energy_j", "source", *(f"{c}_j" for c in components), "j_per_token"]
    rows = [header]
    for phase in [*m["phases"].values(), m["job"]]:
        comps = phase["components"]
        rows.append([phase["phase"], f"{phase['seconds']:.2f}", f"{phase['tokens']:,}" if phase["tokens"] else "-",
                     _joules(phase["energy_j"]), phase["source"] or "-",
                     *(f"{_joules(comps[c]['energy_j'])} ({comps[c]['source']})" if c in comps else "-"
                       for c in components),
                     f"{phase['joules_per_token']:.4g}" if phase["joules_per_token"] is not None else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))), file=stream)
    if m["idle"] is not None and m["idle"]["energy_j"] is not None:
        print(f"  idle baseline before the command: {m['idle']['seconds']:.1f} s, {m['idle']['mean_power_w']:.1f} W",
              file=stream)
    foot = data.get("footprint")
    if foot is not None:
        co2e = "-" if foot["co2e_g"] is None else f"{foot['co2e_g']:.3g} g"
        cost = "-" if foot["cost"] is None else f"{foot['cost']:.3g} {foot['currency']}"
        print(f"  CO2e {co2e}, cost {cost} (job energy x PUE; inputs: {foot['inputs']}"
              + (f"; carbon basis: {foot['carbon_basis']}" if foot["carbon_basis"] else "") + ")", file=stream)
    for note in m["notes"]:
        print(f"  note: {note}", file=stream)
    if data["store"]:
        print(f"  run {data['run_id']} in {data['store']} (wattscale energy {data['run_id']})", file=stream)


def _joules(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `measure`."""
    p = add_command(sub, "measure", "run a command and measure its energy, process tree and GPUs, by phase",
                    ["wattscale measure -- python train.py --epochs 1",
                     "wattscale measure --name baseline --json -- ./train.sh",
                     "wattscale measure --phase-file phases.txt --idle-seconds 0 -- ./bench --size 4096"],
                    parents=[common], usage="wattscale measure [options] -- CMD [ARGS ...]",
                    description="Run a command (no shell) and measure it: its process tree's CPU, the GPUs it "
                                "uses, RAPL\n(host-wide), by phase; record the command line, exit status, wall "
                                "time and energy by\ncomponent with sources as a run of kind `measured`. Phases: "
                                "a wattscale.Monitor inside the\ncommand marks them by itself; any program can "
                                "append lines `PHASE [TOKENS [STEPS]]` to\n$WATTSCALE_PHASE_FILE (or --phase-file); "
                                "otherwise the whole command is phase `command`.\nCtrl-C, SIGTERM and SIGHUP are "
                                "forwarded to the command (the third as SIGKILL); the partial\nmeasurement is kept "
                                "as `interrupted`. Exits with the command's status (128+N for signal N;\n127 when "
                                "the command is not found, 126 when it is not executable).")
    p.add_argument("--name", help="a free-text name stored with the run (default none)")
    p.add_argument("--phase-file", metavar="PATH",
                   help="a file the command (any program) appends phase lines to, `PHASE [TOKENS [STEPS]]`, e.g. "
                        "`train 4096`; created if missing (default: a temporary file; either way the command "
                        "finds it in $WATTSCALE_PHASE_FILE)")
    add_list_argument(p, "--gpus", metavar="GPU",
                      help="auto (default: the GPUs visible to the command, each counted once its process tree "
                           "uses it), none, or CUDA indexes / GPU UUIDs to measure whole")
    add_list_argument(p, "--meters", metavar="KIND",
                      help="meter kinds to try: nvml rapl cpu-estimate (default) or none")
    p.add_argument("--sample-hz", type=float, help="power sampling rate, 1 to 1000 Hz (default 10)")
    p.add_argument("--idle-seconds", type=float, help="idle baseline measured before the command (default 3; 0 skips)")
    p.add_argument("--cpu-tdp-w-per-core", type=float, help="watts per busy core for the CPU estimate (default 10)")
    add_footprint_flags(p)
    add_output_flag(p, "also write the JSON result to this file")
    add_json_flag(p, "the result as one JSON object on stdout, after the command's own output (no table)")
    p.add_argument("command", nargs=argparse.REMAINDER, action=_Command, metavar="-- CMD [ARGS ...]",
                   help="the command to run and measure, after --")
    p.set_defaults(func=cmd_measure)
