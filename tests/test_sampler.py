"""The power sampler and energy integration against a synthetic power signal with a known integral.

Fake meters here replay P(t) = 100 W + 50 W * sin(2*pi*t / 0.5 s) as a function of time.monotonic(), so every
energy figure has an analytic reference. Timing bounds are generous: this runs on a shared 2-core machine.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from wattscale.energy.integrate import integrate_trapezoid, resample_energy, trace_rate_hz
from wattscale.energy.meter import MeterError, PowerReading
from wattscale.energy.sampler import EnergyWindow, PowerSampler
from wattscale.errors import ConfigError

MEAN_W, AMP_W, PERIOD_S = 100.0, 50.0, 0.5
OMEGA = 2 * math.pi / PERIOD_S


def signal_w(t: float) -> float:
    return MEAN_W + AMP_W * math.sin(OMEGA * t)


def energy_j(a: float, b: float) -> float:
    """Exact integral of signal_w from a to b."""
    return MEAN_W * (b - a) - AMP_W / OMEGA * (math.cos(OMEGA * b) - math.cos(OMEGA * a))


class SineMeter:
    """Replays k * signal_w(now) for its k-th device; optionally a cumulative counter of counter_scale * energy."""

    def __init__(self, devices: tuple[str, ...] = ("dev0",), counter: bool = False, counter_scale: float = 1.0,
                 energy_source: str = "counter", fail_between_s: tuple[float, float] | None = None,
                 error: type[Exception] = MeterError, read_delay_s: float = 0.0, stall_on_read: int = -1) -> None:
        self.name = "fake"
        self.energy_source = energy_source
        self.devices = devices
        self.counter, self.counter_scale = counter, counter_scale
        self.fail_between_s, self.error, self.read_delay_s = fail_between_s, error, read_delay_s
        self.stall_on_read = stall_on_read  # this read (0-based) takes 0.1 s, like a driver hiccup
        self.t_open = time.monotonic()
        self.reads: list[tuple[int, PowerReading]] = []  # (thread ident, reading)

    def read(self) -> PowerReading:
        if self.read_delay_s:
            time.sleep(self.read_delay_s)
        if len(self.reads) == self.stall_on_read:
            time.sleep(0.1)
        now = time.monotonic()
        if self.fail_between_s and self.fail_between_s[0] <= now - self.t_open < self.fail_between_s[1]:
            raise self.error("fake: device lost")
        power = {d: (k + 1) * signal_w(now) for k, d in enumerate(self.devices)}
        energy = ({d: self.counter_scale * (k + 1) * energy_j(self.t_open, now) for k, d in enumerate(self.devices)}
                  if self.counter else None)
        reading = PowerReading(t_s=now, power_w=power, energy_j=energy)
        self.reads.append((threading.get_ident(), reading))
        return reading

    def main_thread_reads(self) -> list[PowerReading]:
        return [r for ident, r in self.reads if ident == threading.main_thread().ident]

    def describe(self) -> dict:
        return {"kind": "fake", "devices": list(self.devices)}

    def close(self) -> None:
        pass


def run_for(sampler: PowerSampler, seconds: float):
    sampler.start()
    time.sleep(seconds)
    return sampler.stop()


# ---- integrate_trapezoid / resample_energy ---------------------------------------------------------------


def test_trapezoid_matches_analytic_integrals():
    t = np.linspace(0.0, 1.37, 20001)
    assert integrate_trapezoid(t, [signal_w(x) for x in t]) == pytest.approx(energy_j(0.0, 1.37), rel=1e-7)
    assert integrate_trapezoid([0.0, 2.0, 5.0], [10.0, 30.0, 60.0]) == pytest.approx(40.0 + 135.0)  # linear: exact
    assert integrate_trapezoid([1.0], [50.0]) == 0.0
    assert integrate_trapezoid([], []) == 0.0
    with pytest.raises(ValueError, match="same length"):
        integrate_trapezoid([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        integrate_trapezoid([0.0, 2.0, 1.0], [1.0, 1.0, 1.0])


def test_resample_energy_on_quadratic_trace_matches_trapezoid_error_formula():
    # P(t) = t^2 W on [0, 2] s at 1 kHz. The trapezoid on a uniform grid of step h gives T^3/3 + T*h^2/6
    # exactly, so each rate's energy has a closed form and coarser rates are strictly worse.
    t = np.arange(2001) / 1000.0
    p = t**2
    counter_j = 8.0 / 3.0
    rows = resample_energy(t, p, [1000, 100, 10, 1, 0.5, 5000], counter_energy_j=counter_j)
    full = integrate_trapezoid(t, p)
    assert full == pytest.approx(8 / 3 + 2 * 1e-6 / 6, rel=1e-12)
    by_rate = {r["rate_hz"]: r for r in rows}
    assert [r["rate_hz"] for r in rows] == [1000, 100, 10, 1, 0.5, 5000]
    for rate in (1000, 100, 10, 1, 0.5):
        h = 1.0 / rate
        row = by_rate[rate]
        assert row["energy_j"] == pytest.approx(8 / 3 + 2 * h * h / 6, rel=1e-9)
        assert row["n_samples"] == int(round(2 * rate)) + 1
        assert row["rel_error_vs_full"] == pytest.approx((row["energy_j"] - full) / full)
        assert row["rel_error_vs_counter"] == pytest.approx((row["energy_j"] - counter_j) / counter_j)
        assert row["note"] is None
    assert by_rate[1000]["rel_error_vs_full"] == 0.0  # full rate reproduces the trace exactly
    errors = [abs(by_rate[r]["rel_error_vs_full"]) for r in (1000, 100, 10, 1, 0.5)]
    assert errors == sorted(errors) and errors[-1] > 0.1
    skipped = by_rate[5000]
    assert skipped["energy_j"] is None and skipped["n_samples"] == 0 and "above the trace's own rate" in skipped["note"]


def test_resample_energy_keeps_boundaries_and_handles_jitter_and_no_counter():
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.008, 0.012, size=500))  # ~100 Hz with jitter, non-integer span
    p = np.array([signal_w(x) for x in t])
    assert trace_rate_hz(t) == pytest.approx(100, rel=0.02)
    rows = resample_energy(t, p, [100, 10, 1])
    assert all(r["rel_error_vs_counter"] is None for r in rows)
    exact = energy_j(t[0], t[-1])
    assert rows[0]["energy_j"] == pytest.approx(exact, rel=2e-3)  # the full-rate row uses (nearly) every sample
    # A 1 Hz sampler sees about one sample per second plus the two boundary readings.
    assert rows[2]["n_samples"] == int((t[-1] - t[0]) * 1) + 2
    with pytest.raises(ValueError, match="positive"):
        resample_energy(t, p, [0])


# ---- the sampler ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("hz", "min_fraction"), [(10, 0.9), (100, 0.8), (1000, 0.5)])
def test_achieved_rate_close_to_requested(hz: float, min_fraction: float):
    meter = SineMeter()
    stats = run_for(PowerSampler([meter], sample_hz=hz), 0.5)
    assert stats.requested_hz == hz
    assert min_fraction * hz <= stats.achieved_hz <= 1.1 * hz
    assert stats.duration_s == pytest.approx(0.5, abs=0.2)
    # Every grid point was either sampled or counted as missed: nothing silently lost, nothing burst.
    assert stats.n_samples + stats.missed_deadlines == pytest.approx(stats.duration_s * hz + 1, abs=0.05 * hz + 2)
    assert stats.gaps == []


def test_late_samples_count_missed_deadlines_without_burst_catch_up():
    meter = SineMeter(read_delay_s=0.025)  # each read takes 25 ms; the grid asks for one every 10 ms
    stats = run_for(PowerSampler([meter], sample_hz=100), 0.5)
    assert stats.missed_deadlines >= 10
    assert stats.achieved_hz <= 45  # at most one read per 25 ms: the skipped slots were not made up
    times = [r.t_s for _, r in meter.reads]
    assert min(np.diff(times)) >= 0.02


def test_one_stall_skips_grid_slots_instead_of_bursting():
    meter = SineMeter(stall_on_read=10)
    stats = run_for(PowerSampler([meter], sample_hz=100), 0.5)
    times = [r.t_s for _, r in meter.reads]
    stall_end = times[10]
    assert stats.missed_deadlines >= 8
    # A catch-up sampler would fire the ~10 skipped slots at once; ours takes at most the usual ~5 in 50 ms.
    assert sum(stall_end < t <= stall_end + 0.05 for t in times) <= 7


def test_samples_rows_and_on_samples_receive_every_row_exactly_once():
    batches: list[list[dict]] = []
    meter = SineMeter(devices=("gpu0", "gpu1"), counter=True)
    sampler = PowerSampler([meter], sample_hz=200, on_samples=batches.append, flush_every=7, keep_trace=True)
    stats = run_for(sampler, 0.3)
    rows = sampler.samples()
    assert len(rows) == 2 * stats.n_samples
    flat = [row for batch in batches for row in batch]
    key = [(r["t_s"], r["device"]) for r in flat]
    assert len(set(key)) == len(key)  # no duplicates
    assert sorted(key) == sorted((r["t_s"], r["device"]) for r in rows)
    assert all(len(b) >= 7 for b in batches[:-1])
    t0 = sampler.start_monotonic_s
    for row in rows:
        assert 0.0 <= row["t_s"] <= stats.duration_s
        k = 1 if row["device"] == "gpu0" else 2
        assert row["power_w"] == pytest.approx(k * signal_w(row["t_s"] + t0), rel=1e-9)
        assert row["energy_j"] is not None
    assert [r["t_s"] for r in rows] == sorted(r["t_s"] for r in rows)


def test_stop_is_idempotent_and_lifecycle_misuse_is_refused():
    sampler = PowerSampler([SineMeter()], sample_hz=50)
    with pytest.raises(RuntimeError):
        sampler.stop()
    with pytest.raises(RuntimeError):
        sampler.begin_window("w")
    first = run_for(sampler, 0.1)
    assert sampler.stop() is first
    assert not sampler.running
    with pytest.raises(RuntimeError):
        sampler.start()


def test_invalid_settings():
    with pytest.raises(ConfigError, match="meter.sample_hz"):
        PowerSampler([SineMeter()], sample_hz=2000)
    with pytest.raises(ConfigError, match="meter.sample_hz"):
        PowerSampler([SineMeter()], sample_hz=0.5)
    with pytest.raises(ValueError, match="same device"):
        PowerSampler([SineMeter(devices=("a",)), SineMeter(devices=("a",))], sample_hz=10)
    with pytest.raises(ValueError, match="at least one meter"):
        PowerSampler([], sample_hz=10)


def test_window_without_counter_integrates_samples_to_analytic_energy():
    measured = SineMeter(devices=("package-0",), counter=False)
    estimate = SineMeter(devices=("cpu",), energy_source="estimated")
    sampler = PowerSampler([measured, estimate], sample_hz=200)
    sampler.start()
    time.sleep(0.05)
    sampler.begin_window("eval-1")
    time.sleep(0.6)
    window = sampler.end_window("eval-1")
    sampler.stop()
    begin, end = measured.main_thread_reads()
    exact = energy_j(begin.t_s, end.t_s)
    assert isinstance(window, EnergyWindow)
    assert window.energy_j["package-0"] == pytest.approx(exact, rel=0.01)
    assert window.sources == {"package-0": "integrated", "cpu": "estimated"}
    assert window.source == "estimated"  # any modelled device makes the whole window "estimated"
    assert window.total_j == pytest.approx(window.energy_j["package-0"] + window.energy_j["cpu"])
    assert window.complete
    assert window.duration_s == pytest.approx(end.t_s - begin.t_s, abs=0.01)
    assert 0.0 < window.start_s < window.end_s


def test_window_with_counter_uses_the_counter_not_the_samples():
    # The counter deliberately reads 1.5x the true energy: the window must report the counter difference.
    meter = SineMeter(devices=("gpu0", "gpu1"), counter=True, counter_scale=1.5)
    sampler = PowerSampler([meter], sample_hz=100)
    sampler.start()
    sampler.begin_window("run")
    time.sleep(0.3)
    window = sampler.end_window("run")
    sampler.stop()
    begin, end = meter.main_thread_reads()
    assert window.source == "counter" and window.complete
    for device in ("gpu0", "gpu1"):
        assert window.energy_j[device] == pytest.approx(end.energy_j[device] - begin.energy_j[device], rel=1e-12)
    assert window.energy_j["gpu1"] == pytest.approx(2 * 1.5 * energy_j(begin.t_s, end.t_s), rel=1e-9)
    assert window.total_j == pytest.approx(3 * 1.5 * energy_j(begin.t_s, end.t_s), rel=1e-9)


@pytest.mark.parametrize("error", [MeterError, OSError])
def test_failing_meter_records_a_gap_keeps_sampling_and_marks_windows_incomplete(error: type[Exception]):
    flaky = SineMeter(devices=("package-0",), counter=True, fail_between_s=(0.15, 0.3), error=error)
    steady = SineMeter(devices=("gpu0",), counter=True)
    sampler = PowerSampler([flaky, steady], sample_hz=100, keep_trace=True)
    sampler.start()
    sampler.begin_window("spans-gap")
    while time.monotonic() - flaky.t_open < 0.4:
        time.sleep(0.01)
    spanning = sampler.end_window("spans-gap")
    sampler.begin_window("after-gap")
    time.sleep(0.15)
    after = sampler.end_window("after-gap")
    stats = sampler.stop()
    assert len(stats.gaps) == 1
    start_s, end_s = stats.gaps[0]
    offset = flaky.t_open - sampler.start_monotonic_s
    assert start_s + offset == pytest.approx(0.15, abs=0.06)
    assert end_s + offset == pytest.approx(0.3, abs=0.06)
    expected = "fake: device lost" if error is MeterError else "fake: OSError: fake: device lost"
    assert stats.gap_messages == [expected]
    assert not spanning.complete
    assert spanning.errors == (expected,)  # the failed reads' error text travels with the incomplete window
    assert after.complete and after.source == "counter" and after.errors == ()
    # Sampling went on through and after the gap, for both meters.
    late = [r for r in sampler.samples() if r["t_s"] > end_s + 0.05]
    assert {r["device"] for r in late} == {"package-0", "gpu0"}
    assert stats.n_samples >= 0.5 * 0.55 * 100


def test_meter_failing_at_the_window_boundary_and_until_stop():
    meter = SineMeter(devices=("gpu0",), counter=True, fail_between_s=(0.2, 99.0))
    sampler = PowerSampler([meter], sample_hz=100)
    sampler.start()
    sampler.begin_window("w")
    while time.monotonic() - meter.t_open < 0.3:
        time.sleep(0.01)
    window = sampler.end_window("w")  # the end read fails: no counter difference possible
    stats = sampler.stop()
    assert not window.complete
    assert "fake: device lost" in window.errors
    assert window.sources["gpu0"] == "integrated"
    assert window.energy_j["gpu0"] > 0.0  # the samples before the failure, never a silent zero
    assert len(stats.gaps) == 1 and stats.gaps[0][1] == pytest.approx(stats.duration_s, abs=0.01)


def test_counter_that_goes_backwards_falls_back_to_samples_and_is_incomplete():
    meter = SineMeter(devices=("gpu0",), counter=True)
    sampler = PowerSampler([meter], sample_hz=200)
    sampler.start()
    sampler.begin_window("reset")
    time.sleep(0.3)
    meter.t_open = time.monotonic()  # the counter restarts from zero, as a reopened meter's would
    window = sampler.end_window("reset")
    sampler.stop()
    begin, end = meter.main_thread_reads()
    assert window.sources == {"gpu0": "integrated"} and not window.complete
    assert window.energy_j["gpu0"] == pytest.approx(energy_j(begin.t_s, end.t_s), rel=0.01)


def test_trace_arrays_feed_resample_energy():
    meter = SineMeter(devices=("gpu0",))
    sampler = PowerSampler([meter], sample_hz=200, keep_trace=True)
    stats = run_for(sampler, 0.5)
    t, p = sampler.trace("gpu0")
    assert len(t) == stats.n_samples and np.all(np.diff(t) > 0)
    t0 = sampler.start_monotonic_s
    exact = energy_j(t[0] + t0, t[-1] + t0)
    # Resampled at the rate the sampler reached (under 200 Hz on a loaded machine, where a 200 Hz row is skipped).
    own_hz = trace_rate_hz(t)
    assert 20 < own_hz <= 200 * 1.05
    rows = resample_energy(t, p, [own_hz, 20, 4])
    assert rows[0]["energy_j"] == pytest.approx(exact, rel=0.01)
    assert rows[2]["n_samples"] < rows[1]["n_samples"] < rows[0]["n_samples"]
    with pytest.raises(ValueError, match="unknown device"):
        sampler.trace("gpu9")


def test_window_names_must_match():
    sampler = PowerSampler([SineMeter()], sample_hz=20)
    sampler.start()
    sampler.begin_window("a")
    with pytest.raises(ValueError, match="already open"):
        sampler.begin_window("a")
    with pytest.raises(ValueError, match="not begun"):
        sampler.end_window("b")
    sampler.end_window("a")
    sampler.stop()


def test_on_samples_failure_does_not_stop_sampling():
    def broken(rows: list[dict]) -> None:
        raise RuntimeError("store is down")

    sampler = PowerSampler([SineMeter()], sample_hz=100, on_samples=broken, flush_every=5, keep_trace=True)
    with pytest.warns(RuntimeWarning, match="store is down"):
        stats = run_for(sampler, 0.2)
    assert stats.callback_errors >= 2
    assert len(sampler.samples()) == stats.n_samples >= 10


def test_windows_that_share_marks_add_up_exactly_to_the_window_that_spans_them():
    counter = SineMeter(devices=("gpu0",), counter=True)
    integrated = SineMeter(devices=("package-0",), counter=False)
    estimate = SineMeter(devices=("cpu",), energy_source="estimated")
    sampler = PowerSampler([counter, integrated, estimate], sample_hz=200)
    sampler.start()
    marks = [sampler.mark()]
    for _ in range(4):
        time.sleep(0.07)
        marks.append(sampler.mark())
    sampler.stop()
    parts = [sampler.energy_between(a, b) for a, b in zip(marks, marks[1:], strict=False)]
    whole = sampler.energy_between(marks[0], marks[-1])
    for device in ("gpu0", "package-0", "cpu"):
        assert sum(p.energy_j[device] for p in parts) == pytest.approx(whole.energy_j[device], rel=1e-12)
    assert whole.sources == {"gpu0": "counter", "package-0": "integrated", "cpu": "estimated"}
    assert whole.energy_j["package-0"] == pytest.approx(energy_j(marks[0].t_s, marks[-1].t_s), rel=0.01)


class ClockedMeter:
    """A constant 250 W meter on a fake clock, with a counter; counts its reads."""

    name, energy_source, devices = "fake", "counter", ("gpu0",)

    def __init__(self, clock) -> None:
        self.clock, self.t0 = clock, clock()

    def read(self) -> PowerReading:
        now = self.clock()
        return PowerReading(t_s=now, power_w={"gpu0": 250.0}, energy_j={"gpu0": 250.0 * (now - self.t0)})

    def describe(self) -> dict:
        return {"kind": "fake"}

    def close(self) -> None:
        pass


def _drive(hz: float, ticks: int, chunk: int, traced: int) -> tuple[int, int, int, float]:
    """Tick a sampler `ticks` times on a fake clock at `hz`; return (rows delivered, chunks, memory still
    held by the sampler in bytes, window energy in J).

    The memory is what the sampler allocated during the last `traced` ticks and still holds at the end (tracemalloc
    slows every allocation about sixfold, so the ticks before them run untraced): anything it keeps per sample, or a
    buffer that grows with the run, is allocated (or reallocated) inside that stretch and counted.
    """
    import tracemalloc

    now = [1000.0]
    delivered = [0, 0]

    def sink(rows: list[dict]) -> None:  # a store would write them; the sampler must not keep them
        delivered[0] += len(rows)
        delivered[1] += 1

    sampler = PowerSampler([ClockedMeter(lambda: now[0])], hz, on_samples=sink, flush_every=chunk,
                           clock=lambda: now[0])
    sampler.start(background=False)
    begin = sampler.mark()
    for _ in range(ticks - traced):
        sampler.tick()
        now[0] += 1.0 / hz
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(traced):
        sampler.tick()
        now[0] += 1.0 / hz
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    window = sampler.energy_between(begin, sampler.mark())
    sampler.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename")
               if "wattscale/energy/sampler.py" in stat.traceback[0].filename)
    return delivered[0], delivered[1], held, window.energy_j["gpu0"]


def test_memory_stays_bounded_at_1khz_and_over_a_simulated_day():
    # 1 kHz on a fake clock: the last 5 s of a 10 s and of a 50 s run hold the same memory (one chunk at most); every
    # sample reaches the sink in chunks of 1000; the window energy is the counter's (250 W x the time).
    short = _drive(1000.0, 10_000, 1000, traced=5_000)
    long = _drive(1000.0, 50_000, 1000, traced=5_000)
    assert short[0] == 10_000 and long[0] == 50_000 and long[1] == 50
    assert long[2] < 64_000 and long[2] <= short[2] + 16_000
    assert long[3] == pytest.approx(250.0 * 50.0, rel=1e-9)
    # A whole simulated day at 1 Hz: 86,400 samples delivered, memory as small.
    day = _drive(1.0, 86_400, 60, traced=10_000)
    assert day[0] == 86_400 and day[2] < 64_000
    assert day[3] == pytest.approx(250.0 * 86_400, rel=1e-9)
