"""A background thread that samples power meters on a fixed time grid, plus measurement windows over it.

Energy of a window comes from the meters' hardware counters where they have one (read synchronously at
begin and end, like Zeus's begin_window/end_window) and otherwise from the trapezoid integral of the samples.
Meter failures never stop the thread: they become gaps, and windows that overlap a gap are marked incomplete.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import warnings
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wattscale.energy.integrate import integrate_trapezoid, resample_energy
from wattscale.energy.meter import MAX_SAMPLE_HZ, MIN_SAMPLE_HZ, Meter, MeterError, PowerReading
from wattscale.errors import ConfigError

__all__ = ["EnergyWindow", "PowerSampler", "SamplerStats", "integrate_trapezoid", "resample_energy"]


@dataclass(frozen=True)
class SamplerStats:
    """How the sampling went: rate asked for and achieved, samples taken, deadlines missed, meter gaps.

    ``n_samples`` counts sampling instants (each reads every meter). ``missed_deadlines`` counts grid points at
    which no sample was taken because the thread woke up a whole period late; the grid then skips ahead
    rather than catching up in a burst. ``gaps`` are (start_s, end_s) since start() during which a meter failed
    (from its first failed read to its next good read, or to stop()); ``gap_messages`` holds each gap's error.
    """

    requested_hz: float
    achieved_hz: float
    n_samples: int
    missed_deadlines: int
    duration_s: float
    gaps: list[tuple[float, float]]
    gap_messages: list[str] = field(default_factory=list)
    callback_errors: int = 0  # batches whose on_samples callback raised (the rows stay in samples())


@dataclass(frozen=True)
class EnergyWindow:
    """Energy per device between begin_window and end_window (times in seconds since the sampler started).

    ``source`` is "counter" when every device used its hardware counter, "estimated" when any device's meter
    is a model (cpu-estimate), else "integrated"; ``sources`` gives it per device so mixed windows stay visible.
    ``complete`` is False when a meter failed inside the window, so the figure may miss energy.
    """

    name: str
    start_s: float
    end_s: float
    energy_j: dict[str, float]
    total_j: float
    source: str
    complete: bool
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return self.end_s - self.start_s


@dataclass
class _DeviceTrace:
    # array('d') keeps a 1 kHz trace at 24 bytes per sample instead of a dict per sample.
    t_s: array = field(default_factory=lambda: array("d"))  # absolute time.monotonic()
    power_w: array = field(default_factory=lambda: array("d"))
    energy_j: array = field(default_factory=lambda: array("d"))  # NaN where the meter has no counter


@dataclass
class _OpenWindow:
    start_abs: float
    readings: list[PowerReading | None]


class PowerSampler:
    """Samples every meter at ``sample_hz`` on a background daemon thread and answers energy windows.

    The sampler does not own the meters: closing them is the caller's job, after stop().
    """

    def __init__(self, meters: list[Meter], sample_hz: float,
                 on_samples: Callable[[list[dict]], None] | None = None, flush_every: int = 256) -> None:
        if isinstance(sample_hz, bool) or not isinstance(sample_hz, (int, float)) or not math.isfinite(sample_hz) \
                or not MIN_SAMPLE_HZ <= sample_hz <= MAX_SAMPLE_HZ:
            raise ConfigError(f"meter.sample_hz: {sample_hz!r} is out of range; "
                              f"choose {MIN_SAMPLE_HZ:g} to {MAX_SAMPLE_HZ:g} Hz")
        if not meters:
            raise ValueError("PowerSampler needs at least one meter")
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        devices = [d for m in meters for d in m.devices]
        if len(set(devices)) != len(devices):
            raise ValueError(f"meters report the same device name twice: {devices}")
        self.meters = list(meters)
        self.sample_hz = float(sample_hz)
        self._on_samples = on_samples
        self._flush_every = flush_every
        self._traces = {d: _DeviceTrace() for d in devices}
        self._meter_locks = [threading.Lock() for _ in meters]  # a meter is never read by two threads at once
        self._data_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stats: SamplerStats | None = None
        self._t0 = math.nan
        self._n_ticks = 0
        self._first_tick = math.nan
        self._last_tick = math.nan
        self._missed = 0
        self._failing_since: list[float | None] = [None] * len(meters)
        self._gaps: list[tuple[float, float]] = []
        self._gap_messages: list[str] = []
        self._pending: list[dict] = []
        self._callback_errors = 0
        self._windows: dict[str, _OpenWindow] = {}

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampling thread; the first sample is taken at once, then one per period."""
        with self._state_lock:
            if self._thread is not None:
                raise RuntimeError("PowerSampler.start() called twice; create a new sampler per run")
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="wattscale-power-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> SamplerStats:
        """Stop and join the thread, flush the remaining samples to on_samples, and return the stats (idempotent)."""
        with self._state_lock:
            if self._stats is not None:
                return self._stats
            if self._thread is None:
                raise RuntimeError("PowerSampler.stop() called before start()")
            self._stop_event.set()
            self._thread.join()
            stop_abs = time.monotonic()
            self._flush(self._pending)
            self._pending = []
            gaps = list(self._gaps)
            messages = list(self._gap_messages)
            for since in self._failing_since:
                if since is not None:
                    gaps.append((since, stop_abs - self._t0))
            span = self._last_tick - self._first_tick
            achieved = (self._n_ticks - 1) / span if self._n_ticks > 1 and span > 0 else 0.0
            self._stats = SamplerStats(requested_hz=self.sample_hz, achieved_hz=achieved, n_samples=self._n_ticks,
                                       missed_deadlines=self._missed, duration_s=stop_abs - self._t0,
                                       gaps=sorted(gaps), gap_messages=messages,
                                       callback_errors=self._callback_errors)
            return self._stats

    @property
    def start_monotonic_s(self) -> float:
        """time.monotonic() at start(): add it to a relative t_s to compare with other monotonic timestamps."""
        return self._t0

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._thread is not None and self._stats is None

    # ---- sampling thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        period = 1.0 / self.sample_hz
        deadline = self._t0
        while True:
            now = time.monotonic()
            if now < deadline:
                if self._stop_event.wait(deadline - now):
                    break
                now = time.monotonic()
            elif self._stop_event.is_set():
                break
            late_periods = int((now - deadline) // period)
            if late_periods > 0:  # whole grid slots already passed: count them and sample now, no catch-up burst
                self._missed += late_periods
                deadline += late_periods * period
            self._tick(now)
            deadline += period

    def _tick(self, now: float) -> None:
        for i in range(len(self.meters)):
            reading = self._read(i)
            if reading is not None:
                self._record(reading)
        self._n_ticks += 1
        if self._n_ticks == 1:
            self._first_tick = now
        self._last_tick = now
        if len(self._pending) >= self._flush_every:
            batch, self._pending = self._pending, []
            self._flush(batch)

    def _read(self, i: int) -> PowerReading | None:
        """Read meter i; a failure of any kind opens (or extends) a gap instead of ending the thread."""
        meter = self.meters[i]
        try:
            with self._meter_locks[i]:
                reading = meter.read()
        except Exception as exc:  # a meter bug must not stop sampling either
            with self._data_lock:
                if self._failing_since[i] is None:
                    self._failing_since[i] = time.monotonic() - self._t0
                    self._gap_messages.append(_failure_message(meter.name, exc))
            return None
        with self._data_lock:
            since = self._failing_since[i]
            if since is not None:
                self._gaps.append((since, reading.t_s - self._t0))
                self._failing_since[i] = None
        return reading

    def _record(self, reading: PowerReading) -> None:
        rows = self._pending if self._on_samples is not None else None
        t_rel = reading.t_s - self._t0
        with self._data_lock:
            for device, power_w in reading.power_w.items():
                trace = self._traces.get(device)
                if trace is None:
                    continue
                energy_j = reading.energy_j.get(device) if reading.energy_j is not None else None
                trace.t_s.append(reading.t_s)
                trace.power_w.append(power_w)
                trace.energy_j.append(math.nan if energy_j is None else energy_j)
                if rows is not None:
                    rows.append({"t_s": t_rel, "device": device, "power_w": power_w, "energy_j": energy_j})

    def _flush(self, batch: list[dict]) -> None:
        if not batch or self._on_samples is None:
            return
        try:
            self._on_samples(batch)
        except Exception as exc:  # a store hiccup must not stop sampling; stats report it
            self._callback_errors += 1
            if self._callback_errors == 1:
                warnings.warn(f"power sampler: on_samples failed ({exc!r}); the rows stay in memory",
                              RuntimeWarning, stacklevel=2)

    # ---- samples and windows ---------------------------------------------------------------------------

    def samples(self) -> list[dict]:
        """All samples so far as rows {t_s (since start), device, power_w, energy_j (None without a counter)}."""
        with self._data_lock:
            parts = [(d, np.array(tr.t_s), np.array(tr.power_w), np.array(tr.energy_j))
                     for d, tr in self._traces.items()]
        rows: list[dict] = []
        for device, t, p, e in parts:
            rows.extend({"t_s": float(ti) - self._t0, "device": device, "power_w": float(pi),
                         "energy_j": None if math.isnan(ei) else float(ei)} for ti, pi, ei in zip(t, p, e, strict=True))
        rows.sort(key=lambda r: r["t_s"])  # stable: devices keep meter order at equal times
        return rows

    def trace(self, device: str) -> tuple[np.ndarray, np.ndarray]:
        """One device's samples as arrays (t_s since start, power_w), e.g. for resample_energy, without row dicts."""
        if device not in self._traces:
            raise ValueError(f"unknown device {device!r}; the meters report {sorted(self._traces)}")
        trace = self._traces[device]
        with self._data_lock:
            t = np.array(trace.t_s)
            p = np.array(trace.power_w)
        return t - self._t0, p

    def _read_all(self) -> list[PowerReading | None]:
        return [self._read_sync(i) for i in range(len(self.meters))]

    def _read_sync(self, i: int) -> PowerReading | None:
        try:
            with self._meter_locks[i]:
                return self.meters[i].read()
        except Exception:  # the window is then marked incomplete
            return None

    def begin_window(self, name: str) -> None:
        """Open a named measurement window: reads every meter now (counters and boundary power)."""
        if self._thread is None:
            raise RuntimeError("begin_window() before start(): start the sampler first")
        if name in self._windows:
            raise ValueError(f"energy window {name!r} is already open")
        start_abs = time.monotonic()
        self._windows[name] = _OpenWindow(start_abs=start_abs, readings=self._read_all())

    def end_window(self, name: str) -> EnergyWindow:
        """Close a window and return its energy per device, with source and completeness."""
        window = self._windows.pop(name, None)
        if window is None:
            raise ValueError(f"energy window {name!r} was not begun (open windows: {sorted(self._windows)})")
        end_abs = time.monotonic()
        end_readings = self._read_all()
        energy_j: dict[str, float] = {}
        sources: dict[str, str] = {}
        complete = True
        for i, meter in enumerate(self.meters):
            begin, end = window.readings[i], end_readings[i]
            complete &= begin is not None and end is not None
            for device in meter.devices:
                joules, source, ok = self._device_energy(meter, device, begin, end, window.start_abs, end_abs)
                energy_j[device], sources[device] = joules, source
                complete &= ok
        complete &= not self._gap_overlaps(window.start_abs - self._t0, end_abs - self._t0)
        distinct = set(sources.values())
        source = distinct.pop() if len(distinct) == 1 else ("estimated" if "estimated" in distinct else "integrated")
        return EnergyWindow(name=name, start_s=window.start_abs - self._t0, end_s=end_abs - self._t0,
                            energy_j=energy_j, total_j=float(sum(energy_j.values())), source=source,
                            complete=bool(complete), sources=sources)

    def _device_energy(self, meter: Meter, device: str, begin: PowerReading | None, end: PowerReading | None,
                       start_abs: float, end_abs: float) -> tuple[float, str, bool]:
        """Joules for one device: counter difference if both boundary reads have it, else the trapezoid.

        Returns (joules, source, ok); ok is False when a boundary reading is missing or the meter's counter
        could not be used, so the trapezoid fallback may miss energy.
        """
        ok = True
        if meter.energy_source != "estimated" and begin is not None and end is not None \
                and (begin.energy_j is not None or end.energy_j is not None):
            start_j = (begin.energy_j or {}).get(device)
            end_j = (end.energy_j or {}).get(device)
            if start_j is not None and end_j is not None and end_j >= start_j:
                return end_j - start_j, "counter", True
            ok = False  # the counter vanished for this device or went backwards (reset): use the samples
        source = "estimated" if meter.energy_source == "estimated" else "integrated"
        t_lo = begin.t_s if begin is not None and device in begin.power_w else start_abs
        t_hi = end.t_s if end is not None and device in end.power_w else end_abs
        trace = self._traces[device]
        with self._data_lock:
            lo = bisect.bisect_right(trace.t_s, t_lo)
            hi = bisect.bisect_left(trace.t_s, t_hi, lo)
            t = list(trace.t_s[lo:hi])
            p = list(trace.power_w[lo:hi])
        if begin is not None and device in begin.power_w:
            t.insert(0, begin.t_s)
            p.insert(0, begin.power_w[device])
        else:
            ok = False
        if end is not None and device in end.power_w:
            t.append(end.t_s)
            p.append(end.power_w[device])
        else:
            ok = False
        return integrate_trapezoid(t, p), source, ok

    def _gap_overlaps(self, start_s: float, end_s: float) -> bool:
        with self._data_lock:
            if any(a <= end_s and b >= start_s for a, b in self._gaps):
                return True
            return any(since is not None and since <= end_s for since in self._failing_since)


def _failure_message(meter_name: str, exc: Exception) -> str:
    """One line for a gap: MeterErrors already start with the meter kind; anything else gets kind and type."""
    text = str(exc)
    if isinstance(exc, MeterError):
        return text if text.startswith(f"{meter_name}:") else f"{meter_name}: {text}"
    return f"{meter_name}: {type(exc).__name__}: {text}"
