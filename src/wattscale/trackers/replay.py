"""Log a run from the store to a tracker: finished, diverged, failed, interrupted or still running.

What is logged (names and steps in `wattscale.trackers.metrics`):

- parameters: the run's id, kind, name, status, experiment, preset, seed, budget, device, parameter
  count, versions and command line; its configuration flattened (``config.train.lr``, ...); the source of
  every energy figure (``energy_source/job``, ``energy_source/PHASE``, ``source/DEVICE``) and each device's
  component; ``totals_basis`` says whether the totals are the run's own (``phase rows``) or, for a run
  that never reached its end, the sum of its intervals (``intervals``);
- per interval (the trainer's ``interval`` rows, one evaluation to the next, at step = tokens seen at
  the interval's end): energy, mean power, J/token and seconds per phase and for the job, and the
  cumulative energy;
- evaluations (``val_loss``, ``val_ppl``) and training losses (``train_loss``, at most N points) at their
  tokens seen;
- sampled power per device (``sampled_power_w/DEVICE``), averaged into at most N points, at step = job
  time in milliseconds;
- the run's totals per phase and for the job at its last step.

Nothing is recomputed from other settings: the figures are the store's rows, summed with the run's own
total rule, so they equal what ``wattscale energy`` and ``wattscale show`` print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from wattscale.energy.measurement import DeviceInfo, Ledger, PhaseEnergy, PhaseTally
from wattscale.energy.result import summarise_ledger
from wattscale.errors import ConfigError
from wattscale.trackers.base import Tracker, TrackerSpec, close_tracker, flatten_params, log_series, open_trackers
from wattscale.trackers.metrics import cumulative_metrics, interval_metrics, source_params, total_metrics

DEFAULT_MAX_POINTS = 1000
_RUN_PARAMS = ("run_id", "kind", "name", "status", "experiment", "preset", "seed", "repeat", "tokens_budget",
               "data_tokens", "epochs", "tokens_seen", "steps", "params_total", "flops_per_token", "device",
               "wattscale_version", "torch_version", "git_revision", "command_line", "created_at", "finished_at")


@dataclass(frozen=True)
class ReplaySummary:
    """What one run's replay logged: counts of params and metric values, and where they went."""

    run_id: str
    status: str
    params: int
    intervals: int
    evaluations: int
    train_losses: int
    power_points: int
    metric_values: int
    totals_basis: str | None
    tracker: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _devices(rows: Iterable[Mapping[str, Any]]) -> dict[str, DeviceInfo]:
    return {r["device"]: DeviceInfo(r["device"], r.get("component") or "unknown", "") for r in rows}


def _tally(rows: Iterable[Mapping[str, Any]]) -> PhaseTally:
    """One phase's tally from its rows (one per device, all with the phase's seconds and tokens)."""
    tally = PhaseTally()
    for row in rows:
        details = json.loads(row.get("details_json") or "{}")
        tally.seconds = max(tally.seconds, row.get("phase_seconds") or 0.0)
        tally.tokens = max(tally.tokens, int(details.get("tokens") or 0))
        tally.steps = max(tally.steps, int(details.get("steps") or 0))
        tally.add_energy({row["device"]: row["energy_j"]}, {row["device"]: row["source"]}, bool(row["complete"]),
                         details.get("errors") or [])
    return tally


def _ledger(rows: Sequence[Mapping[str, Any]]) -> Ledger:
    """Rows of one scope's span (phase rows of a run, of an interval) as a ledger."""
    ledger = Ledger()
    for phase in dict.fromkeys(r["phase"] for r in rows if r["phase"] is not None):
        ledger.phases[phase] = _tally([r for r in rows if r["phase"] == phase])
    return ledger


def _intervals(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int | None, Ledger]]:
    """The interval rows grouped by interval (its job-time bounds), in time order: (end tokens, ledger)."""
    spans: dict[tuple[float, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["scope"] == "interval":
            spans.setdefault((row["start_seconds"], row["end_seconds"]), []).append(row)
    return [(group[0].get("end_tokens"), _ledger(group)) for _, group in sorted(spans.items())]


def total_rule_of(record: Mapping[str, Any]) -> str:
    """The run's total rule (energy_json, else its meter settings, else the default ``measured``)."""
    for text, path in ((record.get("energy_json"), ("total_rule",)), (record.get("config_json"), ("meter", "total"))):
        try:
            value: Any = json.loads(text or "{}")
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
        except ValueError:
            value = None
        if isinstance(value, str):
            return value
    return "measured"


def run_params(record: Mapping[str, Any], devices: Mapping[str, DeviceInfo],
               sources: Mapping[str, str]) -> dict[str, Any]:
    """The parameters of a stored run: its record's facts, its configuration, devices and sources."""
    params: dict[str, Any] = {k: record.get(k) for k in _RUN_PARAMS if record.get(k) is not None}
    try:
        config = json.loads(record.get("config_json") or "{}")
    except ValueError:
        config = {}
    params.update(flatten_params(config, "config."))
    try:
        device_info = json.loads(record.get("device_info_json") or "{}")
    except ValueError:
        device_info = {}
    params.update(flatten_params(device_info if isinstance(device_info, dict) else {}, "device_info."))
    for device, info in devices.items():
        params[f"component/{device}"] = info.component
        if device in sources:
            params[f"source/{device}"] = sources[device]
    return params


def _downsample(samples: Sequence[Mapping[str, Any]], max_points: int) -> list[tuple[int, float]]:
    """One device's (ms, W) samples averaged in consecutive groups into at most `max_points` points."""
    if not samples or max_points <= 0:
        return []
    group = -(-len(samples) // max_points)  # ceil
    points = []
    for start in range(0, len(samples), group):
        chunk = samples[start:start + group]
        t_ms = round(1000 * sum(s["t_seconds"] for s in chunk) / len(chunk))
        points.append((t_ms, sum(s["power_w"] for s in chunk) / len(chunk)))
    return points


def _thin(rows: Sequence[Mapping[str, Any]], max_points: int) -> list[Mapping[str, Any]]:
    """Every k-th row so that at most `max_points` remain, always keeping the last."""
    if len(rows) <= max_points:
        return list(rows)
    k = -(-len(rows) // max_points)
    kept = list(rows[::k])
    return kept if kept[-1] is rows[-1] else [*kept[:max_points - 1], rows[-1]]


def replay_run(store: Any, run_id: str, tracker: Tracker, *, max_points: int = DEFAULT_MAX_POINTS,
               close: bool = True) -> ReplaySummary:
    """Log one stored run to `tracker` (see the module docstring); closes it with the run's status if `close`."""
    record = store.get_run(run_id)
    if record is None:
        raise ConfigError(f"RUN_ID: no run {run_id!r} in {store.display_url}; see `wattscale runs`")
    rows = store.energy_measurements(run_id)
    devices = _devices(r for r in rows if r["scope"] != "idle")
    rule = total_rule_of(record)
    run_rows = [r for r in rows if r["scope"] == "run"] or [r for r in rows if r["scope"] in ("phase", "interval")]
    sources = {r["device"]: r["source"] for r in run_rows}
    count = 0

    def send(metrics: Mapping[str, float | None], step: int) -> None:
        nonlocal count
        count += sum(1 for v in metrics.values() if v is not None)
        tracker.log_metrics(metrics, step)

    intervals = _intervals(rows)
    running = Ledger()
    last_step = 0
    for index, (end_tokens, ledger) in enumerate(intervals):
        step = int(end_tokens) if end_tokens is not None else index + 1
        job, phases, _ = summarise_ledger(ledger, devices, rule)
        for phase, tally in ledger.phases.items():
            _add(running.tally(phase), tally)
        so_far_job, so_far, _ = summarise_ledger(running, devices, rule)
        send({**interval_metrics(phases, job), **cumulative_metrics(so_far, so_far_job)}, step)
        last_step = max(last_step, step)
    evaluations = store.evaluations(run_id)
    for row in evaluations:
        send({"val_loss": row["val_loss"], "val_ppl": row["val_ppl"]}, int(row["tokens_seen"]))
    losses = _thin(store.train_steps(run_id), max_points)
    for row in losses:
        send({"train_loss": row["loss"]}, int(row["tokens_seen"]))
    power_points = 0
    samples = store.power_samples(run_id)
    for device in dict.fromkeys(s["device"] for s in samples):
        points = _downsample([s for s in samples if s["device"] == device], max_points)
        log_series(tracker, f"sampled_power_w/{device}", points)
        power_points += len(points)
    count += power_points
    job, phases, basis = _totals(rows, running, devices, rule)
    final_step = int(record.get("tokens_seen") or 0) or last_step
    if job is not None:
        send(total_metrics(phases, job), final_step)
    params = {**run_params(record, devices, sources), "total_rule": rule}
    if job is not None:
        params.update({**source_params(phases, job), "totals_basis": basis})
    params["metric_step"] = "training tokens seen (sampled_power_w: job time in ms)"
    tracker.log_params(params)
    if close:
        close_tracker(tracker, record["status"])
    describe = getattr(tracker, "describe", None)
    return ReplaySummary(run_id, record["status"], len(params), len(intervals), len(evaluations), len(losses),
                         power_points, count, basis if job is not None else None,
                         describe() if describe is not None else {"kind": type(tracker).__name__})


def _add(target: PhaseTally, tally: PhaseTally) -> None:
    target.seconds += tally.seconds
    target.tokens += tally.tokens
    target.steps += tally.steps
    target.add_energy(tally.energy_j, tally.sources, tally.complete, tally.errors)


def _totals(rows: Sequence[Mapping[str, Any]], intervals: Ledger, devices: Mapping[str, DeviceInfo],
            rule: str) -> tuple[PhaseEnergy | None, dict[str, PhaseEnergy], str]:
    """The run's totals from its phase rows, else (a run that did not reach its end) from its intervals."""
    phase_rows = [r for r in rows if r["scope"] == "phase"]
    if phase_rows:
        job, phases, _ = summarise_ledger(_ledger(phase_rows), devices, rule)
        return job, phases, "phase rows"
    if intervals.phases:
        job, phases, _ = summarise_ledger(intervals, devices, rule)
        return job, phases, "intervals"
    return None, {}, "none"


def select_runs(store: Any, run_ids: Sequence[str], experiment: str | None) -> list[str]:
    """The runs to export: the ids given (each must exist), an experiment's runs, or every run in the store."""
    if run_ids:
        for run_id in run_ids:
            if store.get_run(run_id) is None:
                raise ConfigError(f"RUN_ID: no run {run_id!r} in {store.display_url}; see `wattscale runs`")
        return list(dict.fromkeys(run_ids))
    runs = store.list_runs(experiment=experiment)
    if experiment is not None and not runs:
        raise ConfigError(f"--experiment: no runs of experiment {experiment!r} in {store.display_url}; see "
                          "`wattscale experiments`")
    return [r["run_id"] for r in runs if r["status"] != "pending"]


def export_runs(store: Any, run_ids: Sequence[str], spec: TrackerSpec, *,
                max_points: int = DEFAULT_MAX_POINTS) -> list[ReplaySummary]:
    """Replay each run into its own tracker run (named after the run) of `spec`."""
    summaries = []
    for run_id in run_ids:
        record = store.get_run(run_id) or {}
        name = record.get("name") or run_id
        (tracker,) = open_trackers([spec], run_name=name if name == run_id else f"{name}-{run_id}")
        try:
            summaries.append(replay_run(store, run_id, tracker, max_points=max_points))
        except BaseException:
            close_tracker(tracker, "failed")
            raise
    return summaries
