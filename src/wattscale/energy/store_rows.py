"""A measurement in the results database: `energy_measurements` rows by phase and device, and the run's fields.

The trainer and `Monitor(store=...)` write the same rows:

- scope ``run``: per device, the whole job (phase NULL), with the sampling statistics and meters;
- scope ``phase``: per device and job phase, the whole run (``phase_seconds`` = time in the phase);
- scope ``interval``: per device and phase, between two evaluations (the trainer);
- scope ``window``: per device and phase, a user's named window (``details_json`` has its name);
- scope ``idle``: per device, the baseline before the job.

A run's ``energy_j`` is the job's total by the measurement's rule and ``energy_source`` its source
(counter / integrated / estimated / mixed); ``train_energy_j``, ``train_seconds`` and ``train_tokens`` are
the training phase's; ``energy_json`` holds the whole `MonitorResult` (phases x components, idle, shared
host, notes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from wattscale.energy.measurement import IDLE_PHASE, DeviceInfo, Ledger, PhaseTally, combined_tally
from wattscale.energy.result import MonitorResult, WindowResult

TRAIN_PHASE = "train"


def _rows(tally: PhaseTally, phase: str | None, scope: str, devices: Mapping[str, DeviceInfo], start_s: float,
          end_s: float, start_tokens: int | None, end_tokens: int | None,
          details: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per device of a tally."""
    rows = []
    for device, joules in tally.energy_j.items():
        info = devices.get(device)
        seconds = tally.seconds
        rows.append({
            "device": device, "component": info.component if info else None, "scope": scope, "phase": phase,
            "phase_seconds": seconds if phase is not None else None,
            "start_tokens": start_tokens, "end_tokens": end_tokens, "start_seconds": start_s, "end_seconds": end_s,
            "energy_j": joules, "source": tally.sources[device], "complete": tally.complete,
            "details_json": json.dumps({"mean_power_w": joules / seconds if seconds > 0 else None,
                                        "tokens": tally.tokens, "steps": tally.steps,
                                        "errors": tally.errors, **(details or {})}, default=str)})
    return rows


def split_rows(ledger: Ledger, scope: str, devices: Mapping[str, DeviceInfo], start_s: float, end_s: float,
               start_tokens: int | None, end_tokens: int | None,
               details: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows per device and job phase of a ledger (a run's `phase` rows, an interval's, a window's)."""
    return [row for phase in ledger.job_phases()
            for row in _rows(ledger.phases[phase], phase, scope, devices, start_s, end_s, start_tokens, end_tokens,
                             details)]


def window_rows(window: WindowResult, devices: Mapping[str, DeviceInfo], scope: str = "interval") -> list[dict]:
    """A closed window's rows per device and phase (scope ``interval`` for the trainer's, else ``window``)."""
    details = {"window": window.name} if scope == "window" else None
    return split_rows(window.ledger, scope, devices, window.start_s, window.end_s, window.start_tokens,
                      window.end_tokens, details)


def idle_rows(result: MonitorResult) -> list[dict[str, Any]]:
    """The idle baseline's rows, at negative times before the job."""
    tally = result.ledger.phases.get(IDLE_PHASE)
    if tally is None:
        return []
    return _rows(tally, IDLE_PHASE, "idle", result.devices, -tally.seconds, 0.0, None, None)


def final_rows(result: MonitorResult, job_start_s: float, job_end_s: float, tokens_seen: int) -> list[dict[str, Any]]:
    """The ``phase`` rows and the ``run`` rows (per device, whole job) written when a run ends."""
    rows = split_rows(result.ledger, "phase", result.devices, job_start_s, job_end_s, 0, tokens_seen)
    job = combined_tally(result.ledger.phases[p] for p in result.ledger.job_phases())
    details = {"sampling": result.sampling, "meters": [d.to_json() for d in result.devices.values()]}
    return rows + _rows(job, None, "run", result.devices, job_start_s, job_end_s, 0, tokens_seen, details)


def run_fields(result: MonitorResult) -> dict[str, Any]:
    """The runs-table fields of a finished measurement (energy None when nothing was metered)."""
    train = result.phase(TRAIN_PHASE)
    fields: dict[str, Any] = {"energy_j": result.job.energy_j, "energy_source": result.job.source,
                              "train_energy_j": train.energy_j, "train_seconds": train.seconds,
                              "train_tokens": train.tokens, "energy_json": energy_json(result)}
    problems = sorted({m for p in result.phases.values() for m in p.errors})
    if result.job.energy_j is not None and not result.job.complete:
        fields["message"] = ("energy incomplete: a meter failed during the run (gaps in energy_measurements)"
                             + (f": {problems[0]}" if problems else ""))
    return fields


def energy_json(result: MonitorResult) -> str:
    """The result as stored in runs.energy_json (windows are in their own rows)."""
    data = result.to_dict()
    data.pop("windows", None)
    return json.dumps(data, default=str)
