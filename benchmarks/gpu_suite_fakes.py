"""Stand-ins for the GPU suite's `--dry-run` on a machine without a GPU: a fake NVML and a fake Zeus.

`FakeNvml` is a ``pynvml`` module with nvidia-ml-py's call names and units (mW, mJ) for one GPU. Its power
is a known synthetic signal of ``time.monotonic()``, P(t) = s * (BASE_W + AMP_W * sin(2 pi F t)), whose
energy counter is the signal's exact integral; ``s`` is the power limit over the default limit (at most 1),
so a lower limit draws less. The power limit and the counter's history live in a JSON file, so the
suite's parent process and its section processes see one card, as they would a real one (the parent
restores a limit a killed section left set). `fake_zeus` is a ``zeus`` package whose ``ZeusMonitor``
reads that counter through the same calls Zeus makes of NVML.
"""

from __future__ import annotations

import json
import math
import sys
import time
import types
from pathlib import Path

BASE_W = 300.0
AMP_W = 100.0
FREQ_HZ = 1.3
DEFAULT_LIMIT_MW = 700_000
MIN_LIMIT_MW = 200_000
MAX_LIMIT_MW = 700_000
FAKE_GPU_NAME = "Fake NVIDIA H200 (dry run)"


class FakeNvmlError(Exception):
    """What the fake raises where nvidia-ml-py raises NVMLError."""


def _energy_j(t_s: float, t0_s: float, scale: float) -> float:
    """The exact integral of scale * (BASE_W + AMP_W sin(2 pi F t)) from t0_s to t_s, in joules."""
    w = 2 * math.pi * FREQ_HZ
    return scale * (BASE_W * (t_s - t0_s) + AMP_W / w * (math.cos(w * t0_s) - math.cos(w * t_s)))


class FakeNvml(types.ModuleType):
    """A one-GPU pynvml whose state (power limit, counter segments) is the JSON file `state_path`."""

    NVMLError = FakeNvmlError
    NVML_SUCCESS = 0
    NVML_FI_DEV_POWER_INSTANT = 186

    def __init__(self, state_path: Path) -> None:
        super().__init__("pynvml")
        self.state_path = Path(state_path)
        if not self.state_path.exists():
            self._save({"limit_mw": DEFAULT_LIMIT_MW, "segment_t0_s": time.monotonic(), "segment_start_j": 0.0,
                        "set_calls": []})

    # ---- the state file: the limit, and where the current constant-scale segment of the counter began ----
    def _load(self) -> dict:
        return json.loads(self.state_path.read_text())

    def _save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)

    @staticmethod
    def _scale(state: dict) -> float:
        return min(1.0, state["limit_mw"] / DEFAULT_LIMIT_MW)

    def power_w(self, t_s: float | None = None) -> float:
        """The synthetic power now (or at monotonic time t_s)."""
        t = time.monotonic() if t_s is None else t_s
        return self._scale(self._load()) * (BASE_W + AMP_W * math.sin(2 * math.pi * FREQ_HZ * t))

    def energy_j(self, t_s: float | None = None) -> float:
        """The counter's exact value in joules (nvmlDeviceGetTotalEnergyConsumption reports it in mJ)."""
        t = time.monotonic() if t_s is None else t_s
        state = self._load()
        return state["segment_start_j"] + _energy_j(t, state["segment_t0_s"], self._scale(state))

    # ---- the nvidia-ml-py calls the suite and wattscale's NvmlMeter make ----
    def nvmlInit(self) -> None:  # noqa: N802 (nvidia-ml-py's names)
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        if index != 0:
            raise FakeNvmlError(f"no GPU {index}")
        return 0

    def nvmlDeviceGetName(self, handle: int) -> str:  # noqa: N802
        return FAKE_GPU_NAME

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return "GPU-00000000-fake-dry-run"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:  # noqa: N802
        return int(round(self.energy_j() * 1000))

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802
        return int(round(self.power_w() * 1000))

    def nvmlDeviceGetFieldValues(self, handle: int, fields: list[int]) -> list:  # noqa: N802
        value = types.SimpleNamespace(uiVal=self.nvmlDeviceGetPowerUsage(handle))
        return [types.SimpleNamespace(nvmlReturn=0, value=value) for _ in fields]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:  # noqa: N802
        return []

    nvmlDeviceGetGraphicsRunningProcesses = nvmlDeviceGetComputeRunningProcesses  # noqa: N815

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:  # noqa: N802
        return self._load()["limit_mw"]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: int) -> int:  # noqa: N802
        return DEFAULT_LIMIT_MW

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: int) -> tuple[int, int]:  # noqa: N802
        return MIN_LIMIT_MW, MAX_LIMIT_MW

    def nvmlDeviceSetPowerManagementLimit(self, handle: int, limit_mw: int) -> None:  # noqa: N802
        if not MIN_LIMIT_MW <= limit_mw <= MAX_LIMIT_MW:
            raise FakeNvmlError(f"power limit {limit_mw} mW outside [{MIN_LIMIT_MW}, {MAX_LIMIT_MW}]")
        now = time.monotonic()
        state = self._load()
        # The counter continues from where it is: a new segment at the new scale starts now.
        state["segment_start_j"] = state["segment_start_j"] + _energy_j(now, state["segment_t0_s"],
                                                                        self._scale(state))
        state["segment_t0_s"], state["limit_mw"] = now, int(limit_mw)
        state["set_calls"].append(int(limit_mw))
        self._save(state)

    def set_calls(self) -> list[int]:
        """Every limit set so far, in mW (for the dry run's record)."""
        return list(self._load()["set_calls"])


def install_fake_nvml(state_path: Path) -> FakeNvml:
    """Put a FakeNvml in sys.modules as ``pynvml`` (wattscale's NvmlMeter imports it by that name)."""
    fake = FakeNvml(state_path)
    sys.modules["pynvml"] = fake
    return fake


def fake_zeus(nvml: FakeNvml) -> types.ModuleType:
    """A ``zeus`` package with ``zeus.monitor.ZeusMonitor`` (begin_window / end_window -> gpu_energy in J)."""

    class Measurement:
        def __init__(self, time_s: float, gpu_energy: dict[int, float]) -> None:
            self.time, self.gpu_energy = time_s, gpu_energy
            self.total_energy = sum(gpu_energy.values())

    class ZeusMonitor:
        def __init__(self, gpu_indices: list[int] | None = None, **_: object) -> None:
            self.gpu_indices = list(gpu_indices or [0])
            self._windows: dict[str, tuple[float, dict[int, float]]] = {}

        def _read(self) -> dict[int, float]:
            return {i: nvml.nvmlDeviceGetTotalEnergyConsumption(i) / 1000.0 for i in self.gpu_indices}

        def begin_window(self, key: str, sync_execution: bool = True) -> None:
            self._windows[key] = (time.monotonic(), self._read())

        def end_window(self, key: str, sync_execution: bool = True) -> Measurement:
            t0, start = self._windows.pop(key)
            end = self._read()
            return Measurement(time.monotonic() - t0, {i: end[i] - start[i] for i in self.gpu_indices})

    zeus = types.ModuleType("zeus")
    zeus.__version__ = "fake (dry run)"
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = ZeusMonitor
    zeus.monitor = monitor
    return zeus


def install_fake_zeus(nvml: FakeNvml) -> None:
    """Put the fake ``zeus`` and ``zeus.monitor`` in sys.modules."""
    zeus = fake_zeus(nvml)
    sys.modules["zeus"], sys.modules["zeus.monitor"] = zeus, zeus.monitor
