"""`wattscale meters` and `wattscale presets`: what this machine can measure, and the model sizes."""

from __future__ import annotations

import argparse
from typing import Any

from wattscale.cli.common import add_command, add_json_flag
from wattscale.jsonout import strict_json


def cmd_presets(args: argparse.Namespace) -> int:
    """List model presets with their parameter counts."""
    from wattscale.tables import print_presets_table

    print_presets_table(as_json=args.json)
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


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `meters` and `presets`."""
    p = add_command(sub, "meters", "list the power meters found here and why others are not used",
                    ["wattscale meters", "wattscale meters --json"])
    p.add_argument("--cpu-tdp-w-per-core", type=float, default=10.0,
                   help="watts per busy core for the CPU estimate when no meter is readable (default 10)")
    p.add_argument("--powercap-root", default="/sys/class/powercap", help="where to look for RAPL zones")
    add_json_flag(p, "the meters as one JSON object")
    # Looked up when the command runs, so that tests can replace the function in this module.
    p.set_defaults(func=lambda args: cmd_meters(args))

    p = add_command(sub, "presets", "list model presets and their parameter counts",
                    ["wattscale presets", "wattscale presets --json"])
    add_json_flag(p, "a JSON array of presets")
    p.set_defaults(func=lambda args: cmd_presets(args))
