"""Meters: RAPL on a fake powercap tree of real files, NVML against a fake pynvml, the CPU estimate on a real
workload, discovery on this machine, and MeterConfig validation."""

from __future__ import annotations

import math
import os
import sys
import time
import types
from pathlib import Path

import psutil
import pytest

from wattscale.energy.cpu_estimate import CpuEstimateMeter
from wattscale.energy.discover import discover_meters
from wattscale.energy.meter import Meter, MeterConfig, MeterError
from wattscale.energy.nvml import NvmlMeter
from wattscale.energy.rapl import RaplMeter, find_rapl_zones
from wattscale.errors import ConfigError, WattscaleError

MAX_RANGE_UJ = 262_143_328_850  # a real Intel package max_energy_range_uj


def _zone(path: Path, name: str, energy_uj: int, max_range_uj: int = MAX_RANGE_UJ) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return path


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """A powercap tree like a one-socket Intel server: package-0 with core and dram sub-zones, plus psys."""
    root = tmp_path / "powercap"
    _zone(root / "intel-rapl:0", "package-0", 1_000_000)
    _zone(root / "intel-rapl:0:0", "core", 500_000)
    _zone(root / "intel-rapl:0:1", "dram", 2_000_000, max_range_uj=65_532_610_987)
    _zone(root / "intel-rapl:1", "psys", 9_000_000)
    _zone(root / "intel-rapl-mmio:0", "package-0", 1_000_000)  # repeats package-0 on Intel client chips
    (root / "intel-rapl").mkdir()  # the control-type directory, not a zone
    return root


def _set_uj(root: Path, zone: str, energy_uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{energy_uj}\n")


# --- RAPL ------------------------------------------------------------------------------------------------


def test_rapl_finds_package_and_dram_only(powercap: Path) -> None:
    zones, skipped = find_rapl_zones(powercap)
    assert [(z.device, z.path.name, z.max_energy_range_uj) for z in zones] == [
        ("package-0", "intel-rapl:0", MAX_RANGE_UJ), ("dram-0", "intel-rapl:0:1", 65_532_610_987)]
    assert skipped == ["intel-rapl:0:0 (core)", "intel-rapl:1 (psys)"]


def test_rapl_reads_counters_relative_to_open(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    assert isinstance(meter, Meter)
    assert meter.name == "rapl" and meter.energy_source == "counter"
    assert meter.devices == ("package-0", "dram-0")
    first = meter.read()
    assert first.energy_j == {"package-0": 0.0, "dram-0": 0.0}
    _set_uj(powercap, "intel-rapl:0", 1_000_000 + 4_500_000)  # +4.5 J
    _set_uj(powercap, "intel-rapl:0:1", 2_000_000 + 250_000)  # +0.25 J
    time.sleep(0.02)
    second = meter.read()
    assert second.energy_j == pytest.approx({"package-0": 4.5, "dram-0": 0.25})
    dt_s = second.t_s - first.t_s
    assert dt_s > 0
    # power = energy delta over the time since the previous power window; that window began at or before
    # the first read, so power is at most delta / dt and at least delta / (dt + the pre-read window).
    assert 4.5 / (dt_s + 0.05) <= second.power_w["package-0"] <= 4.5 / dt_s
    assert second.power_w["dram-0"] == pytest.approx(second.power_w["package-0"] * 0.25 / 4.5)
    described = meter.describe()
    assert described["kind"] == "rapl" and described["devices"] == ["package-0", "dram-0"]
    assert described["not_counted"] == ["intel-rapl:0:0 (core)", "intel-rapl:1 (psys)"]
    assert described["units"] == {"power": "W", "energy": "J"}
    meter.close()
    meter.close()


def test_rapl_power_is_constant_energy_rate(powercap: Path) -> None:
    """A counter rising at 50 W (real time) reads as about 50 W and the counter matches the integral."""
    meter = RaplMeter(powercap, power_window_s=0.01)
    t0 = time.monotonic()
    readings = []
    for _ in range(4):
        time.sleep(0.1)
        _set_uj(powercap, "intel-rapl:0", 1_000_000 + round(50e6 * (time.monotonic() - t0)))
        readings.append(meter.read())
    for reading in readings[1:]:
        assert reading.power_w["package-0"] == pytest.approx(50.0, rel=0.35)  # scheduler jitter, not math
    assert readings[-1].energy_j["package-0"] == pytest.approx(50.0 * (readings[-1].t_s - t0), rel=0.1)


def test_rapl_wraparound_adds_max_range(powercap: Path) -> None:
    near_max = MAX_RANGE_UJ - 1_000_000
    _set_uj(powercap, "intel-rapl:0", near_max)
    meter = RaplMeter(powercap)
    _set_uj(powercap, "intel-rapl:0", near_max + 600_000)
    assert meter.read().energy_j["package-0"] == pytest.approx(0.6)
    _set_uj(powercap, "intel-rapl:0", 2_000_000)  # wrapped: 400_000 to the top, then 2_000_000 after zero
    reading = meter.read()
    assert reading.energy_j["package-0"] == pytest.approx(0.6 + 0.4 + 2.0)
    assert reading.power_w["package-0"] >= 0
    assert reading.energy_j["dram-0"] == 0.0  # unchanged counter, no spurious wrap


def test_rapl_absent_root(tmp_path: Path) -> None:
    with pytest.raises(MeterError, match=r"^rapl: .*nowhere absent$"):
        RaplMeter(tmp_path / "nowhere")


def test_rapl_root_without_zones(tmp_path: Path) -> None:
    (tmp_path / "dtpm").mkdir()
    with pytest.raises(MeterError, match="rapl: no intel-rapl zones under"):
        RaplMeter(tmp_path)


def test_rapl_without_package_zone(tmp_path: Path) -> None:
    _zone(tmp_path / "intel-rapl:1", "psys", 5)
    with pytest.raises(MeterError, match=r"no package zone .*intel-rapl:1 \(psys\)"):
        RaplMeter(tmp_path)


def test_rapl_garbage_counter(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    _set_uj(powercap, "intel-rapl:0", 0)
    (powercap / "intel-rapl:0" / "energy_uj").write_text("n/a\n")
    with pytest.raises(MeterError, match=r"energy_uj holds 'n/a', not an integer"):
        meter.read()


def test_rapl_file_vanishes_mid_run(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    meter.read()
    (powercap / "intel-rapl:0:1" / "energy_uj").unlink()
    with pytest.raises(MeterError, match=r"rapl: .*intel-rapl:0:1/energy_uj vanished") as info:
        meter.read()
    assert isinstance(info.value, WattscaleError)


def test_rapl_permission_denied_message_via_patched_read(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same code path as a root-only energy_uj, made to fail even when the tests run as root."""
    real_read_text = Path.read_text

    def deny_energy(self: Path, *args, **kwargs) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny_energy)
    with pytest.raises(MeterError) as info:
        RaplMeter(powercap)
    message = str(info.value)
    assert message.startswith("rapl: permission denied reading ")
    assert str(powercap / "intel-rapl:0" / "energy_uj") in message
    assert "run as root" in message and "chmod o+r" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: chmod 000 does not deny reads (the patched-read test covers the path)")
def test_rapl_permission_denied_real_chmod(powercap: Path) -> None:
    energy = powercap / "intel-rapl:0" / "energy_uj"
    energy.chmod(0)
    try:
        with pytest.raises(MeterError, match="permission denied reading .*chmod o\\+r"):
            RaplMeter(powercap)
    finally:
        energy.chmod(0o644)


# --- NVML (a fake pynvml: this machine has no GPU) --------------------------------------------------------


class _FakeNvmlError(Exception):
    pass


class _FakeLibraryNotFound(_FakeNvmlError):
    pass


class _FakeNotSupported(_FakeNvmlError):
    pass


def _fake_pynvml(energy_mj: list[int], power_mw: list[int], instant_mw: list[int] | None = None,
                 init_error: type[Exception] | None = None, energy_supported: bool = True) -> types.ModuleType:
    """A pynvml stand-in with the call names and units of nvidia-ml-py (mJ, mW); counters are mutable lists."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = _FakeNvmlError
    nvml.NVML_SUCCESS = 0
    nvml.NVML_FI_DEV_POWER_INSTANT = 186
    nvml.shutdowns = 0

    def init() -> None:
        if init_error is not None:
            raise init_error()

    def shutdown() -> None:
        nvml.shutdowns += 1

    def total_energy(handle: int) -> int:
        if not energy_supported:
            raise _FakeNotSupported()
        return energy_mj[handle]

    def field_values(handle: int, fields: list[int]) -> list:
        assert fields == [186]
        ok = instant_mw is not None
        value = types.SimpleNamespace(uiVal=instant_mw[handle] if ok else 0)
        return [types.SimpleNamespace(nvmlReturn=0 if ok else 3, value=value)]

    nvml.nvmlInit = init
    nvml.nvmlShutdown = shutdown
    nvml.nvmlDeviceGetCount = lambda: len(energy_mj)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    nvml.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nvml.nvmlDeviceGetPowerUsage = lambda h: power_mw[h]
    nvml.nvmlDeviceGetFieldValues = field_values
    return nvml


def test_nvml_counter_relative_to_open_and_units(monkeypatch: pytest.MonkeyPatch) -> None:
    energy_mj, power_mw = [5_000_000, 7_000_000], [312_500, 70_000]
    fake = _fake_pynvml(energy_mj, power_mw)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = NvmlMeter()
    assert isinstance(meter, Meter)
    assert meter.devices == ("gpu0", "gpu1") and meter.energy_source == "counter"
    first = meter.read()
    assert first.energy_j == {"gpu0": 0.0, "gpu1": 0.0}
    energy_mj[0] += 1_234_567  # 1234.567 J
    energy_mj[1] += 1_000
    second = meter.read()
    assert second.energy_j == pytest.approx({"gpu0": 1234.567, "gpu1": 1.0})
    assert second.power_w == {"gpu0": 312.5, "gpu1": 70.0}  # no instant field here: nvmlDeviceGetPowerUsage
    gpus = meter.describe()["inputs"]["gpus"]
    assert [g["power"] for g in gpus] == ["power_usage", "power_usage"]
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3" and gpus[1]["uuid"] == "GPU-0001"
    meter.close()
    meter.close()
    assert fake.shutdowns == 1


def test_nvml_prefers_instant_power(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0], [300_000], instant_mw=[451_250]))
    meter = NvmlMeter()
    assert meter.read().power_w == {"gpu0": 451.25}
    assert meter.describe()["inputs"]["gpus"][0]["power"] == "instant"


def test_nvml_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(MeterError, match=r"^nvml: nvidia-ml-py not installed"):
        NvmlMeter()


def test_nvml_no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0], [0], init_error=_FakeLibraryNotFound))
    with pytest.raises(MeterError, match=r"^nvml: no NVIDIA GPU \(_FakeLibraryNotFound\)$"):
        NvmlMeter()


def test_nvml_pre_volta_has_no_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml([0], [0], energy_supported=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with pytest.raises(MeterError, match=r"gpu0 .* no total-energy counter .*Volta"):
        NvmlMeter()
    assert fake.shutdowns == 1  # NVML is shut down again when opening fails


def test_nvml_driver_error_mid_run(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml([0], [100_000])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = NvmlMeter()

    def lost(handle: int) -> int:
        raise _FakeNvmlError("GPU is lost")

    fake.nvmlDeviceGetPowerUsage = lost
    with pytest.raises(MeterError, match=r"nvml: reading gpu0 failed .*GPU is lost"):
        meter.read()


def test_nvml_real_library_on_this_machine() -> None:
    """Whatever this machine has, opening NVML either works or fails with one of the documented reasons."""
    try:
        meter = NvmlMeter()
    except MeterError as exc:
        assert str(exc).startswith(("nvml: nvidia-ml-py not installed", "nvml: no NVIDIA GPU"))
    else:
        try:
            reading = meter.read()
            assert set(reading.power_w) == set(meter.devices) and all(p > 0 for p in reading.power_w.values())
        finally:
            meter.close()


# --- CPU estimate -----------------------------------------------------------------------------------------


def _mean_power_w(meter: CpuEstimateMeter, seconds: float) -> float:
    end = time.monotonic() + seconds
    values = []
    while time.monotonic() < end:
        time.sleep(0.05)
        values.append(meter.read().power_w["cpu"])
    return sum(values) / len(values)


# A child that sleeps until it reads a line on stdin, then spins one core until killed. Metering a dedicated
# child (pid=) keeps the test independent of whatever threads or children earlier tests left in this process.
_SPINNER = "import sys\nsys.stdin.readline()\nwhile True: pass"


def _child_cpu_seconds(child: psutil.Process) -> float:
    times = child.cpu_times()
    return times.user + times.system


def test_cpu_estimate_rises_under_load() -> None:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", _SPINNER], stdin=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        meter = CpuEstimateMeter(tdp_w_per_core=20.0, power_window_s=0.1, pid=proc.pid)
        assert isinstance(meter, Meter)
        assert meter.energy_source == "estimated" and meter.devices == ("cpu",)
        idle_w = _mean_power_w(meter, 0.6)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.15)
        child = psutil.Process(proc.pid)
        t_before = time.monotonic()
        cpu_before, energy_before = _child_cpu_seconds(child), meter.read().energy_j["cpu"]
        busy_w = _mean_power_w(meter, 1.0)
        time.sleep(0.02)  # past the counter's 10 ms window, so the next read is fresh
        energy_after, cpu_after = meter.read().energy_j["cpu"], _child_cpu_seconds(child)
        share = (cpu_after - cpu_before) / (time.monotonic() - t_before)  # of one core, what the spinner got
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # One spinning process holds up to one core: up to 20 W. On a loaded machine it gets only part of a core, so the
    # rise is checked against the share it got (from the kernel's own count), not against a whole core.
    assert idle_w < 5.0
    assert share > 0.02, "the spinner never ran"
    assert busy_w > idle_w + 0.5 * 20.0 * share
    assert busy_w <= 20.0 * meter.cores + 1e-9
    # The cumulative estimate is the child's CPU seconds x 20 W (up to a few 10 ms ticks either side).
    assert energy_after - energy_before == pytest.approx(20.0 * (cpu_after - cpu_before), abs=20.0 * 0.05)


def test_cpu_estimate_counts_child_processes() -> None:
    import subprocess

    meter = CpuEstimateMeter(tdp_w_per_core=20.0, power_window_s=0.2, children_refresh_s=0.0)
    # The child spins until told to stop (a line on stdin), so it is alive for the whole measurement however slowly
    # it starts on a loaded machine.
    spin = ("import sys, threading\nstop = threading.Event()\n"
            "threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()\n"
            "while not stop.is_set(): pass")
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        spinner = psutil.Process(child.pid)
        t_before, cpu_before = time.monotonic(), _child_cpu_seconds(spinner)
        child_w = _mean_power_w(meter, 0.8)
        share = (_child_cpu_seconds(spinner) - cpu_before) / (time.monotonic() - t_before)
    finally:
        child.communicate("stop\n", timeout=10)
    # The child spins one core (this process itself mostly sleeps): up to 20 W, less by the share of a core a loaded
    # machine leaves it (the kernel's count).
    assert share > 0.02, "the child never ran"
    assert child_w > 0.5 * 20.0 * share


def test_cpu_estimate_describe_states_inputs() -> None:
    meter = CpuEstimateMeter(tdp_w_per_core=7.5)
    described = meter.describe()
    assert described["kind"] == "cpu-estimate" and described["energy_source"] == "estimated"
    assert described["inputs"]["tdp_w_per_core"] == 7.5
    assert described["inputs"]["cores"] == len(os.sched_getaffinity(0))
    assert "tdp_w_per_core" in described["formula"] and "estimated" in described["note"]
    with pytest.raises(MeterError, match="tdp_w_per_core must be positive"):
        CpuEstimateMeter(tdp_w_per_core=0)


# --- discovery --------------------------------------------------------------------------------------------


def test_discover_on_this_machine_falls_back_to_estimate(tmp_path: Path) -> None:
    """No GPU and no powercap here: the CPU estimate, with a reason for each meter not used."""
    config = MeterConfig(powercap_root=str(tmp_path / "no-powercap"), cpu_tdp_w_per_core=9.0)
    meters, reasons = discover_meters(config)
    try:
        names = [m.name for m in meters]
        if "nvml" in names:  # only on a machine with an NVIDIA GPU
            names.remove("nvml")
        assert names == ["cpu-estimate"]
        estimate = meters[-1]
        assert estimate.describe()["inputs"]["tdp_w_per_core"] == 9.0
        assert any(r.startswith("rapl: ") and r.endswith("no-powercap absent") for r in reasons)
        if len(meters) == 1:
            assert any(r.startswith(("nvml: nvidia-ml-py not installed", "nvml: no NVIDIA GPU")) for r in reasons)
    finally:
        for meter in meters:
            meter.close()


def test_discover_default_root_reason_here() -> None:
    if Path("/sys/class/powercap").exists():
        pytest.skip("this machine has a powercap tree")
    meters, reasons = discover_meters(MeterConfig())
    for meter in meters:
        meter.close()
    assert "rapl: /sys/class/powercap absent" in reasons


def test_discover_prefers_rapl_over_estimate(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    meters, reasons = discover_meters(MeterConfig(powercap_root=str(powercap)))
    assert [m.name for m in meters] == ["rapl"]
    assert reasons == ["nvml: nvidia-ml-py not installed (pip install 'wattscale[nvidia]')",
                       "cpu-estimate: not used, RAPL measures the CPU"]


def test_discover_gpu_plus_estimate_in_preference_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0], [200_000]))
    config = MeterConfig(kinds=("cpu-estimate", "nvml"), powercap_root=str(tmp_path))
    meters, reasons = discover_meters(config)
    assert [m.name for m in meters] == ["cpu-estimate", "nvml"]
    assert reasons == ["rapl: not requested (meter.kinds)"]


def test_discover_rapl_permission_denied_falls_back(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read_text = Path.read_text

    def deny_energy(self: Path, *args, **kwargs) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(Path, "read_text", deny_energy)
    meters, reasons = discover_meters(MeterConfig(powercap_root=str(powercap)))
    assert [m.name for m in meters] == ["cpu-estimate"]
    assert any(r.startswith("rapl: permission denied reading ") for r in reasons)


def test_discover_disabled() -> None:
    assert discover_meters(MeterConfig(kinds=("none",))) == ([], ["metering disabled (meter.kinds = none)"])


# --- MeterConfig ------------------------------------------------------------------------------------------


def test_meter_config_defaults() -> None:
    config = MeterConfig()
    assert (config.sample_hz, config.kinds, config.cpu_tdp_w_per_core) == (10.0, ("nvml", "rapl", "cpu-estimate"),
                                                                           10.0)
    assert config.grid_gco2e_per_kwh is None and config.enabled
    assert MeterConfig(kinds=["rapl"]).kinds == ("rapl",)  # lists from TOML become tuples
    assert MeterConfig(sample_hz=1).sample_hz == 1 and MeterConfig(sample_hz=1000.0).sample_hz == 1000.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sample_hz": 0.5}, r"meter.sample_hz: 0.5 is out of range; choose 1 to 1000 Hz"),
    ({"sample_hz": 1000.5}, r"meter.sample_hz: 1000.5 is out of range"),
    ({"sample_hz": math.nan}, r"meter.sample_hz: expected a finite number"),
    ({"sample_hz": "10"}, r"meter.sample_hz: expected a finite number, got '10'"),
    ({"kinds": ()}, r"meter.kinds: empty"),
    ({"kinds": ("rapl", "zeus")}, r"meter.kinds: unknown meter kind 'zeus'; choose from nvml, rapl, cpu-estimate"),
    ({"kinds": ("none", "rapl")}, r"meter.kinds: 'none' disables metering and cannot be combined"),
    ({"kinds": ("rapl", "rapl")}, r"meter.kinds: .* lists a kind twice"),
    ({"kinds": "rapl"}, r"meter.kinds: expected a list"),
    ({"cpu_tdp_w_per_core": 0}, r"meter.cpu_tdp_w_per_core: 0 must be positive"),
    ({"cpu_tdp_w_per_core": math.inf}, r"meter.cpu_tdp_w_per_core: expected a finite number"),
    ({"powercap_root": ""}, r"meter.powercap_root: must be a directory path"),
    ({"grid_gco2e_per_kwh": -1.0}, r"meter.grid_gco2e_per_kwh: -1.0 must be >= 0"),
])
def test_meter_config_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MeterConfig(**kwargs)


def test_meters_command_lists_found_and_not_used(powercap: Path, tmp_path: Path) -> None:
    """`wattscale meters --json` through the CLI: RAPL from a real (fake) powercap tree, and the reasons."""
    import json
    import subprocess
    import sys

    def meters(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "wattscale", "meters", "--json", *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    with_rapl = meters("--powercap-root", str(powercap))
    assert [m["name"] for m in with_rapl["meters"]] == ["rapl"]
    assert with_rapl["meters"][0]["energy_source"] == "counter"
    assert set(with_rapl["meters"][0]["devices"]) == {"package-0", "dram-0"}
    assert any(r.startswith("cpu-estimate: not used") for r in with_rapl["not_used"])
    without = meters("--powercap-root", str(tmp_path / "absent"), "--cpu-tdp-w-per-core", "7.5")
    estimate = [m for m in without["meters"] if m["name"] == "cpu-estimate"]
    assert estimate and estimate[0]["energy_source"] == "estimated"
    assert estimate[0]["details"]["inputs"]["tdp_w_per_core"] == 7.5
    assert any(r.startswith("rapl:") and "absent" in r for r in without["not_used"])
