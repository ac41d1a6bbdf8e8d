"""A run's energy from the store: the job and each phase per component with sources, the training phase,
every device with its mean, peak and idle watts, facility energy, CO2e and cost from user-given inputs
(`wattscale.footprint`), and the energy re-computed at lower sampling rates."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from wattscale.energy.integrate import resample_energy
from wattscale.errors import StoreError
from wattscale.footprint import FootprintSettings, run_footprint
from wattscale.store import Store
from wattscale.units import JOULES_PER_KWH

DEFAULT_RESAMPLE_HZ = (1000.0, 100.0, 10.0, 1.0, 0.1)


@dataclass(frozen=True)
class DeviceEnergy:
    """One device's energy over the whole job."""

    device: str
    component: str | None
    energy_j: float
    energy_kwh: float
    source: str
    complete: bool
    mean_power_w: float | None
    peak_power_w: float | None
    idle_power_w: float | None
    n_samples: int


@dataclass(frozen=True)
class EnergyReport:
    """A run's energy: the job total (by its rule), phases x components, devices; `co2e_g` only when a grid
    intensity was given. ``footprint`` (the job) and ``train_footprint`` (the training phase) are
    `wattscale.footprint.Footprint` dicts: facility energy, CO2e, cost, the inputs and the carbon basis."""

    run_id: str
    kind: str
    energy_j: float
    energy_kwh: float
    source: str | None
    total_components: list[str]
    total_rule: str | None
    complete: bool
    duration_s: float
    train: dict[str, Any]
    phases: list[dict[str, Any]]
    idle: dict[str, Any] | None
    devices: list[DeviceEnergy]
    grid_gco2e_per_kwh: float | None
    co2e_g: float | None
    sampling: dict
    resampled: list[dict]
    shared_host: list[dict]
    notes: list[str]
    footprint: dict[str, Any] | None = None
    train_footprint: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


def energy_report(store: Store, run_id: str, grid_gco2e_per_kwh: float | None = None,
                  resample_hz: tuple[float, ...] = DEFAULT_RESAMPLE_HZ, *,
                  footprint: FootprintSettings | None = None) -> EnergyReport:
    """Build the report of `run_id`.

    CO2e and cost come from `footprint` (default: none but PUE 1); `grid_gco2e_per_kwh` replaces its carbon
    intensity by a constant. Without either intensity, the run's own meter.grid_gco2e_per_kwh is used.
    """
    record = store.get_run(run_id)
    if record is None:
        raise StoreError(f"run_id: no run {run_id!r} in the store; see `wattscale runs`")
    rows = store.energy_measurements(run_id)
    run_rows = [r for r in rows if r["scope"] == "run"]
    if not run_rows:
        raise StoreError(f"run_id: run {run_id} has no energy measurements (status {record['status']}; "
                         "metering off, or the run has not finished)")
    settings = footprint or FootprintSettings()
    if grid_gco2e_per_kwh is not None:
        settings = replace(settings, carbon_intensity_g_per_kwh=grid_gco2e_per_kwh, carbon_intensity_csv=None)
    energy = json.loads(record.get("energy_json") or "{}")
    samples = store.power_samples(run_id)
    idle = {r["device"]: r for r in rows if r["scope"] == "idle"}
    devices, resampled = [], []
    for row in run_rows:
        t, p = _trace(samples, row["device"])
        idle_row = idle.get(row["device"])
        idle_w = (idle_row["energy_j"] / (idle_row["end_seconds"] - idle_row["start_seconds"])
                  if idle_row and idle_row["end_seconds"] > idle_row["start_seconds"] else None)
        duration = row["end_seconds"] - row["start_seconds"]
        devices.append(DeviceEnergy(
            device=row["device"], component=row.get("component"), energy_j=row["energy_j"],
            energy_kwh=row["energy_j"] / JOULES_PER_KWH, source=row["source"], complete=bool(row["complete"]),
            mean_power_w=row["energy_j"] / duration if duration > 0 else None,
            peak_power_w=float(p.max()) if p.size else None, idle_power_w=idle_w, n_samples=int(p.size)))
        if p.size >= 2:
            counter = row["energy_j"] if row["source"] == "counter" else None
            for r in resample_energy(t, p, resample_hz, counter_energy_j=counter):
                resampled.append({"device": row["device"], **r})
    total_j = record["energy_j"] if record["energy_j"] is not None else sum(d.energy_j for d in devices)
    details = json.loads(run_rows[0]["details_json"] or "{}")
    sampling = details.get("sampling") or {}
    if "ranks" in sampling:  # several ranks: the first rank's rate, every rank's gaps
        sampling = {**(sampling["ranks"][0] or {}), "ranks": sampling["ranks"]}
    job = energy.get("job") or {}
    job_print = run_footprint(record, settings, energy_j=total_j)
    train_print = (run_footprint(record, settings, energy_j=record["train_energy_j"])
                   if record.get("train_energy_j") is not None else None)
    return EnergyReport(
        run_id=run_id, kind=record.get("kind") or "train", energy_j=total_j, energy_kwh=total_j / JOULES_PER_KWH,
        source=record["energy_source"], total_components=list(job.get("total_components") or []),
        total_rule=energy.get("total_rule"), complete=all(d.complete for d in devices),
        duration_s=run_rows[0]["end_seconds"] - run_rows[0]["start_seconds"],
        train={"energy_j": record.get("train_energy_j"), "seconds": record.get("train_seconds"),
               "tokens": record.get("train_tokens"),
               "joules_per_token": _ratio(record.get("train_energy_j"), record.get("train_tokens"))},
        phases=[_phase_summary(p) for p in (energy.get("phases") or {}).values()],
        idle=_phase_summary(energy["idle"]) if energy.get("idle") else None,
        devices=devices, grid_gco2e_per_kwh=job_print.carbon_intensity_g_per_kwh if job_print else None,
        co2e_g=job_print.co2e_g if job_print else None,
        sampling={k: sampling.get(k) for k in ("sample_hz", "achieved_hz", "n_samples", "missed_deadlines", "gaps",
                                               "gap_messages")},
        resampled=resampled, shared_host=list(energy.get("shared_host") or []), notes=list(energy.get("notes") or []),
        footprint=job_print.as_dict() if job_print else None,
        train_footprint=train_print.as_dict() if train_print else None)


def _phase_summary(phase: dict[str, Any]) -> dict[str, Any]:
    """A phase from energy_json: its figures and per component joules with sources."""
    return {"phase": phase["phase"], "seconds": phase["seconds"], "tokens": phase["tokens"],
            "energy_j": phase["energy_j"], "source": phase["source"], "mean_power_w": phase.get("mean_power_w"),
            "joules_per_token": phase.get("joules_per_token"), "complete": phase.get("complete", True),
            "components": {name: {"energy_j": c["energy_j"], "source": c["source"]}
                           for name, c in (phase.get("components") or {}).items()}}


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _trace(samples: list[dict], device: str) -> tuple[np.ndarray, np.ndarray]:
    """(t_seconds, power_w) of one device, sorted by time, duplicate times dropped."""
    pairs = sorted((s["t_seconds"], s["power_w"]) for s in samples if s["device"] == device)
    if not pairs:
        return np.empty(0), np.empty(0)
    t, p = (np.asarray(x, dtype=float) for x in zip(*pairs, strict=True))
    keep = np.concatenate(([True], np.diff(t) > 0))
    return t[keep], p[keep]
