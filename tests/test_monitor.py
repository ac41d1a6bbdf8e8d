"""The public Monitor: phases that add up to the job, tokens and warm-up, windows, components and total
rules, results as JSON, resume, failures, a measured run in the store, and two measurements on one host.

Fake meters here read power as a function of time.monotonic(), with an energy counter where the real
meter has one, so every figure has an exact reference.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wattscale import Monitor
from wattscale.energy import MonitorError
from wattscale.energy.meter import PowerReading
from wattscale.store import open_store


class ConstantMeter:
    """`watts` per device, with a counter (energy_source counter) or without (integrated / estimated)."""

    def __init__(self, name: str, devices: tuple[str, ...], watts: float, counter: bool = True,
                 energy_source: str = "counter") -> None:
        self.name, self.devices, self.watts, self.counter = name, devices, watts, counter
        self.energy_source = energy_source
        self.t0 = time.monotonic()

    def read(self) -> PowerReading:
        now = time.monotonic()
        energy = {d: self.watts * (now - self.t0) for d in self.devices} if self.counter else None
        return PowerReading(now, dict.fromkeys(self.devices, self.watts), energy)

    def describe(self) -> dict:
        return {"kind": self.name, "devices": list(self.devices)}

    def close(self) -> None:
        pass


def gpu(watts: float = 300.0) -> ConstantMeter:
    return ConstantMeter("nvml", ("gpu0",), watts)


def cpu_estimate(watts: float = 20.0) -> ConstantMeter:
    return ConstantMeter("cpu-estimate", ("cpu",), watts, counter=False, energy_source="estimated")


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.002)


@pytest.fixture
def registry(tmp_path: Path) -> str:
    return str(tmp_path / "host")


def test_phases_add_up_to_the_job_with_tokens_and_sources(registry: str) -> None:
    with Monitor(meters=[gpu(300.0)], sample_hz=100, idle_seconds=0.2, warmup_steps=0,
                 host_registry=registry) as m:
        busy(0.05)  # outside any phase: "other"
        for _ in range(3):
            with m.phase("train"):
                busy(0.1)
                m.step(tokens=1000)
        with m.phase("eval"):
            busy(0.1)
    result = m.result
    assert list(result.phases) == ["other", "train", "eval"]
    train, job = result.phase("train"), result.job
    assert train.tokens == 3000 and train.steps == 3 and job.tokens == 3000
    assert train.seconds == pytest.approx(0.3, abs=0.05)
    # A 300 W counter: each phase's energy is 300 W x its seconds (up to the few microseconds between the
    # boundary's clock reading and the meter's own); the phases add up to the job exactly.
    for phase in result.phases.values():
        assert phase.energy_j == pytest.approx(300.0 * phase.seconds, abs=300.0 * 0.002)
        assert phase.source == "counter" and phase.complete and phase.total_components == ("gpu",)
    assert sum(p.energy_j for p in result.phases.values()) == pytest.approx(job.energy_j, rel=1e-12)
    assert sum(p.seconds for p in result.phases.values()) == pytest.approx(job.seconds, rel=1e-12)
    assert train.joules_per_token == pytest.approx(train.energy_j / 3000)
    assert train.tokens_per_joule == pytest.approx(3000 / train.energy_j)
    assert train.mean_power_w == pytest.approx(300.0, rel=0.01)
    assert result.idle.seconds == pytest.approx(0.2, abs=0.05) and result.idle.energy_j == pytest.approx(
        300.0 * result.idle.seconds, abs=300.0 * 0.002)
    assert result.idle.energy_j not in (job.energy_j,)  # the baseline is beside the job, not in it
    data = json.loads(result.to_json())
    assert data["phases"]["train"]["components"]["gpu"]["source"] == "counter"
    assert data["job"]["energy_j"] == pytest.approx(job.energy_j) and data["status"] == "finished"


def test_warmup_steps_and_steps_outside_phases() -> None:
    with Monitor(meters=[gpu()], idle_seconds=0, warmup_steps=2, host_registry=None) as m:
        with m.phase("train"):
            assert m.current_phase == "warmup"
            for _ in range(5):
                busy(0.01)
                m.step(tokens=100)
            assert m.current_phase == "train"
        m.step(tokens=7)  # outside a phase: counted in other
        with m.phase("train"):  # later blocks of the same session are training, not warm-up again
            assert m.current_phase == "train"
            m.step(tokens=100)
    result = m.result
    assert (result.phase("warmup").steps, result.phase("warmup").tokens) == (2, 200)
    assert (result.phase("train").steps, result.phase("train").tokens) == (4, 400)
    assert result.phase("other").tokens == 7 and result.job.tokens == 607


def test_misuse_is_a_clear_error() -> None:
    m = Monitor(meters=[], idle_seconds=0)
    with pytest.raises(MonitorError, match="not started"):
        m.step(tokens=1)
    with m:
        with m.phase("train"), pytest.raises(MonitorError, match="phases do not nest"):
            with m.phase("eval"):
                pass
        with pytest.raises(MonitorError, match="not a phase name"):
            with m.phase("idle"):
                pass
        with pytest.raises(MonitorError, match="tokens=-1"):
            m.step(tokens=-1)
        with pytest.raises(MonitorError, match="was not begun"):
            m.end_window("nope")
        m.begin_window("w")
        with pytest.raises(MonitorError, match="already open"):
            m.begin_window("w")
    with pytest.raises(MonitorError, match="stopped"):
        m.begin_window("late")


def test_without_meters_time_and_tokens_are_kept_and_energy_is_none_not_zero() -> None:
    with Monitor(kinds=("none",), idle_seconds=0, warmup_steps=0) as m:
        with m.phase("train"):
            busy(0.05)
            m.step(tokens=10)
    train = m.result.phase("train")
    assert train.seconds > 0.04 and train.tokens == 10
    assert train.energy_j is None and train.source is None and train.joules_per_token is None
    assert m.result.job.energy_j is None and m.result.energy_j is None


def test_windows_overlap_phases_and_split_by_phase() -> None:
    with Monitor(meters=[gpu(100.0)], sample_hz=50, idle_seconds=0, warmup_steps=0) as m:
        m.begin_window("epoch")
        with m.phase("train"):
            busy(0.05)
            m.step(tokens=50)
            m.begin_window("inner")  # opens mid-phase
            busy(0.05)
            m.step(tokens=50)
        with m.phase("eval"):
            busy(0.05)
        inner = m.end_window("inner")
        epoch = m.end_window("epoch")
    assert set(epoch.phases) >= {"train", "eval"} and epoch.end_tokens - epoch.start_tokens == 100
    assert sum(p.energy_j for p in epoch.phases.values()) == pytest.approx(epoch.total.energy_j, rel=1e-12)
    assert inner.phases["train"].tokens == 50 and inner.start_tokens == 50
    assert inner.total.energy_j < epoch.total.energy_j
    assert epoch.total.energy_j == pytest.approx(100.0 * epoch.seconds, abs=100.0 * 0.002)
    assert m.result.windows["epoch"].total.energy_j == epoch.total.energy_j


def test_an_estimate_stays_beside_a_measured_total_unless_all_is_asked() -> None:
    def run(total: str):
        with Monitor(meters=[gpu(300.0), cpu_estimate(20.0)], sample_hz=100, idle_seconds=0, total=total) as m:
            with m.phase("train"):
                busy(0.2)
        return m.result.job

    measured = run("measured")
    assert set(measured.components) == {"gpu", "cpu_estimate"}
    assert measured.components["cpu_estimate"].source == "estimated"
    assert measured.total_components == ("gpu",) and measured.source == "counter"
    assert measured.energy_j == pytest.approx(measured.components["gpu"].energy_j)
    everything = run("all")
    assert everything.source == "mixed" and everything.total_components == ("gpu", "cpu_estimate")
    assert everything.energy_j == pytest.approx(sum(c.energy_j for c in everything.components.values()))
    # Nothing measured: the estimate is the total, and says so.
    with Monitor(meters=[cpu_estimate(20.0)], sample_hz=100, idle_seconds=0) as m:
        busy(0.1)
    assert m.result.job.source == "estimated" and m.result.job.total_components == ("cpu_estimate",)


def test_a_measurement_resumes_from_its_state() -> None:
    with Monitor(meters=[gpu(200.0)], idle_seconds=0, warmup_steps=0) as first:
        first.begin_window("interval")
        with first.phase("train"):
            busy(0.1)
            first.step(tokens=500)
        state = first.state()
    json.dumps(state)  # goes into a checkpoint as JSON
    with Monitor(meters=[gpu(200.0)], idle_seconds=0, warmup_steps=0, resume=state) as second:
        assert second.job_seconds() >= state["job_seconds"] and second.tokens == 500
        assert second.open_windows == ["interval"]
        with second.phase("train"):
            busy(0.1)
            second.step(tokens=500)
        interval = second.end_window("interval")
    train = second.result.phase("train")
    assert train.tokens == 1000 and interval.end_tokens - interval.start_tokens == 1000
    assert train.energy_j == pytest.approx(200.0 * train.seconds, abs=200.0 * 0.004)
    assert interval.phases["train"].energy_j == pytest.approx(train.energy_j, rel=1e-9)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_code_that_raises_keeps_the_partial_measurement(error: BaseException, status: str) -> None:
    m = Monitor(meters=[gpu()], idle_seconds=0)
    with pytest.raises(type(error)), m, m.phase("train"):
        busy(0.05)
        raise error
    assert m.result.status == status and m.result.phase("train").energy_j > 0


def test_a_measured_run_is_stored_and_shown_like_a_trained_one(tmp_path: Path, run_cli_in_process,
                                                                registry: str) -> None:
    store_path = tmp_path / "m.db"
    with Monitor(meters=[gpu(250.0), cpu_estimate(15.0)], sample_hz=50, idle_seconds=0.1, warmup_steps=1,
                 store=str(store_path), name="my fine-tune", metadata={"model": "gpt-mini", "params": 1234},
                 host_registry=registry) as m:
        for _ in range(3):
            with m.phase("train"):
                busy(0.05)
                m.step(tokens=256)
        with m.phase("eval"):
            busy(0.05)
    with open_store(str(store_path)) as store:
        (record,) = store.list_runs()
        rows = store.energy_measurements(record["run_id"])
        samples = store.power_samples(record["run_id"])
    assert record["run_id"] == m.run_id and record["kind"] == "measured" and record["status"] == "finished"
    assert record["name"] == "my fine-tune" and record["preset"] == "gpt-mini" and record["params_total"] == 1234
    assert "pytest" in record["command_line"] or "python" in record["command_line"]
    assert record["energy_source"] == "counter" and record["energy_j"] == pytest.approx(m.result.job.energy_j)
    assert record["train_tokens"] == 512 and record["tokens_seen"] == 768
    assert record["train_energy_j"] == pytest.approx(m.result.phase("train").energy_j)
    assert set(record["phases"]) == {"idle", "other", "warmup", "train", "eval"}
    assert {(r["scope"], r["component"]) for r in rows} >= {("run", "gpu"), ("run", "cpu_estimate"), ("idle", "gpu")}
    assert samples and {s["device"] for s in samples} == {"gpu0", "cpu"}
    assert all(s["t_seconds"] >= 0 for s in samples)  # the idle baseline's samples are not in the trace
    shown = run_cli_in_process("--store", str(store_path), "runs", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)[0]["kind"] == "measured"
    energy = run_cli_in_process("--store", str(store_path), "energy", m.run_id, "--json")
    assert energy.returncode == 0, energy.stderr
    report = json.loads(energy.stdout)
    assert report["kind"] == "measured" and report["source"] == "counter" and report["total_components"] == ["gpu"]
    assert {p["phase"] for p in report["phases"]} == {"other", "warmup", "train", "eval"}
    analysis = run_cli_in_process("--store", str(store_path), "analyze", "--json", "--no-dynamics")
    assert analysis.returncode == 0, analysis.stderr
    (run,) = json.loads(analysis.stdout)["runs"]
    assert run["condition"] == "measured: my fine-tune" and run["energy_basis"] == "train"
    assert run["joules_per_token"] == pytest.approx(record["train_energy_j"] / 512)
    html = run_cli_in_process("--store", str(store_path), "report", "-o", str(tmp_path / "r.html"))
    assert html.returncode == 0, html.stderr
    assert "my fine-tune" in (tmp_path / "r.html").read_text()


def test_two_measurements_on_one_host_record_each_other(tmp_path: Path, registry: str) -> None:
    # A second process measures the host's CPU package (a host-wide counter) while this one does.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_monitor import ConstantMeter
        from wattscale import Monitor
        with Monitor(meters=[ConstantMeter("rapl", ("package-0",), 40.0)], idle_seconds=0,
                     host_registry={registry!r}, run_id="other-run") as m:
            print("started", flush=True)
            time.sleep(1.0)
        print(",".join(o.id for o in m.result.shared_host), flush=True)
    """)
    with Monitor(meters=[ConstantMeter("rapl", ("package-0",), 40.0)], idle_seconds=0, host_registry=registry,
                 run_id="this-run") as m:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "started"
        out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out.strip() == "this-run"  # the other process saw this one
    (overlap,) = m.result.shared_host
    assert overlap.id == "other-run" and overlap.host_wide and overlap.overlap_s > 0.5
    assert any("host-wide counters" in note for note in m.result.notes)
    # A later measurement does not overlap with either.
    with Monitor(meters=[gpu()], idle_seconds=0, host_registry=registry) as later:
        pass
    assert later.result.shared_host == ()
