"""CO2e and cost as efficiency metrics of stored runs (`wattscale.footprint` applied to each run's basis energy).

With a carbon intensity (flags, ``WATTSCALE_*``, an experiment file's ``[footprint]``, or a run's own
``meter.grid_gco2e_per_kwh``) the analysis gains ``co2e_g`` (facility CO2e of the run's basis energy) and
``co2e_g_per_token`` (over the basis tokens); with a price, ``cost`` (in the stated currency). The basis is
the analysis's energy basis (the training phase by default, else the whole job), times the PUE; a series
is weighted over the run's started_at..finished_at (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wattscale.analysis.efficiency import MetricFn, basis_figures
from wattscale.footprint import FootprintSettings, run_footprint

# (name, unit, higher_is_better); cost's unit is the currency given.
FOOTPRINT_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("co2e_g", "gCO2e", False),
    ("co2e_g_per_token", "gCO2e/token", False),
    ("cost", "currency", False),
)


@dataclass(frozen=True)
class StudyFootprint:
    """Per run: its footprint dict (or None without energy) and basis tokens; the metric functions to add."""

    settings: FootprintSettings
    energy_basis: str
    prints: dict[str, dict[str, Any] | None]
    tokens: dict[str, float | None]
    metrics: dict[str, MetricFn] = field(default_factory=dict)

    def units(self) -> dict[str, str]:
        """Metric name -> unit of the metrics this study gained."""
        units = {name: unit for name, unit, _ in FOOTPRINT_METRICS}
        units["cost"] = self.settings.currency or "currency"
        return {name: units[name] for name in self.metrics}

    def run_fields(self, run_id: str) -> dict[str, Any]:
        """What a run's analysis row states next to its CO2e and cost (flat, for the tidy CSV too)."""
        if not self.metrics:
            return {}
        found = self.prints.get(run_id) or {}
        return {"facility_energy_j": found.get("facility_energy_j"),
                "carbon_intensity_g_per_kwh": found.get("carbon_intensity_g_per_kwh"),
                "carbon_basis": found.get("carbon_basis"), "currency": found.get("currency"),
                "footprint_inputs": found.get("inputs")}

    def reason(self, run_id: str, metric: str) -> str | None:
        """Why `metric` has no value for a run that has energy (a series that misses the run), else None."""
        found = self.prints.get(run_id)
        if found is None or metric not in ("co2e_g", "co2e_g_per_token") or found.get("co2e_g") is not None:
            return None
        return found.get("carbon_basis") or "no carbon intensity given"

    def to_dict(self) -> dict[str, Any]:
        """The analysis's ``footprint`` object: whether it applies, the inputs and the energy it rests on."""
        energy = ("each run's training-phase energy (the job's where a run has no phases: see its energy_basis)"
                  if self.energy_basis == "train" else "each run's whole-job energy")
        return {"configured": bool(self.metrics), "inputs": self.settings.describe(),
                "settings": self.settings.as_dict(), "metrics": self.units(), "energy": energy,
                "window": "a carbon-intensity series is time-weighted over each run's started_at..finished_at (UTC)"}


def study_footprint(records: Sequence[Mapping[str, Any]], settings: FootprintSettings | None,
                    energy_basis: str) -> StudyFootprint:
    """Each run's footprint on `energy_basis`, and the metrics that apply (none without a carbon intensity or
    price)."""
    settings = settings or FootprintSettings()
    prints: dict[str, dict[str, Any] | None] = {}
    tokens: dict[str, float | None] = {}
    for record in records:
        energy, basis_tokens, _, _ = basis_figures(record, energy_basis)
        found = run_footprint(record, settings, energy_j=energy) if energy is not None else None
        prints[str(record.get("run_id"))] = found.as_dict() if found else None
        tokens[str(record.get("run_id"))] = basis_tokens
    metrics: dict[str, MetricFn] = {}
    if any(p and p["carbon_basis"] for p in prints.values()):
        metrics["co2e_g"] = lambda r: _field(prints, r, "co2e_g")
        metrics["co2e_g_per_token"] = lambda r: _per_token(prints, tokens, r)
    if settings.price_per_kwh is not None:
        metrics["cost"] = lambda r: _field(prints, r, "cost")
    return StudyFootprint(settings, energy_basis, prints, tokens, metrics)


def _field(prints: Mapping[str, dict[str, Any] | None], record: Mapping[str, Any], key: str) -> float | None:
    found = prints.get(str(record.get("run_id")))
    return found.get(key) if found else None


def _per_token(prints: Mapping[str, dict[str, Any] | None], tokens: Mapping[str, float | None],
               record: Mapping[str, Any]) -> float | None:
    co2e, n = _field(prints, record, "co2e_g"), tokens.get(str(record.get("run_id")))
    return co2e / n if co2e is not None and n else None
