"""What a `Monitor` returns: the job and each phase with energy per component, windows, and how it was measured.

Everything is a frozen dataclass with units in its field names and a `to_dict()` that goes straight to
JSON. The raw `Ledger` travels along (not in `to_dict()`), so results of several ranks can be merged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wattscale.energy.host import Overlap
from wattscale.energy.measurement import IDLE_PHASE, DeviceInfo, Ledger, PhaseEnergy, summarise_phase

JOB = "job"


@dataclass(frozen=True)
class WindowResult:
    """A named window: its job-time and token bounds, its total and its split by phase."""

    name: str
    start_s: float  # seconds of the job (a resumed run's job time continues across sessions)
    end_s: float
    start_tokens: int
    end_tokens: int
    total: PhaseEnergy
    phases: dict[str, PhaseEnergy]
    ledger: Ledger = field(repr=False, compare=False)

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"name": self.name, "start_s": self.start_s, "end_s": self.end_s, "start_tokens": self.start_tokens,
                "end_tokens": self.end_tokens, "total": self.total.to_dict(),
                "phases": {name: p.to_dict() for name, p in self.phases.items()}}


@dataclass(frozen=True)
class MonitorResult:
    """A whole measurement.

    ``job`` sums every phase but the idle baseline; ``phases`` holds each job phase (``warmup``, ``train``,
    ``eval``, ``checkpoint``, ``save``, ``other``, or your own names) and they add up to ``job``. ``idle`` is
    the baseline measured before the job (None if none was). ``status`` is ``finished``, or ``failed`` /
    ``interrupted`` when the code under measurement raised (the figures then cover the part that ran).
    """

    job: PhaseEnergy
    phases: dict[str, PhaseEnergy]
    idle: PhaseEnergy | None
    devices: dict[str, DeviceInfo]
    total_rule: str
    status: str = "finished"
    name: str | None = None
    run_id: str | None = None
    sampling: dict[str, Any] | None = None
    shared_host: tuple[Overlap, ...] = ()
    notes: tuple[str, ...] = ()
    windows: dict[str, WindowResult] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger, repr=False, compare=False)

    def phase(self, name: str) -> PhaseEnergy:
        """One job phase, or an empty one (0 s, no energy) if the job never entered it."""
        if name in self.phases:
            return self.phases[name]
        if name == IDLE_PHASE and self.idle is not None:
            return self.idle
        return summarise_phase(name, [], self.devices, self.total_rule)

    @property
    def energy_j(self) -> float | None:
        """The job's total energy (by the total rule); None when nothing was metered."""
        return self.job.energy_j

    @property
    def source(self) -> str | None:
        """The job total's source: counter / integrated / estimated / mixed."""
        return self.job.source

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every figure with its unit in its name and its source."""
        return {
            "name": self.name, "run_id": self.run_id, "status": self.status, "total_rule": self.total_rule,
            "job": self.job.to_dict(), "phases": {name: p.to_dict() for name, p in self.phases.items()},
            "idle": None if self.idle is None else self.idle.to_dict(),
            "devices": [d.to_json() for d in self.devices.values()],
            "sampling": self.sampling, "shared_host": [o.to_dict() for o in self.shared_host],
            "notes": list(self.notes), "windows": {name: w.to_dict() for name, w in self.windows.items()},
        }

    def to_json(self, **kwargs: Any) -> str:
        """to_dict() as a JSON string."""
        return json.dumps(self.to_dict(), **kwargs)


def summarise_ledger(ledger: Ledger, devices: Mapping[str, DeviceInfo], rule: str,
                     total_name: str = JOB) -> tuple[PhaseEnergy, dict[str, PhaseEnergy], PhaseEnergy | None]:
    """(job, job phases, idle) of a ledger; the job's `phase` is `total_name`."""
    job_phases = ledger.job_phases()
    phases = {p: summarise_phase(p, [ledger.phases[p]], devices, rule) for p in job_phases}
    job = summarise_phase(total_name, [ledger.phases[p] for p in job_phases], devices, rule)
    idle = (summarise_phase(IDLE_PHASE, [ledger.phases[IDLE_PHASE]], devices, rule)
            if IDLE_PHASE in ledger.phases else None)
    return job, phases, idle


def window_result(name: str, ledger: Ledger, devices: Mapping[str, DeviceInfo], rule: str, start_s: float,
                  end_s: float, start_tokens: int, end_tokens: int) -> WindowResult:
    """A window's result from its own ledger."""
    total, phases, _ = summarise_ledger(ledger, devices, rule, total_name="total")
    return WindowResult(name, start_s, end_s, start_tokens, end_tokens, total, phases, ledger)
