"""What a measurement accumulates: per phase, its seconds, tokens and joules per device; and how devices
make up components and components a total.

A `Ledger` is the raw record a `Monitor` keeps (and a checkpoint saves, and ranks merge): for every phase,
the seconds spent in it, the tokens and steps counted in it, and the joules of every device with the
device's source. Everything a user sees (`PhaseEnergy`, per component, with a total) is derived from a
ledger by `summarise`, so merging ranks or resuming a run works on the raw numbers only.

**Phases** (DESIGN.md, "Phases"): ``idle`` (the baseline before the job), ``warmup`` (compile and the
first steps), ``train`` (optimiser steps), ``eval``, ``checkpoint``, ``save`` (final weights) and
``other`` (time outside any phase). The job is every phase but ``idle``; its phases add up to it exactly,
because each boundary is one meter reading that ends one phase and starts the next.

**Components**: ``gpu`` (NVML), ``cpu_package`` and ``dram`` (RAPL), ``cpu_estimate`` (a model of this
process tree's CPU power). They are never merged into one another. A total adds components by a rule:
``measured`` (the default) adds the measured ones only (an estimate is reported beside them, not
absorbed; if nothing was measured, the estimate is the total and says so), ``all`` adds every component
and labels a total that mixes measured and estimated energy ``mixed``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from wattscale.energy.meter import TOTAL_RULES
from wattscale.energy.sampler import MAX_WINDOW_ERRORS, SOURCE_ORDER, EnergyWindow, weakest_source

IDLE_PHASE = "idle"
OTHER_PHASE = "other"
BUILTIN_PHASES = ("idle", "warmup", "train", "eval", "checkpoint", "save", "other")
COMPONENTS = ("gpu", "cpu_package", "dram", "cpu_estimate")
HOST_WIDE_COMPONENTS = ("cpu_package", "dram")  # they count every process on the host, not just this one
MIXED = "mixed"


@dataclass
class PhaseTally:
    """One phase's raw totals: seconds, tokens, steps, joules and source per device, completeness, errors."""

    seconds: float = 0.0
    tokens: int = 0
    steps: int = 0
    energy_j: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    errors: list[str] = field(default_factory=list)

    def add_window(self, window: EnergyWindow | None, seconds: float) -> None:
        """Add a segment: its seconds and, when metered, its energy per device."""
        self.seconds += seconds
        if window is not None:
            sources = {d: window.sources.get(d, window.source) for d in window.energy_j}
            self.add_energy(window.energy_j, sources, window.complete, window.errors)

    def add_energy(self, energy_j: Mapping[str, float], sources: Mapping[str, str], complete: bool,
                   errors: Iterable[str]) -> None:
        """Add joules per device (each device's source becomes the weakest seen), completeness and errors."""
        for device, joules in energy_j.items():
            self.energy_j[device] = self.energy_j.get(device, 0.0) + joules
            self.sources[device] = weakest_source([self.sources.get(device, sources[device]), sources[device]])
        self.complete = self.complete and complete
        for message in errors:
            if message not in self.errors and len(self.errors) < MAX_WINDOW_ERRORS:
                self.errors.append(message)

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON (checkpoints, collectives)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhaseTally:
        """Inverse of to_json."""
        return cls(float(data["seconds"]), int(data["tokens"]), int(data["steps"]), dict(data["energy_j"]),
                   dict(data["sources"]), bool(data["complete"]), list(data["errors"]))


@dataclass
class Ledger:
    """Per phase (in the order phases were first used), what was measured in it."""

    phases: dict[str, PhaseTally] = field(default_factory=dict)

    def tally(self, phase: str) -> PhaseTally:
        """The phase's tally, created empty on first use."""
        if phase not in self.phases:
            self.phases[phase] = PhaseTally()
        return self.phases[phase]

    def copy(self) -> Ledger:
        """A deep copy."""
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {phase: tally.to_json() for phase, tally in self.phases.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Ledger:
        """Inverse of to_json; None gives an empty ledger."""
        return cls({phase: PhaseTally.from_json(t) for phase, t in (data or {}).items()})

    def job_phases(self) -> list[str]:
        """The phases of the job (all but the idle baseline)."""
        return [p for p in self.phases if p != IDLE_PHASE]


def merge_ledgers(ledgers: list[Ledger]) -> Ledger:
    """Ledgers of the same job measured on disjoint devices (the ranks of one run) as one.

    Time, tokens and steps are the job's, taken from the first ledger (every rank runs the same phases in
    lockstep and counts the same global tokens); joules and sources are the union of the devices.
    """
    merged = ledgers[0].copy() if ledgers else Ledger()
    for other in ledgers[1:]:
        for phase, tally in other.phases.items():
            target = merged.tally(phase)
            target.energy_j.update(tally.energy_j)
            target.sources.update(tally.sources)
            target.complete = target.complete and tally.complete
            target.errors.extend(m for m in tally.errors if m not in target.errors)
    return merged


@dataclass(frozen=True)
class DeviceInfo:
    """One measured device: its name in the rows ("gpu0", "rank1/package-0"), component and meter."""

    device: str
    component: str
    meter: str
    uuid: str | None = None

    @property
    def host_wide(self) -> bool:
        """True for counters that see every process on the host (RAPL package and DRAM)."""
        return self.component in HOST_WIDE_COMPONENTS

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceInfo:
        """Inverse of to_json."""
        return cls(str(data["device"]), str(data["component"]), str(data["meter"]), data.get("uuid"))


@dataclass(frozen=True)
class ComponentEnergy:
    """One component's energy in one phase: joules, source, devices, mean watts."""

    component: str
    energy_j: float
    source: str
    devices: tuple[str, ...]
    complete: bool
    mean_power_w: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "devices": list(self.devices)}


@dataclass(frozen=True)
class PhaseEnergy:
    """A phase (or the whole job): time, tokens, energy per component and in total, with sources.

    ``energy_j`` is the total by the measurement's rule (see the module docstring); ``total_components``
    lists what it adds and ``source`` is ``counter`` / ``integrated`` / ``estimated`` / ``mixed``. Energy
    is None when nothing was metered (never a silent zero).
    """

    phase: str
    seconds: float
    tokens: int
    steps: int
    components: dict[str, ComponentEnergy]
    energy_j: float | None
    source: str | None
    total_components: tuple[str, ...]
    complete: bool
    errors: tuple[str, ...] = ()

    @property
    def mean_power_w(self) -> float | None:
        """Total energy over the phase's seconds."""
        return self.energy_j / self.seconds if self.energy_j is not None and self.seconds > 0 else None

    @property
    def joules_per_token(self) -> float | None:
        """Total energy per token counted in the phase (None without tokens or energy)."""
        return self.energy_j / self.tokens if self.energy_j is not None and self.tokens > 0 else None

    @property
    def tokens_per_joule(self) -> float | None:
        """Tokens counted in the phase per joule of its total energy."""
        return self.tokens / self.energy_j if self.energy_j and self.tokens > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures."""
        return {"phase": self.phase, "seconds": self.seconds, "tokens": self.tokens, "steps": self.steps,
                "energy_j": self.energy_j, "source": self.source, "total_components": list(self.total_components),
                "mean_power_w": self.mean_power_w, "joules_per_token": self.joules_per_token,
                "tokens_per_joule": self.tokens_per_joule, "complete": self.complete, "errors": list(self.errors),
                "components": {name: c.to_dict() for name, c in self.components.items()}}


def combined_tally(tallies: Iterable[PhaseTally]) -> PhaseTally:
    """Several tallies (phases of one job) as one: time, tokens, steps and joules added, sources weakest."""
    out = PhaseTally()
    for tally in tallies:
        out.seconds += tally.seconds
        out.tokens += tally.tokens
        out.steps += tally.steps
        out.add_energy(tally.energy_j, tally.sources, tally.complete, tally.errors)
    return out


def summarise_phase(phase: str, tallies: Iterable[PhaseTally], devices: Mapping[str, DeviceInfo],
                    rule: str) -> PhaseEnergy:
    """A phase's (or several phases' summed) energy per component and in total, by `rule`."""
    tally = combined_tally(tallies)
    seconds = tally.seconds
    components: dict[str, ComponentEnergy] = {}
    for component in _ordered_components(devices, tally.energy_j):
        names = tuple(d for d in tally.energy_j if _component(devices, d) == component)
        joules = sum(tally.energy_j[d] for d in names)
        source = weakest_source([tally.sources[d] for d in names])
        components[component] = ComponentEnergy(component, joules, source, names, tally.complete,
                                                joules / seconds if seconds > 0 else None)
    energy_j, source, included = total_of(components, rule)
    return PhaseEnergy(phase=phase, seconds=seconds, tokens=tally.tokens, steps=tally.steps, components=components,
                       energy_j=energy_j, source=source, total_components=included, complete=tally.complete,
                       errors=tuple(tally.errors[:MAX_WINDOW_ERRORS]))


def total_of(components: Mapping[str, ComponentEnergy], rule: str) -> tuple[float | None, str | None,
                                                                             tuple[str, ...]]:
    """(joules, source, components added) of a total by `rule`; (None, None, ()) when nothing was metered."""
    if rule not in TOTAL_RULES:
        raise ValueError(f"total rule {rule!r} is not one of {TOTAL_RULES}")
    if not components:
        return None, None, ()
    measured = [c for c in components.values() if c.source != "estimated"]
    chosen = list(components.values()) if rule == "all" or not measured else measured
    sources = {c.source for c in chosen}
    if "estimated" in sources and len(sources) > 1:
        source = MIXED
    else:
        source = weakest_source(sorted(sources, key=SOURCE_ORDER.index))
    return float(sum(c.energy_j for c in chosen)), source, tuple(c.component for c in chosen)


def _component(devices: Mapping[str, DeviceInfo], device: str) -> str:
    info = devices.get(device)
    return info.component if info is not None else "unknown"


def _ordered_components(devices: Mapping[str, DeviceInfo], device_j: Mapping[str, float]) -> list[str]:
    present = {_component(devices, d) for d in device_j}
    return [c for c in COMPONENTS if c in present] + sorted(present - set(COMPONENTS))
