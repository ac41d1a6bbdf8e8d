"""`wattscale export-study`, `import` and `check-study`: a study as a folder anyone can re-check."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from wattscale.cli.common import (
    add_command,
    add_file_flags,
    add_json_flag,
    existing_store,
    experiment_and_store,
    store_url,
)
from wattscale.errors import ConfigError
from wattscale.jsonout import strict_json


def cmd_export_study(args: argparse.Namespace) -> int:
    """Write one experiment's runs, plan, figures, machine and manifest into a folder."""
    from wattscale.studies import export_study

    experiment, url = experiment_and_store(args)
    if experiment is None:
        raise ConfigError("--experiment: missing; give the experiment FILE (and --variant) or --experiment NAME")
    command = "wattscale " + shlex.join(sys.argv[1:]) if Path(sys.argv[0]).name in ("wattscale", "__main__.py") \
        else None
    result = export_study(existing_store(url), experiment, Path(args.output), command_line=command)
    if args.json:
        print(strict_json(result.to_dict()))
        return 0
    print(f"wrote {result.runs_total} runs ({result.runs_finished} finished, {result.wall_seconds / 3600:.2f} h of "
          f"wall time) of {experiment} to {result.folder}: "
          + ", ".join(f"{name} {n:,}" for name, n in result.rows.items()) + " rows; figures: "
          + (", ".join(result.figures) or "none (no finished run)"))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Load an exported study folder into a store (refused if the store already holds its runs)."""
    from wattscale.studies import import_study

    url = store_url(args)
    result = import_study(Path(args.folder), url)
    if args.json:
        print(strict_json(result.to_dict()))
        return 0
    print(f"loaded {result.experiment} from {result.folder} into {url}: "
          + ", ".join(f"{name} {n:,}" for name, n in result.rows.items()) + " rows")
    print(f"next: wattscale --store {url} analyze --experiment {result.experiment}")
    return 0


def cmd_check_study(args: argparse.Namespace) -> int:
    """Import a study folder into a temporary store and recompute every number of its findings.json."""
    from wattscale.studies import check_finding, import_study, load_findings

    folder = Path(args.folder)
    experiment, findings = load_findings(folder)
    with tempfile.TemporaryDirectory(prefix="wattscale-check-") as tmp:
        url = str(Path(tmp) / "study.db")
        imported = import_study(folder, url)
        if imported.experiment != experiment:
            raise ConfigError(f"findings: {folder / 'findings.json'} names experiment {experiment!r} but the export "
                              f"holds {imported.experiment!r}; correct \"experiment\"")
        outputs: dict[tuple[str, ...], Any] = {}
        for finding in findings:
            if finding.command not in outputs:
                outputs[finding.command] = run_json_command(url, finding.command)
        checks = [check_finding(f, outputs[f.command]) for f in findings]
    failed = [c for c in checks if not c.ok]
    if args.json:
        print(strict_json({"folder": str(folder), "experiment": experiment, "checked": len(checks),
                           "failed": len(failed), "findings": [c.to_dict() for c in checks]}))
    else:
        for check in checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.statement}"
                  + ("" if check.ok else f" -- {check.message}"))
    if failed:
        first = failed[0]
        raise ConfigError(f"findings: {len(failed)} of {len(checks)} in {folder / 'findings.json'} do not match the "
                          f"data (first: {first.name}: {first.message}); correct the finding and the page")
    if not args.json:
        print(f"all {len(checks)} findings of {folder / 'findings.json'} match the data")
    return 0


def run_json_command(url: str, command: tuple[str, ...]) -> Any:
    """Run `wattscale --store URL COMMAND` in this process and return the JSON it printed."""
    from wattscale.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--store", url, *command])
        except SystemExit as exc:  # argparse refusing the command line
            code = exc.code if isinstance(exc.code, int) else 2
    shown = shlex.join(command)
    if code != 0:
        raise ConfigError(f"findings: `wattscale {shown}` failed (exit {code}: {err.getvalue().strip()[:200]}); "
                          "correct its command")
    try:
        return json.loads(out.getvalue())
    except ValueError:
        raise ConfigError(f"findings: `wattscale {shown}` printed no JSON; end its command with --json") from None


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `export-study`, `import` and `check-study`."""
    p = add_command(sub, "export-study", "write a study's runs, plan, figures and machine into a folder",
                    ["wattscale export-study experiments/tinystories_token_scale.toml -o "
                     "studies/tinystories_token_scale",
                     "wattscale export-study --experiment dynamics_4m-smoke --store dynamics_4m_smoke.db -o "
                     "studies/dynamics_smoke --json"],
                    parents=[common],
                    description="Write one experiment's runs, evaluations, training steps, energy rows (phases, "
                                "intervals; not the raw power samples) and plan as Parquet files into a folder, with "
                                "two PNG figures, machine.json (machines, software, commands, wall time), "
                                "manifest.json (row counts, sha256) and a README. `wattscale import` loads the "
                                "folder back into a store, value for value.")
    add_file_flags(p)
    p.add_argument("--experiment", help="the experiment to export (default: the FILE's)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="the folder to write (created; its other files, such as findings.json, are left alone)")
    add_json_flag(p, "what was written as one JSON object")
    p.set_defaults(func=cmd_export_study)

    p = add_command(sub, "import", "load an exported study folder into a store",
                    ["wattscale import studies/tinystories_token_scale --store token_scale.db",
                     "wattscale --store token_scale.db analyze --experiment tinystories_token_scale"],
                    parents=[common],
                    description="Load a folder written by `wattscale export-study` into a store (created if "
                                "needed), after checking each file's sha256 against manifest.json; `analyze`, "
                                "`fit` and `report` then read it as the store the study ran in. Refused, with "
                                "nothing written, when the store already holds one of its runs.")
    p.add_argument("folder", metavar="DIR", help="a folder written by `wattscale export-study`")
    add_json_flag(p, "what was loaded as one JSON object")
    p.set_defaults(func=cmd_import)

    p = add_command(sub, "check-study", "recompute every number a study's findings.json states",
                    ["wattscale check-study studies/tinystories_token_scale",
                     "wattscale check-study studies/tinystories_three_term --json"],
                    description="Import an exported study folder into a temporary store, run each command of its "
                                "findings.json there and compare the value at each finding's JSON path with the "
                                "stated one. Exit 2 naming the first finding that does not match.")
    p.add_argument("folder", metavar="DIR", help="a folder written by `wattscale export-study`, with a findings.json")
    add_json_flag(p, "every finding with its stated and recomputed value as one JSON object")
    p.set_defaults(func=cmd_check_study)
