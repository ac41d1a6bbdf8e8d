"""The `wattscale` command: each domain module registers its sub-commands; each command parses, calls one
typed function, prints.

``build_parser()`` returns the whole parser (the docs generate the CLI reference from it); ``main()`` is the
console script's entry point (``wattscale.cli:main``, also ``python -m wattscale``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from wattscale.cli.common import (
    EXIT_BROKEN_PIPE,
    STORE_HELP,
    WattscaleArgumentParser,
    first_empty_value,
    run_command,
    store_url,
)

__all__ = ["COMMAND_GROUPS", "build_parser", "main", "store_url", "version_string"]

# Modules that add sub-commands, each with register(subparsers, common); they import their heavy
# dependencies only when a command runs.
_COMMAND_MODULES = ("train", "measure", "experiments", "results", "analysis", "report", "laws", "machine",
                    "calibrate", "studies")

# How `wattscale --help` groups the commands (every registered command appears exactly once).
COMMAND_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Run", ("quickstart", "train", "plan", "run", "measure")),
    ("Results", ("runs", "show", "delete", "experiments", "energy", "export", "export-hf", "export-study",
                 "import")),
    ("Analyse", ("analyze", "report", "watch", "check-study")),
    ("Scaling laws", ("fit", "plan-compute", "plan-energy")),
    ("This machine", ("meters", "presets", "calibrate")),
)

_DESCRIPTION = "Energy-aware language-model training-scale experiments: train, meter, store, analyse, report."
_EPILOG = ("Each command has --help with examples. The store: --store, else $WATTSCALE_STORE, else the experiment "
           "file's store, else ./wattscale.db.\nexamples:\n  wattscale quickstart\n  wattscale train --preset "
           "llama-tiny --tokens 200000\n  wattscale analyze --experiment token-scale -o analysis")


def version_string() -> str:
    """`wattscale <version>`: the installed distribution's version, else the package's __version__."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("wattscale")
    except PackageNotFoundError:
        from wattscale import __version__ as number
    return f"wattscale {number}"


def _grouped_commands(sub: Any) -> str:
    """The command list of `wattscale --help`, by group, from each command's one-line help."""
    helps = {action.dest.split(" ")[0]: action.help for action in sub._choices_actions}
    lines = []
    for title, names in COMMAND_GROUPS:
        lines.append(f"\n{title}:")
        for name in names:
            shown = name + (" (analyse)" if name == "analyze" else "")
            lines.append(f"  {shown:<22}{helps[name]}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = WattscaleArgumentParser(prog="wattscale", usage="wattscale [-h] [--version] [--store STORE] COMMAND ...",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_string())
    parser.add_argument("--store", help=STORE_HELP)
    common = WattscaleArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands", prog="wattscale")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"wattscale.cli.{name}").register(sub, common)
    registered = {action.dest.split(" ")[0] for action in sub._choices_actions}  # "analyze (analyse)"
    grouped = [name for _, names in COMMAND_GROUPS for name in names]
    if sorted(grouped) != sorted(registered):  # a new command must be placed in a group
        raise RuntimeError(f"COMMAND_GROUPS and the registered commands differ: {sorted(set(grouped) ^ registered)}")
    parser.description = _DESCRIPTION + "\n" + _grouped_commands(sub)
    parser.epilog = _EPILOG
    sub.help = argparse.SUPPRESS
    sub._choices_actions.clear()  # listed by group in the epilog instead
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wattscale` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    empty = first_empty_value(args)
    if empty:
        parser.exit(2, f"wattscale: error: {empty}: empty value; give one, or leave the flag out for its default\n")
    try:
        code = run_command(args)
        sys.stdout.flush()  # a pipe's buffer is written here, so a closed reader shows up inside the try
    except BrokenPipeError:  # `wattscale runs | head`: the reader left; stop quietly like other Unix tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own flush at exit must not fail again
        return EXIT_BROKEN_PIPE
    return code
