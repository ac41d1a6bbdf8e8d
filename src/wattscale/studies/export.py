"""A study's runs as a folder anyone can re-check (`export_study`), and that folder back into a store (`import_study`).

``studies/<name>/`` holds:

- ``<table>.parquet`` for each of `wattscale.studies.tables.STUDY_TABLES` (runs, evaluations, train_steps,
  energy_measurements, experiments, experiment_runs; no raw power samples);
- ``val_loss.png``, ``train_loss.png`` and ``final_loss_energy.png`` (`wattscale.studies.figures`);
- ``machine.json``: the machines and software the runs used, the commands that ran them, and the wall time;
- ``manifest.json``: the experiment, the store schema version and each table's file, row count and sha256
  (`import_study` refuses a file whose bytes changed);
- ``README.md``: what the folder is and the commands that re-check it;
- ``findings.json`` if the study's author wrote one (`wattscale.studies.findings`); export never touches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wattscale import __version__
from wattscale.errors import ConfigError, StoreError
from wattscale.jsonout import JsonResult
from wattscale.store import open_store
from wattscale.store_schema import SCHEMA_VERSION

from .figures import write_figures
from .tables import STUDY_TABLES, load_rows, read_parquet, study_rows, write_parquet

FORMAT = "wattscale-study/1"
MANIFEST = "manifest.json"
MACHINE = "machine.json"
FINDINGS = "findings.json"


@dataclass(frozen=True)
class StudyExport(JsonResult):
    """What `export_study` wrote: the folder, the rows per table, the figures, the runs and their wall time."""

    folder: str
    experiment: str
    rows: dict[str, int]
    figures: list[str]
    runs_finished: int
    runs_total: int
    wall_seconds: float  # summed over the runs (their own wall time, resumes included)


@dataclass(frozen=True)
class StudyImport(JsonResult):
    """What `import_study` loaded: the folder, the experiment, the store and the rows per table."""

    folder: str
    experiment: str
    store: str
    rows: dict[str, int]


def export_study(store_url: str, experiment: str, folder: Path, command_line: str | None = None) -> StudyExport:
    """Write one experiment's runs, plan, figures, machine and manifest into ``folder`` (created if needed)."""
    with open_store(store_url, create=False) as store:
        if store.get_experiment(experiment) is None and not store.list_runs(experiment=experiment):
            known = ", ".join(repr(e["name"]) for e in store.list_experiments()) or "none"
            raise ConfigError(f"--experiment: no experiment {experiment!r} in {store.display_url} (experiments "
                              f"there: {known}); see `wattscale experiments`")
        rows = study_rows(store, experiment)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tables = {}
        for name in STUDY_TABLES:
            path = folder / f"{name}.parquet"
            write_parquet(path, name, rows[name])
            tables[name] = {"file": path.name, "rows": len(rows[name]), "sha256": _sha256(path)}
        figures = write_figures(folder, rows, experiment)
        machine = machine_record(rows, command_line)
        _write_json(folder / MACHINE, machine)
        _write_json(folder / MANIFEST, {
            "format": FORMAT, "experiment": experiment, "schema_version": SCHEMA_VERSION,
            "wattscale_version": __version__, "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tables": tables, "figures": [p.name for p in figures]})
        (folder / "README.md").write_text(readme_text(experiment, rows, machine, folder), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"-o/--output: cannot write {exc.filename or folder} ({exc.strerror}); choose a writable "
                          "folder") from None
    finished = [r for r in rows["runs"] if r["status"] == "finished"]
    return StudyExport(folder=str(folder), experiment=experiment, rows={k: len(v) for k, v in rows.items()},
                       figures=[p.name for p in figures], runs_finished=len(finished), runs_total=len(rows["runs"]),
                       wall_seconds=machine["wall_time"]["runs_wall_seconds"])


def import_study(folder: Path, store_url: str) -> StudyImport:
    """Load an exported study folder into the store at ``store_url`` (created if needed), checking every file."""
    manifest = read_manifest(folder)
    tables = {}
    for name in STUDY_TABLES:
        entry = manifest["tables"].get(name)
        if entry is None:
            raise StoreError(f"import: {folder / MANIFEST} lists no {name} table; export the study again")
        path = folder / entry["file"]
        if not path.is_file():
            raise StoreError(f"import: {path} is missing; restore it (git checkout) or export the study again")
        if _sha256(path) != entry["sha256"]:
            raise StoreError(f"import: {path} differs from the file that was exported (sha256); restore it "
                             "(git checkout) or export the study again")
        tables[name] = read_parquet(path, name)
    with open_store(store_url) as store:
        counts = load_rows(store, tables)
        display = store.display_url
    return StudyImport(folder=str(folder), experiment=manifest["experiment"], store=display, rows=counts)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest.json, checked for format and schema version (StoreError naming the fix)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise StoreError(f"import: {path} not found; give a folder written by `wattscale export-study`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StoreError(f"import: cannot read {path} ({exc.strerror}); check the folder") from None
    except ValueError as exc:
        raise StoreError(f"import: {path} is not JSON ({exc}); export the study again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"import: {path} is not a {FORMAT} manifest; give a folder written by `wattscale "
                         "export-study`")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise StoreError(f"import: {folder} was exported with store schema {manifest['schema_version']}, newer than "
                         f"this wattscale's {SCHEMA_VERSION}; upgrade wattscale (pip install -U wattscale)")
    return manifest


def machine_record(rows: dict[str, list[dict[str, Any]]], command_line: str | None) -> dict[str, Any]:
    """The machines, software, commands and wall time of a study's runs (what machine.json holds)."""
    runs = rows["runs"]
    machines: dict[str, dict[str, Any]] = {}
    for run in runs:
        info = json.loads(run["device_info_json"]) if run.get("device_info_json") else {}
        described = {k: info.get(k) for k in ("device", "cpu", "cpu_threads", "platform", "python", "torch", "gpu",
                                              "world_size", "peak_flops", "peak_source") if info.get(k) is not None}
        key = json.dumps(described, sort_keys=True)
        machines.setdefault(key, {**described, "runs": 0})["runs"] += 1
    started = [r["started_at"] for r in runs if r.get("started_at") is not None]
    ended = [r["finished_at"] for r in runs if r.get("finished_at") is not None]
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
    return {
        "machines": list(machines.values()),
        "cpu_count_at_export": os.cpu_count(),
        "software": {key: sorted({str(r[key]) for r in runs if r.get(key)})
                     for key in ("wattscale_version", "torch_version", "git_revision")},
        # Trained runs do not record a command line; `wattscale run FILE [--variant V]` is what (re)runs them all.
        "commands": list(dict.fromkeys([*run_commands(rows["experiments"]),
                                        *(r["command_line"] for r in runs if r.get("command_line"))])),
        "export_command": command_line,
        "runs": {"total": len(runs), **statuses, "resumes": sum(r.get("resume_count") or 0 for r in runs)},
        "wall_time": {
            "runs_wall_seconds": float(sum(r.get("wall_seconds") or 0.0 for r in runs)),
            "first_started_at": _iso(min(started)) if started else None,
            "last_finished_at": _iso(max(ended)) if ended else None,
            "elapsed_seconds": (max(ended) - min(started)).total_seconds() if started and ended else None,
        },
    }


def run_commands(experiment_rows: list[dict[str, Any]]) -> list[str]:
    """`wattscale run FILE [--variant V]` of the experiment file the runs were planned from (relative to the root
    of the git checkout it lies in, so that the command holds in any clone, else to the working directory); the
    spec it recorded holds every setting, --set ones included."""
    commands = []
    for row in experiment_rows:
        source = row.get("source_path")
        if not source:
            continue
        path = _shown_path(Path(source))
        variant = json.loads(row["spec_json"]).get("variant") if row.get("spec_json") else None
        commands.append(f"wattscale run {path.as_posix()}" + (f" --variant {variant}" if variant else ""))
    return commands


def _shown_path(path: Path) -> Path:
    """`path` relative to the root of the git checkout holding it (a `.git` folder or, in a worktree, file), else
    to the working directory, else as it is."""
    for folder in path.parents:
        if (folder / ".git").exists():
            return path.relative_to(folder)
    with contextlib.suppress(ValueError):
        return path.relative_to(Path.cwd())
    return path


def readme_text(experiment: str, rows: dict[str, list[dict[str, Any]]], machine: dict[str, Any],
                folder: Path) -> str:
    """The folder's README: what it holds, the machine and wall time, and the commands that re-check it."""
    spec_row = rows["experiments"][0] if rows["experiments"] else {}
    spec = json.loads(spec_row["spec_json"]) if spec_row.get("spec_json") else {}
    description = (spec.get("experiment") or {}).get("description") or ""
    wall = machine["wall_time"]
    cpus = sorted({str(m.get("cpu")) for m in machine["machines"]})
    lines = [
        f"# Study `{experiment}`", "",
        description, "",
        "Written by `wattscale export-study` (do not edit the data files: `wattscale import` checks their sha256).",
        "", "## What is here", "",
        "| file | rows |", "|---|---|",
        *(f"| `{name}.parquet` | {len(rows[name]):,} |" for name in STUDY_TABLES),
        "", "Figures: `val_loss.png`, `train_loss.png`, `final_loss_energy.png`. Machine, software, commands and "
        "wall time: `machine.json`. Files, row counts and checksums: `manifest.json`. The findings a page states, "
        "each with the command and JSON path that give it: `findings.json` (written by the study's author).", "",
        "## Runs, machine and time", "",
        "- runs: " + ", ".join(f"{n} {k}" for k, n in machine["runs"].items()),
        f"- source file: `{spec_row.get('source_path')}`" + (f", variant `{spec['variant']}`"
                                                           if spec.get("variant") else ""),
        f"- CPU: {', '.join(cpus) or 'not recorded'}",
        f"- wall time: {wall['runs_wall_seconds'] / 3600:.2f} h summed over the runs"
        + (f"; {wall['first_started_at']} to {wall['last_finished_at']}" if wall["first_started_at"] else ""),
        "- commands:", *(f"  - `{c}`" for c in machine["commands"]),
        "", "## Re-check", "", "```bash",
        f"wattscale import {folder.as_posix()} --store {experiment}.db",
        f"wattscale --store {experiment}.db analyze --experiment {experiment}",
        *([f"wattscale --store {experiment}.db fit --experiment {experiment} --form {law_form(spec)}"]
          if law_form(spec) else []),
        f"wattscale check-study {folder.as_posix()}   # every number of findings.json, recomputed",
        "```", "",
    ]
    return "\n".join(lines)


def law_form(spec: dict[str, Any]) -> str | None:
    """The scaling law a study's grid can be fitted with: three-term when it varies batch and steps, chinchilla
    when it varies the model and the tokens, else None."""
    grid = set(spec.get("grid") or {})
    batch = bool(grid & {"train.batch_size", "train.batch_tokens"})
    steps = bool(grid & {"train.steps", "train.tokens", "train.data_tokens", "train.epochs"})
    model = any(key.startswith("model.") for key in grid)
    if batch and steps and "train.steps" in grid:
        return "three-term"
    return "chinchilla" if model and steps else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
