"""Gather what the report shows from the store, as plain JSON-ready data (no HTML here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wattscale.analysis.efficiency import basis_figures
from wattscale.analysis.study.data import condition_of
from wattscale.errors import ConfigError
from wattscale.report.queries import val_loss_curves
from wattscale.report.summary import minmax_downsample
from wattscale.store import Store

# Points kept per device for the power figure (min/max per bucket); the stored trace is never thinned.
DEFAULT_MAX_POWER_POINTS = 2_000


@dataclass(frozen=True)
class ReportData:
    """Everything the built-in sections draw, read once from the store.

    runs: run records (every ``runs`` column, plus ``condition``, and on the report's energy basis
    ``basis_energy_j``, ``tokens_per_joule`` and the ``energy_basis`` each run could use) in run order.
    conditions: condition labels in display order. curves: run_id -> [(tokens_seen, val_loss)].
    power_run: the run whose power is drawn (or None); power: device -> {"t_seconds", "power_w",
    "n_samples"} (thinned for display); intervals: that run's ``interval`` energy rows.
    """

    store: str
    experiment_name: str | None
    experiment: dict[str, Any] | None
    runs: list[dict[str, Any]]
    conditions: list[str]
    curves: dict[str, list[tuple[int, float | None]]]
    power_run: dict[str, Any] | None
    power: dict[str, dict[str, Any]]
    intervals: list[dict[str, Any]]
    experiments: list[dict[str, Any]] = field(default_factory=list)
    generated_at: str = ""
    energy_basis: str = "train"  # train: the training phase; job: the whole job


def _condition_sort_key(run: dict[str, Any]) -> tuple:
    # Grid values in numeric order where they are numbers (data_tokens=500000 before 1000000).
    if run.get("condition_json"):
        try:
            values = json.loads(run["condition_json"])
        except ValueError:
            values = {}
        if isinstance(values, dict):
            return (0, tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values.values()))
    return (1, ((0, run.get("params_total") or 0, ""), (0, run.get("tokens_budget") or 0, "")))


def gather(store: Store, experiment: str | None = None, run_id: str | None = None,
           max_power_points: int = DEFAULT_MAX_POWER_POINTS, energy_basis: str = "train") -> ReportData:
    """Read an experiment's runs (or every run in the store) and one run's power trace.

    ``run_id`` picks the run whose power and interval energy are drawn (default: the first
    finished run in run order). An unknown experiment or run id raises ConfigError.
    """
    record = store.get_experiment(experiment) if experiment is not None else None
    runs = store.list_runs(experiment=experiment)
    if experiment is not None and record is None and not runs:
        known = ", ".join(repr(e["name"]) for e in store.list_experiments()) or "none"
        raise ConfigError(f"--experiment: no experiment {experiment!r} in {store.display_url} "
                          f"(experiments there: {known}); see `wattscale experiments`")
    experiments = store.list_experiments() if experiment is None else []
    if experiment is None:
        _label_planned_runs(store, runs, experiments)
    if record is not None:
        record = dict(record)
        record["spec"] = json.loads(record.pop("spec_json"))
        record["planned_runs"] = len(store.experiment_runs(experiment))
    for run in runs:
        run["condition"] = condition_of(run)
        energy, tokens, _, run["energy_basis"] = basis_figures(run, energy_basis)
        run["basis_energy_j"] = energy
        run["tokens_per_joule"] = tokens / energy if energy and tokens else None
    order: dict[str, tuple] = {}
    for run in runs:
        key = _condition_sort_key(run)
        order[run["condition"]] = min(order.get(run["condition"], key), key)
    conditions = sorted(order, key=lambda c: (order[c], c))
    power_run = _power_run(store, runs, run_id)
    power, intervals = _power_and_intervals(store, power_run, max_power_points)
    return ReportData(
        store=store.display_url, experiment_name=experiment, experiment=record, runs=runs, conditions=conditions,
        curves=val_loss_curves(store, [r["run_id"] for r in runs if r["status"] == "finished"]),
        power_run=power_run, power=power, intervals=intervals,
        experiments=experiments, energy_basis=energy_basis,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"))


def _label_planned_runs(store: Store, runs: list[dict[str, Any]], experiments: list[dict[str, Any]]) -> None:
    """In an all-runs report, give each planned run its experiment's condition (prefixed by the
    experiment's name when the store holds several)."""
    by_id = {run["run_id"]: run for run in runs}
    for exp in experiments:
        for planned in store.experiment_runs(exp["name"]):
            run = by_id.get(planned["run_id"])
            if run is not None and not run.get("condition"):
                prefix = f"{exp['name']}: " if len(experiments) > 1 else ""
                run["condition"] = prefix + planned["condition"]
                run["condition_json"] = planned["condition_json"]


def _power_run(store: Store, runs: list[dict[str, Any]], run_id: str | None) -> dict[str, Any] | None:
    if run_id is not None:
        for run in runs:
            if run["run_id"] == run_id:
                return run
        found = store.get_run(run_id)
        if found is None:
            raise ConfigError(f"--run: no run {run_id!r} in {store.display_url}; see `wattscale runs`")
        found["condition"] = condition_of(found)
        return found
    finished = [r for r in runs if r["status"] == "finished"]
    return (finished or runs or [None])[0]


def _power_and_intervals(store: Store, run: dict[str, Any] | None,
                         max_points: int) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    if run is None:
        return {}, []
    by_device: dict[str, tuple[list[float], list[float]]] = {}
    for sample in store.power_samples(run["run_id"]):
        t, w = by_device.setdefault(sample["device"], ([], []))
        t.append(sample["t_seconds"])
        w.append(sample["power_w"])
    power = {}
    for device, (t, w) in by_device.items():
        shown_t, shown_w = minmax_downsample(t, w, max_points)
        power[device] = {"t_seconds": shown_t, "power_w": shown_w, "n_samples": len(t)}
    intervals = [m for m in store.energy_measurements(run["run_id"]) if m["scope"] == "interval"]
    return power, intervals
