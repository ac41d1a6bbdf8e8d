"""A background thread that samples power meters on a fixed time grid, and the energy between two marks.

**Marks.** `mark()` reads every meter now (synchronously, like Zeus's begin_window/end_window) and remembers,
per device, the hardware counter where the meter has one and the running trapezoid integral of the power
readings so far. `energy_between(a, b)` is then the counter difference, or the difference of the running
integrals. One mark can end one window and start the next, so consecutive windows (the phases of a job) add
up exactly to the window that spans them, for counters and integrals alike.

**Bounded memory.** The sampler keeps no trace: each reading updates the running integral and, when a
callback is given, becomes a row handed to ``on_samples`` in chunks of ``flush_every`` readings. A 1 kHz,
24-hour run therefore holds one chunk at a time (``keep_trace=True`` keeps the whole trace in memory as well,
for short measurements, tests and benchmarks).

**Failures** never stop the thread: they become gaps with their error text, and an energy window that
overlaps a gap, or whose boundary reading failed, is marked incomplete and carries the error messages.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from wattscale.energy.integrate import integrate_trapezoid, resample_energy
from wattscale.energy.meter import MAX_SAMPLE_HZ, MIN_SAMPLE_HZ, Meter, MeterError, PowerReading
from wattscale.errors import ConfigError

__all__ = ["EnergyWindow", "Mark", "PowerSampler", "SamplerStats", "integrate_trapezoid", "resample_energy"]

SOURCE_ORDER = ("counter", "integrated", "estimated")  # from the most to the least direct
MAX_WINDOW_ERRORS = 20  # error messages kept per window; the count of the rest is said


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
    callback_errors: int = 0  # chunks whose on_samples callback raised

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"sample_hz": self.requested_hz, "achieved_hz": self.achieved_hz, "n_samples": self.n_samples,
                "missed_deadlines": self.missed_deadlines, "duration_s": self.duration_s,
                "gaps": [list(g) for g in self.gaps], "gap_messages": list(self.gap_messages),
                "callback_errors": self.callback_errors}


@dataclass(frozen=True)
class Mark:
    """Every meter read at one instant: per device the counter (None without one) and the running integral."""

    t_s: float  # the sampler clock (time.monotonic() by default) when the mark was taken
    counter_j: dict[str, float | None]
    integral_j: dict[str, float]  # trapezoid of all readings since start, up to this mark's reading
    read_ok: dict[str, bool]  # False where the boundary reading failed (the integral is then the last known)
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnergyWindow:
    """Energy per device between two marks (times in seconds since the sampler started).

    ``sources`` gives each device's source: "counter" (a hardware counter difference), "integrated" (the
    trapezoid of sampled power) or "estimated" (a model's cumulative estimate, or the trapezoid of its power);
    ``source`` is the least direct of them. ``complete`` is False when a meter failed inside the window or at
    its boundary, so the figure may miss energy; ``errors`` then says why.
    """

    name: str
    start_s: float
    end_s: float
    energy_j: dict[str, float]
    total_j: float
    source: str
    complete: bool
    sources: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return self.end_s - self.start_s


def weakest_source(sources: Sequence[str]) -> str | None:
    """The least direct of some sources (a sum is only as good as its weakest part); None for none."""
    return max(sources, key=SOURCE_ORDER.index) if sources else None


@dataclass
class _DeviceState:
    """Per device: the last reading (for the next trapezoid) and the running integral; optionally the trace."""

    last_t_s: float = math.nan
    last_power_w: float = math.nan
    integral_j: float = 0.0
    t_s: array | None = None  # with keep_trace: absolute times, power, counter (NaN without one)
    power_w: array | None = None
    energy_j: array | None = None


class PowerSampler:
    """Samples every meter at ``sample_hz`` on a background daemon thread and answers energy between marks.

    The sampler does not own the meters: closing them is the caller's job, after stop(). ``clock`` must be
    the clock the meters stamp their readings with (time.monotonic); tests drive a fake one with
    ``start(background=False)`` and ``tick()``.
    """

    def __init__(self, meters: list[Meter], sample_hz: float,
                 on_samples: Callable[[list[dict]], None] | None = None, flush_every: int = 256,
                 keep_trace: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
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
        self.keep_trace = keep_trace
        self._clock = clock
        self._on_samples = on_samples
        self._flush_every = flush_every
        self._devices = {d: _DeviceState() for d in devices}
        if keep_trace:
            for state in self._devices.values():
                state.t_s, state.power_w, state.energy_j = array("d"), array("d"), array("d")
        # A meter is read and its reading recorded under its own lock, so each device's readings enter the
        # running integral in time order whether the sampling thread or a mark took them.
        self._meter_locks = [threading.Lock() for _ in meters]
        self._data_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = False
        self._stats: SamplerStats | None = None
        self._t0 = math.nan
        self._deadline = math.nan
        self._n_ticks = 0
        self._first_tick = math.nan
        self._last_tick = math.nan
        self._missed = 0
        self._failing: list[tuple[float, str] | None] = [None] * len(meters)  # (since_s, message) per meter
        self._gaps: list[tuple[float, float, str]] = []
        self._pending: list[dict] = []
        self._callback_errors = 0
        self._windows: dict[str, Mark] = {}

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self, background: bool = True) -> None:
        """Start sampling: the first sample is taken at once, then one per period (``background=False``: the
        caller calls tick() instead of a thread, e.g. with a fake clock)."""
        with self._state_lock:
            if self._started:
                raise RuntimeError("PowerSampler.start() called twice; create a new sampler per run")
            self._started = True
            self._t0 = self._clock()
            self._deadline = self._t0
            if background:
                self._thread = threading.Thread(target=self._run, name="wattscale-power-sampler", daemon=True)
                self._thread.start()

    def stop(self) -> SamplerStats:
        """Stop and join the thread, flush the remaining rows to on_samples, and return the stats (idempotent)."""
        with self._state_lock:
            if self._stats is not None:
                return self._stats
            if not self._started:
                raise RuntimeError("PowerSampler.stop() called before start()")
            self._stop_event.set()
            if self._thread is not None:
                self._thread.join()
            stop_rel = self._clock() - self._t0
            with self._data_lock:
                batch, self._pending = self._pending, []
            self._flush(batch)
            gaps = [(a, b) for a, b, _ in self._gaps]
            messages = [m for _, _, m in self._gaps]
            for failing in self._failing:
                if failing is not None:
                    gaps.append((failing[0], stop_rel))
                    messages.append(failing[1])
            span = self._last_tick - self._first_tick
            achieved = (self._n_ticks - 1) / span if self._n_ticks > 1 and span > 0 else 0.0
            order = sorted(range(len(gaps)), key=lambda k: gaps[k])
            self._stats = SamplerStats(requested_hz=self.sample_hz, achieved_hz=achieved, n_samples=self._n_ticks,
                                       missed_deadlines=self._missed, duration_s=stop_rel,
                                       gaps=[gaps[k] for k in order], gap_messages=[messages[k] for k in order],
                                       callback_errors=self._callback_errors)
            return self._stats

    @property
    def start_monotonic_s(self) -> float:
        """The clock at start(): add it to a relative t_s to compare with other clock readings."""
        return self._t0

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._started and self._stats is None

    # ---- sampling --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = self._clock()
            if now < self._deadline:
                if self._stop_event.wait(self._deadline - now):
                    break
            elif self._stop_event.is_set():
                break
            self.tick()

    def tick(self) -> None:
        """Take one sample of every meter now, on the grid: what the sampling thread does once per period.

        A tick more than a whole period late counts the skipped grid points as missed deadlines and moves
        the grid on (no catch-up burst).
        """
        now = self._clock()
        period = 1.0 / self.sample_hz
        late_periods = int((now - self._deadline) // period)
        if late_periods > 0:
            self._missed += late_periods
            self._deadline += late_periods * period
        for i in range(len(self.meters)):
            with self._meter_locks[i]:
                reading = self._read(i)
                if reading is not None:
                    self._record(i, reading, emit=True)
        self._n_ticks += 1
        if self._n_ticks == 1:
            self._first_tick = now
        self._last_tick = now
        self._deadline += period
        with self._data_lock:
            if len(self._pending) < self._flush_every:
                return
            batch, self._pending = self._pending, []
        self._flush(batch)

    def _read(self, i: int) -> PowerReading | None:
        """Read meter i (its lock held); a failure of any kind opens (or extends) a gap, never ends the thread."""
        meter = self.meters[i]
        try:
            reading = meter.read()
        except Exception as exc:  # a meter bug must not stop sampling either
            with self._data_lock:
                if self._failing[i] is None:
                    self._failing[i] = (self._clock() - self._t0, _failure_message(meter.name, exc))
            return None
        with self._data_lock:
            failing = self._failing[i]
            if failing is not None:
                self._gaps.append((failing[0], reading.t_s - self._t0, failing[1]))
                self._failing[i] = None
        return reading

    def _record(self, i: int, reading: PowerReading, emit: bool) -> None:
        """Add a reading of meter i (its lock held) to the running integrals; optionally as a sample row."""
        t_rel = reading.t_s - self._t0
        with self._data_lock:
            for device in self.meters[i].devices:
                power_w = reading.power_w.get(device)
                if power_w is None:
                    continue
                state = self._devices[device]
                if reading.t_s > state.last_t_s:  # NaN at first: no area yet
                    state.integral_j += (reading.t_s - state.last_t_s) * (power_w + state.last_power_w) / 2
                state.last_t_s, state.last_power_w = reading.t_s, power_w
                energy_j = reading.energy_j.get(device) if reading.energy_j is not None else None
                if emit and state.t_s is not None:  # the kept trace is the grid's samples, as the rows are
                    state.t_s.append(reading.t_s)
                    state.power_w.append(power_w)
                    state.energy_j.append(math.nan if energy_j is None else energy_j)
                if emit and self._on_samples is not None:
                    self._pending.append({"t_s": t_rel, "device": device, "power_w": power_w, "energy_j": energy_j})

    def _flush(self, batch: list[dict]) -> None:
        if not batch or self._on_samples is None:
            return
        try:
            self._on_samples(batch)
        except Exception as exc:  # a store hiccup must not stop sampling; stats report it
            self._callback_errors += 1
            if self._callback_errors == 1:
                warnings.warn(f"power sampler: on_samples failed ({exc!r}); that chunk of samples is lost",
                              RuntimeWarning, stacklevel=2)

    # ---- marks and energy ------------------------------------------------------------------------------

    def mark(self) -> Mark:
        """Read every meter now; the returned mark bounds energy windows (see energy_between)."""
        if not self._started:
            raise RuntimeError("mark() before start(): start the sampler first")
        t_s = self._clock()
        counters: dict[str, float | None] = {}
        integrals: dict[str, float] = {}
        read_ok: dict[str, bool] = {}
        errors: list[str] = []
        for i, meter in enumerate(self.meters):
            with self._meter_locks[i]:
                try:
                    reading: PowerReading | None = meter.read()
                except Exception as exc:  # the windows it bounds are then marked incomplete, with this message
                    reading = None
                    errors.append(_failure_message(meter.name, exc))
                if reading is not None:
                    self._record(i, reading, emit=False)
                with self._data_lock:
                    for device in meter.devices:
                        integrals[device] = self._devices[device].integral_j
                        ok = reading is not None and device in reading.power_w
                        read_ok[device] = ok
                        energy = reading.energy_j if ok and reading.energy_j is not None else {}
                        counters[device] = energy.get(device)
        return Mark(t_s=t_s, counter_j=counters, integral_j=integrals, read_ok=read_ok, errors=tuple(errors))

    def energy_between(self, begin: Mark, end: Mark, name: str = "") -> EnergyWindow:
        """Energy per device from mark `begin` to mark `end`, with sources, completeness and error messages."""
        energy_j: dict[str, float] = {}
        sources: dict[str, str] = {}
        complete = True
        for meter in self.meters:
            modelled = meter.energy_source == "estimated"
            for device in meter.devices:
                ok = begin.read_ok[device] and end.read_ok[device]
                start_j, end_j = begin.counter_j[device], end.counter_j[device]
                if start_j is not None and end_j is not None and end_j >= start_j:
                    # A modelled meter's cumulative estimate (the CPU estimate's CPU seconds x TDP) stays estimated.
                    energy_j[device], sources[device] = end_j - start_j, "estimated" if modelled else "counter"
                else:
                    # No counter (fine), or it vanished or went backwards (a reset): the integral may miss energy.
                    ok = ok and start_j is None and end_j is None
                    energy_j[device] = end.integral_j[device] - begin.integral_j[device]
                    sources[device] = "estimated" if modelled else "integrated"
                complete &= ok
        gap_errors = self._gap_messages_between(begin.t_s - self._t0, end.t_s - self._t0)
        errors = _capped(begin.errors + end.errors + tuple(gap_errors))
        return EnergyWindow(name=name, start_s=begin.t_s - self._t0, end_s=end.t_s - self._t0, energy_j=energy_j,
                            total_j=float(sum(energy_j.values())), source=weakest_source(list(sources.values())),
                            complete=bool(complete and not gap_errors and not errors), sources=sources,
                            errors=errors)

    def begin_window(self, name: str) -> None:
        """Open a named window: a mark now."""
        if name in self._windows:
            raise ValueError(f"energy window {name!r} is already open")
        self._windows[name] = self.mark()

    def end_window(self, name: str) -> EnergyWindow:
        """Close a named window and return its energy per device, with source and completeness."""
        begin = self._windows.pop(name, None)
        if begin is None:
            raise ValueError(f"energy window {name!r} was not begun (open windows: {sorted(self._windows)})")
        return self.energy_between(begin, self.mark(), name)

    def _gap_messages_between(self, start_s: float, end_s: float) -> list[str]:
        with self._data_lock:
            messages = [m for a, b, m in self._gaps if a <= end_s and b >= start_s]
            messages += [f[1] for f in self._failing if f is not None and f[0] <= end_s]
        return messages

    # ---- the kept trace (keep_trace=True) --------------------------------------------------------------

    def samples(self) -> list[dict]:
        """All readings so far as rows {t_s (since start), device, power_w, energy_j (None without a counter)}."""
        rows: list[dict] = []
        for device in self._devices:
            t, p, e = self._trace_arrays(device)
            rows.extend({"t_s": float(ti) - self._t0, "device": device, "power_w": float(pi),
                         "energy_j": None if math.isnan(ei) else float(ei)} for ti, pi, ei in zip(t, p, e, strict=True))
        rows.sort(key=lambda r: r["t_s"])  # stable: devices keep meter order at equal times
        return rows

    def trace(self, device: str) -> tuple[np.ndarray, np.ndarray]:
        """One device's readings as arrays (t_s since start, power_w), e.g. for resample_energy."""
        if device not in self._devices:
            raise ValueError(f"unknown device {device!r}; the meters report {sorted(self._devices)}")
        t, p, _ = self._trace_arrays(device)
        return t - self._t0, p

    def _trace_arrays(self, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self._devices[device]
        if state.t_s is None:
            raise RuntimeError("the sampler keeps no trace; create it with keep_trace=True (or read the rows "
                               "handed to on_samples)")
        with self._data_lock:
            return np.array(state.t_s), np.array(state.power_w), np.array(state.energy_j)


def _capped(messages: tuple[str, ...]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(messages))
    if len(unique) <= MAX_WINDOW_ERRORS:
        return unique
    return (*unique[:MAX_WINDOW_ERRORS], f"... and {len(unique) - MAX_WINDOW_ERRORS} more")


def _failure_message(meter_name: str, exc: Exception) -> str:
    """One line for a gap: MeterErrors already start with the meter kind; anything else gets kind and type."""
    text = str(exc)
    if isinstance(exc, MeterError):
        return text if text.startswith(f"{meter_name}:") else f"{meter_name}: {text}"
    return f"{meter_name}: {type(exc).__name__}: {text}"
