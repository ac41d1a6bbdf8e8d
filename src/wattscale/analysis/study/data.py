"""What an analysis reads: a study's runs with their plan fields, evaluations and training steps.

Two sources give the same `StudyData`:

- :func:`load_from_store`: the results database (SQLite path or SQLAlchemy URL), all runs or one
  experiment's, with its planned runs (for saying what is missing), evaluations and training steps.
- :func:`load_from_export`: a ``runs`` table written by ``wattscale export`` (CSV or Parquet) or printed by
  ``wattscale runs --json``; it has no evaluations or steps, so dynamics are not available from it.

Only ``finished`` runs are analysed; the others are listed in ``StudyData.unfinished`` with their status.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wattscale.errors import ConfigError

if TYPE_CHECKING:
    from wattscale.store import Store

REQUIRED_RUN_COLUMNS = ("run_id", "status", "tokens_seen", "seed")


@dataclass(frozen=True)
class StudyData:
    """Finished run records (with plan fields when planned), the rest, and per-run evaluations/steps."""

    experiment: str | None
    source: str
    runs: list[dict[str, Any]]
    unfinished: list[dict[str, Any]]
    planned: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, list[dict[str, Any]]] | None = None
    train_steps: dict[str, list[dict[str, Any]]] | None = None
    spec: dict[str, Any] | None = None


def condition_of(run: dict[str, Any]) -> str:
    """A run's condition label: the experiment's, else "<preset>, <tokens_budget> tokens" (runs outside a study),
    or "measured: <name>" for code measured through the Monitor."""
    if run.get("condition"):
        return str(run["condition"])
    if run.get("kind") == "measured":
        return f"measured: {run.get('name') or run.get('preset') or 'unnamed'}"
    budget = run.get("tokens_budget")
    return f"{run.get('preset')}, {budget:,} tokens" if isinstance(budget, int) else f"{run.get('preset')}, {budget}"


def load_from_store(url: str, experiment: str | None = None) -> StudyData:
    """Read one experiment's runs (or every run) with evaluations and steps from the store at ``url``."""
    from wattscale.store import open_store

    with open_store(url, create=False) as store:
        return load_study(store, experiment, source=f"store {url}")


def load_study(store: Store, experiment: str | None = None, source: str | None = None) -> StudyData:
    """`load_from_store` on an open `Store`."""
    if experiment is not None and store.get_experiment(experiment) is None and not store.list_runs(experiment):
        known = [row["name"] for row in store.list_experiments()]
        raise ConfigError(f"--experiment: no experiment {experiment!r} in the store; known: {known or 'none'}")
    records = store.list_runs(experiment=experiment)
    planned = store.experiment_runs(experiment) if experiment is not None else []
    spec_row = store.get_experiment(experiment) if experiment is not None else None
    finished = [r for r in records if r.get("status") == "finished"]
    evaluations = {r["run_id"]: store.evaluations(r["run_id"]) for r in finished}
    steps = {r["run_id"]: store.train_steps(r["run_id"]) for r in finished}
    spec = json.loads(spec_row["spec_json"]) if spec_row and spec_row.get("spec_json") else None
    for record in finished:
        _add_step_facts(record, evaluations[record["run_id"]], steps[record["run_id"]])
    return StudyData(experiment=experiment, source=source or f"store {store.display_url}", runs=finished,
                     unfinished=[r for r in records if r.get("status") != "finished"], planned=planned,
                     evaluations=evaluations, train_steps=steps, spec=spec)


def _add_step_facts(record: dict[str, Any], evaluations: list[dict], steps: list[dict]) -> None:
    """step_seconds = summed optimiser-step time (MFU's time for runs without a training phase);
    initial_val_ppl = the evaluation at 0 tokens, if any."""
    step_seconds = [s["step_seconds"] for s in steps if s.get("step_seconds") is not None]
    if step_seconds and len(step_seconds) == len(steps):
        record["step_seconds"] = float(sum(step_seconds))
    at_start = [e for e in evaluations if e.get("tokens_seen") == 0 and e.get("val_ppl") is not None]
    if at_start:
        record["initial_val_ppl"] = float(at_start[0]["val_ppl"])


def load_from_export(path: Path, experiment: str | None = None) -> StudyData:
    """Read run records from a ``runs`` export (.csv, .parquet) or ``runs --json`` output (.json)."""
    from wattscale.analysis.table_files import read_table

    frame = read_table(path, "--runs-file", (".csv", ".parquet", ".json"))
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"--runs-file: {path.name} lacks column(s) {missing}; export the runs table "
                          "(`wattscale export -o runs.csv`)")
    records = [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    if experiment is not None:
        records = [r for r in records if r.get("experiment") == experiment]
        if not records:
            raise ConfigError(f"--experiment: no runs of experiment {experiment!r} in {path}")
    return StudyData(experiment=experiment, source=f"file {path}",
                     runs=[r for r in records if r.get("status") == "finished"],
                     unfinished=[r for r in records if r.get("status") != "finished"])


def _clean(value: Any) -> Any:
    """pandas NaN/NA -> None, numpy scalars -> Python scalars."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency of the analysis extra
        pass
    return value
