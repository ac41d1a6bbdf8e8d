"""The meter interface: one reading type, one protocol, one config, one error."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from wattscale.errors import ConfigError, WattscaleError

METER_KINDS = ("nvml", "rapl", "cpu-estimate")
TOTAL_RULES = ("measured", "all")
MIN_SAMPLE_HZ = 1.0
MAX_SAMPLE_HZ = 1000.0


class MeterError(WattscaleError):
    """A meter could not be opened or failed to read (driver error, file vanished, permission denied).

    The message starts with the meter kind (``rapl: ...``) so it can be shown as is.
    """


@dataclass(frozen=True)
class PowerReading:
    """One reading of a meter: instantaneous power per device and, where the hardware has one, its energy counter."""

    t_s: float  # time.monotonic() when read
    power_w: dict[str, float]  # per device, e.g. {"gpu0": 312.5} or {"package-0": 45.1, "dram-0": 5.2}
    # Cumulative joules per device since the meter was opened, from a hardware counter; None when the meter
    # has no counter (cpu-estimate), in which case energy is the integral of power_w.
    energy_j: dict[str, float] | None


@runtime_checkable
class Meter(Protocol):
    """What the sampler needs from a power meter."""

    name: str  # "nvml" | "rapl" | "cpu-estimate"
    energy_source: str  # "counter" (nvml, rapl) | "estimated" (cpu-estimate)
    devices: tuple[str, ...]
    # Optional (read with getattr): `components`, parallel to devices ("gpu", "cpu_package", "dram",
    # "cpu_estimate"; derived from name and device by component_of when absent), `uuids` (GPU UUIDs or None)
    # and `notes` (how the devices were chosen).

    def read(self) -> PowerReading:
        """Read power (and the energy counter, if any) now; raises MeterError."""
        ...

    def describe(self) -> dict:
        """A JSON-ready description: kind, devices, inputs, units."""
        ...

    def close(self) -> None:
        """Release the meter's resources; safe to call twice."""
        ...


@dataclass(frozen=True)
class MeterConfig:
    """Which meters to try, how often to sample, and the inputs of the CPU estimate."""

    sample_hz: float = 10.0
    kinds: tuple[str, ...] = METER_KINDS  # preference order; ("none",) disables metering
    cpu_tdp_w_per_core: float = 10.0  # stated in every estimated output
    powercap_root: str = "/sys/class/powercap"  # where RAPL zones are read
    grid_gco2e_per_kwh: float | None = None  # user-given; never a guessed default
    idle_seconds: float = 3.0  # idle baseline sampled before a run's first session (0 skips it)
    # How a total adds components: "measured" leaves an estimate beside measured components instead of
    # absorbing it (it is the total only when nothing was measured); "all" adds everything ("mixed").
    total: str = "measured"
    # The first steps of each session inside phase("train") count as the warm-up phase. None: 1 in wattscale's
    # trainer (the step that allocates, autotunes or compiles), 0 for your own code measured with Monitor.
    warmup_steps: int | None = None
    host_registry: str | None = None  # folder where the host's measurements register (default <tmp>/wattscale-host)

    def __post_init__(self) -> None:
        _check_number("meter.sample_hz", self.sample_hz)
        if not MIN_SAMPLE_HZ <= self.sample_hz <= MAX_SAMPLE_HZ:
            raise ConfigError(f"meter.sample_hz: {self.sample_hz} is out of range; "
                              f"choose {MIN_SAMPLE_HZ:g} to {MAX_SAMPLE_HZ:g} Hz")
        if isinstance(self.kinds, str):
            raise ConfigError(f"meter.kinds: expected a list of meter kinds, got the string {self.kinds!r}; "
                              f"write [{self.kinds!r}]")
        kinds = tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds:
            raise ConfigError("meter.kinds: empty; list meters from " + ", ".join(METER_KINDS) + " or 'none'")
        unknown = [k for k in kinds if k not in (*METER_KINDS, "none")]
        if unknown:
            raise ConfigError(f"meter.kinds: unknown meter kind {unknown[0]!r}; choose from "
                              + ", ".join(METER_KINDS) + " or 'none'")
        if "none" in kinds and len(kinds) > 1:
            raise ConfigError("meter.kinds: 'none' disables metering and cannot be combined with other kinds")
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"meter.kinds: {list(kinds)} lists a kind twice")
        _check_number("meter.cpu_tdp_w_per_core", self.cpu_tdp_w_per_core)
        if self.cpu_tdp_w_per_core <= 0:
            raise ConfigError(f"meter.cpu_tdp_w_per_core: {self.cpu_tdp_w_per_core} must be positive "
                              "(watts per busy core, e.g. the CPU's TDP divided by its cores)")
        if not isinstance(self.powercap_root, str) or not self.powercap_root:
            raise ConfigError("meter.powercap_root: must be a directory path, e.g. /sys/class/powercap")
        if self.grid_gco2e_per_kwh is not None:
            _check_number("meter.grid_gco2e_per_kwh", self.grid_gco2e_per_kwh)
            if self.grid_gco2e_per_kwh < 0:
                raise ConfigError(f"meter.grid_gco2e_per_kwh: {self.grid_gco2e_per_kwh} must be >= 0 "
                                  "(gCO2e per kWh of your grid), or leave it unset")

        _check_number("meter.idle_seconds", self.idle_seconds)
        if not 0 <= self.idle_seconds <= 600:
            raise ConfigError(f"meter.idle_seconds: {self.idle_seconds} must lie in [0, 600] seconds (0 skips "
                              "the idle baseline)")
        if self.total not in TOTAL_RULES:
            raise ConfigError(f"meter.total: {self.total!r} is not a rule; choose 'measured' (an estimate stays "
                              "beside measured components) or 'all' (add everything, labelled mixed)")
        if self.warmup_steps is not None and (isinstance(self.warmup_steps, bool)
                                              or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise ConfigError(f"meter.warmup_steps: {self.warmup_steps!r} must be a whole number >= 0 (steps of "
                              "each session counted as warm-up), or unset for the default")
        if self.host_registry is not None and (not isinstance(self.host_registry, str) or not self.host_registry):
            raise ConfigError("meter.host_registry: must be a folder path, or left unset for the default")

    @property
    def enabled(self) -> bool:
        """False when metering is disabled with kinds = ("none",)."""
        return self.kinds != ("none",)


def _check_number(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"meter.{field.split('.', 1)[1]}: expected a finite number, got {value!r}")


def component_of(meter_name: str, device: str) -> str:
    """The component a device's energy belongs to: gpu, cpu_package, dram or cpu_estimate."""
    base = device.rsplit("/", 1)[-1]  # a rank prefix ("rank1/package-0") does not change the component
    if meter_name == "nvml":
        return "gpu"
    if meter_name == "cpu-estimate":
        return "cpu_estimate"
    if meter_name == "rapl":
        return "dram" if base.startswith("dram") else "cpu_package"
    return "unknown"


def wait_first_window(ref_t_s: float, power_window_s: float) -> None:
    """Sleep until one power window has passed since `ref_t_s`, so a meter's first reading is a measurement."""
    while time.monotonic() - ref_t_s < power_window_s:
        time.sleep(power_window_s / 4)


def describe_header(meter: Meter) -> dict:
    """The keys every meter's describe() starts with: kind, energy source, devices."""
    return {"kind": meter.name, "energy_source": meter.energy_source, "devices": list(meter.devices)}
