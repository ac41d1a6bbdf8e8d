"""Carbon and cost of measured energy: facility energy (PUE), CO2e and electricity cost.

Every figure here is derived from a run's energy and three inputs the user states; nothing is looked up on a
network. ``facility energy = device energy x PUE``; ``CO2e = facility kWh x carbon intensity``; ``cost =
facility kWh x price``. The carbon intensity is either one constant (gCO2e/kWh) or a CSV time series of the
user's grid (one row per period: a UTC timestamp and gCO2e/kWh, each value holding until the next row's
time). For a run with a start and end, a series gives the time-weighted mean intensity over the run; for a
planned run (no times yet) the time-weighted mean of the whole series, and the basis says which.

The time weighting assumes the run's power was steady over its window (training runs are); a run whose
power varied strongly over hours of a varying grid is weighted by time, not by when its joules were drawn.

Settings come from, highest first: command-line flags, environment variables (`ENV_VARS`), the experiment
file's ``[footprint]`` table. `FootprintSettings.describe` states the inputs next to every figure.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from wattscale.errors import ConfigError
from wattscale.units import JOULES_PER_KWH

# Environment variables a shell profile can set once (lower precedence than flags, higher than files).
ENV_VARS = {
    "carbon_intensity": "WATTSCALE_CARBON_INTENSITY",  # gCO2e/kWh, or a CSV path
    "price_per_kwh": "WATTSCALE_PRICE_PER_KWH",
    "currency": "WATTSCALE_CURRENCY",
    "pue": "WATTSCALE_PUE",
}
TIME_COLUMNS = ("timestamp", "time", "datetime", "start", "period_start")
INTENSITY_COLUMNS = ("g_per_kwh", "gco2e_per_kwh", "carbon_intensity_g_per_kwh", "carbon_intensity", "intensity")
MAX_PUE = 5.0  # above any data centre's; catches a percentage or a kWh figure given by mistake


@dataclass(frozen=True)
class FootprintSettings:
    """What turns joules into facility energy, CO2e and cost. All optional; PUE defaults to 1 (device energy)."""

    carbon_intensity_g_per_kwh: float | None = None  # a constant grid intensity, in gCO2e/kWh
    carbon_intensity_csv: str | None = None  # or a CSV of timestamp,g_per_kwh rows (UTC; relative to the file's folder)
    price_per_kwh: float | None = None  # electricity price per facility kWh, in `currency`
    currency: str | None = None  # ISO 4217 code or any label, e.g. EUR; required with a price
    pue: float = 1.0  # power usage effectiveness of the facility (1.0: count device energy only)

    def __post_init__(self) -> None:
        if self.carbon_intensity_g_per_kwh is not None and self.carbon_intensity_csv is not None:
            raise ConfigError("footprint.carbon_intensity: give a constant gCO2e/kWh or a CSV, not both")
        for name in ("carbon_intensity_g_per_kwh", "price_per_kwh"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"footprint.{name}: {value} is not a finite number >= 0")
        if not (math.isfinite(self.pue) and 1.0 <= self.pue <= MAX_PUE):
            raise ConfigError(f"footprint.pue: {self.pue} is outside 1.0 to {MAX_PUE}; a PUE is facility energy "
                              "over IT energy, e.g. 1.2")
        if self.price_per_kwh is not None and not self.currency:
            raise ConfigError("footprint.currency: a price per kWh needs a currency, e.g. --currency EUR")

    @property
    def configured(self) -> bool:
        """Whether any input beyond the default PUE was given."""
        return (self.carbon_intensity_g_per_kwh is not None or self.carbon_intensity_csv is not None
                or self.price_per_kwh is not None or self.pue != 1.0)

    def describe(self) -> str:
        """The inputs in one line, e.g. ``PUE 1.20; 350 gCO2e/kWh (constant); 0.30 EUR/kWh``."""
        parts = [f"PUE {self.pue:.2f}"]
        if self.carbon_intensity_g_per_kwh is not None:
            parts.append(f"{self.carbon_intensity_g_per_kwh:g} gCO2e/kWh (constant)")
        elif self.carbon_intensity_csv is not None:
            parts.append(f"gCO2e/kWh from {self.carbon_intensity_csv}")
        else:
            parts.append("no carbon intensity")
        parts.append(f"{self.price_per_kwh:g} {self.currency}/kWh" if self.price_per_kwh is not None
                     else "no price")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready fields."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class IntensitySeries:
    """A grid's carbon intensity over time: value i holds from times[i] to times[i+1] (the last for one step)."""

    path: str
    times: tuple[datetime, ...]
    g_per_kwh: tuple[float, ...]

    @property
    def end(self) -> datetime:
        """Where the last value stops holding: one median step after the last timestamp."""
        if len(self.times) == 1:
            return self.times[0]
        steps = sorted(b - a for a, b in zip(self.times, self.times[1:], strict=False))
        return self.times[-1] + steps[len(steps) // 2]

    def mean_between(self, start: datetime, end: datetime) -> float | None:
        """Time-weighted mean intensity over [start, end]; None if the series does not cover that window."""
        start, end = _utc(start), _utc(end)
        if start < self.times[0] or end > self.end:
            return None
        if end <= start:  # an instant: the value holding then
            return self.g_per_kwh[max(0, bisect.bisect_right(self.times, start) - 1)]
        bounds = (*self.times, self.end)
        total = 0.0
        for i, value in enumerate(self.g_per_kwh):
            overlap = (min(end, bounds[i + 1]) - max(start, bounds[i])).total_seconds()
            if overlap > 0:
                total += overlap * value
        return total / (end - start).total_seconds()

    def mean(self) -> float:
        """Time-weighted mean over the whole series."""
        return self.mean_between(self.times[0], self.end) if len(self.times) > 1 else self.g_per_kwh[0]


@dataclass(frozen=True)
class Footprint:
    """One energy figure with its facility energy, CO2e and cost, and the inputs they rest on."""

    energy_j: float  # at the devices, as measured, integrated or estimated (see energy_source)
    energy_source: str | None
    pue: float
    facility_energy_j: float  # energy_j x pue
    co2e_g: float | None  # None: no intensity given, or the series does not cover the run
    carbon_basis: str | None  # where co2e_g's intensity came from
    cost: float | None
    currency: str | None
    inputs: str  # FootprintSettings.describe()
    carbon_intensity_g_per_kwh: float | None = None  # the intensity co2e_g used (a series' time-weighted mean)

    @property
    def facility_kwh(self) -> float:
        """Facility energy in kWh."""
        return self.facility_energy_j / JOULES_PER_KWH

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def footprint_of(energy_j: float, settings: FootprintSettings, *, energy_source: str | None = None,
                 start: datetime | None = None, end: datetime | None = None) -> Footprint:
    """The footprint of `energy_j` joules drawn between `start` and `end` (UTC; None for a planned run)."""
    facility_j = energy_j * settings.pue
    kwh = facility_j / JOULES_PER_KWH
    intensity, basis = _intensity(settings, start, end)
    cost = kwh * settings.price_per_kwh if settings.price_per_kwh is not None else None
    return Footprint(energy_j=energy_j, energy_source=energy_source, pue=settings.pue, facility_energy_j=facility_j,
                     co2e_g=None if intensity is None else kwh * intensity, carbon_basis=basis, cost=cost,
                     currency=settings.currency if cost is not None else None, inputs=settings.describe(),
                     carbon_intensity_g_per_kwh=intensity)


def _intensity(settings: FootprintSettings, start: datetime | None,
               end: datetime | None) -> tuple[float | None, str | None]:
    if settings.carbon_intensity_g_per_kwh is not None:
        return settings.carbon_intensity_g_per_kwh, f"{settings.carbon_intensity_g_per_kwh:g} gCO2e/kWh (constant)"
    if settings.carbon_intensity_csv is None:
        return None, None
    series = load_intensity_csv(settings.carbon_intensity_csv)
    if start is None or end is None:
        mean = series.mean()
        return mean, f"{series.path}: mean of the whole series, {mean:.1f} gCO2e/kWh (run not yet timed)"
    mean = series.mean_between(start, end)
    if mean is None:
        return None, (f"{series.path} covers {series.times[0]:%Y-%m-%d %H:%M} to {series.end:%Y-%m-%d %H:%M} UTC, "
                      f"not the run ({_utc(start):%Y-%m-%d %H:%M} to {_utc(end):%Y-%m-%d %H:%M})")
    return mean, f"{series.path}: time-weighted mean over the run, {mean:.1f} gCO2e/kWh"


def load_intensity_csv(path: str | os.PathLike[str]) -> IntensitySeries:
    """Read a carbon-intensity CSV (cached by path and modification time)."""
    file = Path(path)
    try:
        stat = file.stat()
    except OSError as error:
        raise ConfigError(f"footprint.carbon_intensity_csv: cannot read {path} ({error.strerror}); give a CSV of "
                          "timestamp,g_per_kwh rows") from None
    return _load_csv(str(file), stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _load_csv(path: str, mtime_ns: int) -> IntensitySeries:
    where = f"footprint.carbon_intensity_csv: {path}"
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = {name.strip().lower(): name for name in reader.fieldnames or ()}
        time_key = next((header[c] for c in TIME_COLUMNS if c in header), None)
        value_key = next((header[c] for c in INTENSITY_COLUMNS if c in header), None)
        if time_key is None or value_key is None:
            raise ConfigError(f"{where} needs a time column ({'/'.join(TIME_COLUMNS)}) and an intensity column "
                              f"({'/'.join(INTENSITY_COLUMNS)}); its header is {list(header) or 'empty'}")
        points = []
        for line, row in enumerate(reader, start=2):
            try:
                when = _utc(datetime.fromisoformat(row[time_key].strip().replace("Z", "+00:00")))
                value = float(row[value_key])
            except (ValueError, TypeError, AttributeError):
                raise ConfigError(f"{where} line {line}: expected an ISO 8601 time and a number, got "
                                  f"{row.get(time_key)!r}, {row.get(value_key)!r}") from None
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{where} line {line}: intensity {value} is not a finite number >= 0")
            points.append((when, value))
    if not points:
        raise ConfigError(f"{where} has no rows")
    points.sort()
    times = tuple(t for t, _ in points)
    if len(set(times)) != len(times):
        raise ConfigError(f"{where} repeats a timestamp; give one intensity per time")
    return IntensitySeries(path=path, times=times, g_per_kwh=tuple(v for _, v in points))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---- where the settings come from ---------------------------------------------------------------------------

def add_footprint_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every command that shows energy takes (they default to None: environment, then file)."""
    group = parser.add_argument_group("carbon and cost (flags > WATTSCALE_* environment > experiment file)")
    group.add_argument("--carbon-intensity", metavar="G_PER_KWH|CSV", default=None,
                       help="grid carbon intensity: a constant gCO2e/kWh, or a CSV of timestamp,g_per_kwh rows "
                            f"(${ENV_VARS['carbon_intensity']})")
    group.add_argument("--price-per-kwh", metavar="PRICE", type=float, default=None,
                       help=f"electricity price per facility kWh, in --currency (${ENV_VARS['price_per_kwh']})")
    group.add_argument("--currency", default=None, help=f"the price's currency, e.g. EUR (${ENV_VARS['currency']})")
    group.add_argument("--pue", type=float, default=None,
                       help=f"the facility's power usage effectiveness, default 1.0 (${ENV_VARS['pue']})")


def resolve_footprint(args: argparse.Namespace | None = None, file_settings: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> FootprintSettings:
    """Settings from flags (`args`, see `add_footprint_flags`), then `environ`, then an experiment file's table."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = dict(file_settings or {})
    unknown = set(merged) - {f.name for f in fields(FootprintSettings)}
    if unknown:
        raise ConfigError(f"footprint.{sorted(unknown)[0]}: unknown key; known: "
                          f"{', '.join(f.name for f in fields(FootprintSettings))}")
    for key, variable in ENV_VARS.items():
        if environ.get(variable):
            _set(merged, key, environ[variable], f"${variable}")
    for key in ENV_VARS:
        value = getattr(args, key, None) if args is not None else None
        if value is not None:
            _set(merged, key, value, "--" + key.replace("_", "-"))
    return FootprintSettings(**merged)


def _set(merged: dict[str, Any], key: str, value: Any, origin: str) -> None:
    if key == "carbon_intensity":
        merged.pop("carbon_intensity_g_per_kwh", None)
        merged.pop("carbon_intensity_csv", None)
        try:
            merged["carbon_intensity_g_per_kwh"] = float(value)
        except ValueError:
            merged["carbon_intensity_csv"] = str(value)
        return
    if key in ("price_per_kwh", "pue"):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{origin}: {value!r} is not a number") from None
    merged[key] = value


# ---- stored runs -------------------------------------------------------------------------------------------

def run_window(record: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """A stored run's (started_at, finished_at) in UTC; a run still going ends at started_at + wall_seconds."""
    start, end = _parse_time(record.get("started_at")), _parse_time(record.get("finished_at"))
    wall_s = record.get("wall_seconds")
    if start is not None and end is None and isinstance(wall_s, (int, float)) and math.isfinite(wall_s) and wall_s > 0:
        end = start + timedelta(seconds=float(wall_s))
    return start, end


def run_footprint(record: Mapping[str, Any], settings: FootprintSettings,
                  energy_j: float | None = None) -> Footprint | None:
    """The footprint of a stored run's energy (`energy_j`, default its job energy ``energy_j``) over its
    started_at..finished_at window; None for a run without energy.

    A run trained with ``meter.grid_gco2e_per_kwh`` uses that intensity when `settings` give none, and its
    carbon_basis says so.
    """
    energy = record.get("energy_j") if energy_j is None else energy_j
    if not isinstance(energy, (int, float)) or isinstance(energy, bool) or not math.isfinite(energy):
        return None
    start, end = run_window(record)
    source = record.get("energy_source") or None
    recorded = recorded_intensity(record)
    if recorded is not None and settings.carbon_intensity_g_per_kwh is None and settings.carbon_intensity_csv is None:
        result = footprint_of(float(energy), replace(settings, carbon_intensity_g_per_kwh=recorded),
                              energy_source=source, start=start, end=end)
        return replace(result, carbon_basis=f"{recorded:g} gCO2e/kWh (constant; the run's meter.grid_gco2e_per_kwh)")
    return footprint_of(float(energy), settings, energy_source=source, start=start, end=end)


def summary_line(prints: list[Mapping[str, Any] | None], energy: str) -> str:
    """One line stating what CO2e and cost rest on: `energy` (which energy), the inputs and the carbon basis
    of `prints` (`Footprint.as_dict()` of each run, None for a run without energy)."""
    found = [f for f in prints if f]
    inputs = sorted({f["inputs"] for f in found})
    # A series gives each run its own mean (shown beside its CO2e) and may miss some runs: say it once.
    bases = sorted({re.sub(r", not the run \(.*\)$", " (a run outside it has no CO2e)",
                           re.sub(r", [\d.]+ gCO2e/kWh$", "", f["carbon_basis"]))
                    for f in found if f.get("carbon_basis")})
    if len(bases) > 3:
        bases = bases[:3] + [f"{len(bases) - 3} more (see each run's carbon_basis in the JSON)"]
    return (f"CO2e and cost: {energy} x PUE; inputs: {' | '.join(inputs) or '-'}; carbon basis: "
            f"{' | '.join(bases) or 'no carbon intensity given'}")


def recorded_intensity(record: Mapping[str, Any]) -> float | None:
    """The grid intensity a run was trained with (``meter.grid_gco2e_per_kwh`` in its config), if any."""
    raw = record.get("config_json")
    try:
        config = json.loads(raw) if isinstance(raw, str) and raw else (raw if isinstance(raw, dict) else {})
    except ValueError:
        return None
    meter = config.get("meter") if isinstance(config, dict) else None
    value = meter.get("grid_gco2e_per_kwh") if isinstance(meter, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str) and value.strip():
        try:
            return _utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            return None
    return None
