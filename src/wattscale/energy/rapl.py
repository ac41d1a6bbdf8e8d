"""RAPL CPU energy counters through the Linux powercap sysfs tree (Intel, and AMD since Linux 5.8).

Layout: ``<root>/intel-rapl:N`` is CPU package N (``name`` = ``package-N``), with sub-zones
``intel-rapl:N:M`` named ``core``, ``uncore`` or ``dram``. AMD Zen CPUs appear under the same
``intel-rapl`` control type. Each zone has ``energy_uj`` (a counter that wraps at
``max_energy_range_uj``). Only package and DRAM are counted: core and uncore are parts of the package,
``psys`` (platform) overlaps it, and ``intel-rapl-mmio`` zones repeat the package counter.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wattscale.energy.meter import MeterError, PowerReading, describe_header, wait_first_window

_ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_PERMISSION_HINT = ("run as root, or make it readable: sudo chmod o+r {path} "
                    "(root-only by default since CVE-2020-8694)")


@dataclass(frozen=True)
class RaplZone:
    """One counted RAPL zone: its device name and counter files."""

    device: str  # "package-0", "dram-0"
    path: Path  # the zone directory
    max_energy_range_uj: int


def find_rapl_zones(powercap_root: str | Path) -> tuple[list[RaplZone], list[str]]:
    """The package and DRAM zones under powercap_root, and the zones deliberately not counted; raises MeterError."""
    root = Path(powercap_root)
    if not root.is_dir():
        raise MeterError(f"rapl: {root} absent")
    zones: list[RaplZone] = []
    skipped: list[str] = []
    entries = sorted((e for e in root.iterdir() if _ZONE_RE.match(e.name)), key=_zone_sort_key)
    if not entries:
        raise MeterError(f"rapl: no intel-rapl zones under {root} (RAPL driver not loaded, or not exposed "
                         "to this VM/container)")
    for entry in entries:
        package_index = int(_ZONE_RE.match(entry.name).group(1))  # type: ignore[union-attr]
        zone_name = _read_text(entry / "name").strip()
        if zone_name.startswith("package"):
            device = zone_name if re.fullmatch(r"package-\d+", zone_name) else f"package-{package_index}"
        elif zone_name == "dram":
            device = f"dram-{package_index}"
        else:
            skipped.append(f"{entry.name} ({zone_name})")
            continue
        max_range = _read_int(entry / "max_energy_range_uj")
        if max_range <= 0:
            raise MeterError(f"rapl: {entry / 'max_energy_range_uj'} is {max_range}; cannot handle wrap-around")
        zones.append(RaplZone(device=device, path=entry, max_energy_range_uj=max_range))
    if not any(z.device.startswith("package") for z in zones):
        raise MeterError(f"rapl: no package zone under {root} (found: {', '.join(skipped) or 'none'})")
    return zones, skipped


class RaplMeter:
    """CPU package and DRAM power and energy from RAPL counters, with counter wrap-around handled."""

    name = "rapl"
    energy_source = "counter"

    def __init__(self, powercap_root: str | Path = "/sys/class/powercap", power_window_s: float = 0.01) -> None:
        self._root = Path(powercap_root)
        self._zones, self._skipped = find_rapl_zones(self._root)
        self.devices = tuple(z.device for z in self._zones)
        # Counters tick about every millisecond, so power from two reads less than a few ticks apart is
        # mostly quantisation noise: power is re-computed once at least power_window_s has passed.
        self._power_window_s = power_window_s
        self._lock = threading.Lock()  # two concurrent reads must not both add the same counter delta
        self._last_uj = self._read_counters()
        self._total_uj = dict.fromkeys(self.devices, 0)
        self._ref_t = time.monotonic()
        self._ref_total_uj = dict(self._total_uj)
        self._power_w = dict.fromkeys(self.devices, 0.0)
        wait_first_window(self._ref_t, power_window_s)  # so the first reading is a measurement, not a zero
        self.read()

    def read(self) -> PowerReading:
        """Read every counted zone; power is the energy delta over the last power window. Thread-safe."""
        with self._lock:
            return self._read_locked()

    def _read_locked(self) -> PowerReading:
        now_uj = self._read_counters()
        t_s = time.monotonic()
        for zone in self._zones:
            delta = now_uj[zone.device] - self._last_uj[zone.device]
            if delta < 0:  # the counter wrapped around at max_energy_range_uj
                delta += zone.max_energy_range_uj
            self._total_uj[zone.device] += delta
        self._last_uj = now_uj
        dt_s = t_s - self._ref_t
        if dt_s >= self._power_window_s:
            self._power_w = {d: (self._total_uj[d] - self._ref_total_uj[d]) / 1e6 / dt_s for d in self.devices}
            self._ref_t, self._ref_total_uj = t_s, dict(self._total_uj)
        return PowerReading(t_s=t_s, power_w=dict(self._power_w),
                            energy_j={d: uj / 1e6 for d, uj in self._total_uj.items()})

    def describe(self) -> dict:
        """Kind, devices, zone paths and what is not counted."""
        return {
            **describe_header(self),
            "inputs": {
                "powercap_root": str(self._root),
                "zones": {z.device: str(z.path) for z in self._zones},
                "max_energy_range_uj": {z.device: z.max_energy_range_uj for z in self._zones},
                "power_window_s": self._power_window_s,
            },
            "not_counted": self._skipped,
            "note": "package and dram only: core/uncore are inside the package, psys overlaps it",
            "units": {"power": "W", "energy": "J"},
        }

    def close(self) -> None:
        """Nothing to release: the counters are re-opened on each read."""

    def _read_counters(self) -> dict[str, int]:
        return {z.device: _read_int(z.path / "energy_uj") for z in self._zones}


def _zone_sort_key(entry: Path) -> tuple[int, int]:
    match = _ZONE_RE.match(entry.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or -1)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except PermissionError as exc:
        raise MeterError(f"rapl: permission denied reading {path} ({_PERMISSION_HINT.format(path=path)})") from exc
    except FileNotFoundError as exc:
        raise MeterError(f"rapl: {path} vanished") from exc
    except OSError as exc:
        raise MeterError(f"rapl: cannot read {path}: {exc.strerror or exc}") from exc


def _read_int(path: Path) -> int:
    text = _read_text(path).strip()
    try:
        return int(text)
    except ValueError as exc:
        raise MeterError(f"rapl: {path} holds {text!r}, not an integer") from exc
