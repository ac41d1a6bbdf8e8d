"""A pynvml stand-in for GPU control (power limit, locked clocks) with nvidia-ml-py's call names and units (mW, MHz).

Each GPU keeps its state in a `FakeGpu`; every call that changes something is appended to ``calls`` and, when
``log_path`` is given, written as one JSON line to that file (so a test can read what a killed subprocess did).
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from pathlib import Path

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4


class NVMLError(Exception):
    """As pynvml's: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 4: "Insufficient Permissions"}.get(self.value, f"Unknown Error {self.value}")


class NVMLError_NoPermission(NVMLError):  # noqa: N801 - pynvml's name
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NO_PERMISSION)


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


@dataclass
class FakeGpu:
    """One GPU: power limit (mW, settable within constraints), SM clocks (MHz), and what the caller may do."""

    uuid: str = "GPU-0000"
    name: str = "NVIDIA H200"
    limit_mw: int = 700_000
    min_mw: int = 200_000
    max_mw: int = 700_000
    sm_clock_mhz: int = 1980
    max_sm_clock_mhz: int = 1980
    memory_clocks: tuple[int, ...] = (3201, 1593)
    graphics_clocks: dict[int, tuple[int, ...]] = field(default_factory=lambda: {
        3201: tuple(range(345, 1981, 15)), 1593: tuple(range(345, 1501, 15))})
    locked: tuple[int, int] | None = None
    root: bool = True  # False: every setter raises NVMLError_NoPermission
    clocks_supported: bool = True


def fake_pynvml(gpus: list[FakeGpu] | None = None, log_path: Path | None = None) -> types.ModuleType:
    """A module with the pynvml calls `wattscale.energy.gpu_control` uses, over `gpus` (default: one H200)."""
    gpus = gpus if gpus is not None else [FakeGpu()]
    nvml = types.ModuleType("pynvml")
    nvml.gpus = gpus
    nvml.calls = []
    nvml.NVMLError = NVMLError
    nvml.NVMLError_NoPermission = NVMLError_NoPermission
    nvml.NVMLError_NotSupported = NVMLError_NotSupported
    nvml.NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    nvml.NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    nvml.NVML_CLOCK_SM = 1

    def log(*call: object) -> None:
        nvml.calls.append(call)
        if log_path is not None:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(call) + "\n")

    def gpu(handle: int) -> FakeGpu:
        return gpus[handle]

    def need_root(handle: int) -> None:
        if not gpu(handle).root:
            raise NVMLError_NoPermission()

    def by_uuid(uuid: str | bytes) -> int:
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, g in enumerate(gpus):
            if g.uuid == uuid:
                return i
        raise NVMLError(13)  # NVML_ERROR_NOT_FOUND

    def set_limit(handle: int, limit_mw: int) -> None:
        need_root(handle)
        g = gpu(handle)
        if not g.min_mw <= limit_mw <= g.max_mw:
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        g.limit_mw = limit_mw
        log("set_power_limit", g.uuid, limit_mw)

    def lock(handle: int, low: int, high: int) -> None:
        need_root(handle)
        g = gpu(handle)
        if not g.clocks_supported:
            raise NVMLError_NotSupported()
        g.locked = (low, high)
        g.sm_clock_mhz = high
        log("lock_clocks", g.uuid, low, high)

    def reset(handle: int) -> None:
        need_root(handle)
        g = gpu(handle)
        g.locked = None
        g.sm_clock_mhz = g.max_sm_clock_mhz
        log("reset_clocks", g.uuid)

    def supported_memory(handle: int) -> list[int]:
        if not gpu(handle).clocks_supported:
            raise NVMLError_NotSupported()
        return list(gpu(handle).memory_clocks)

    nvml.nvmlInit = lambda: log("init")
    nvml.nvmlShutdown = lambda: log("shutdown")
    nvml.nvmlDeviceGetHandleByUUID = by_uuid
    nvml.nvmlDeviceGetName = lambda h: gpu(h).name.encode()
    nvml.nvmlDeviceGetPowerManagementLimit = lambda h: gpu(h).limit_mw
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: gpu(h).limit_mw
    nvml.nvmlDeviceGetPowerManagementLimitConstraints = lambda h: [gpu(h).min_mw, gpu(h).max_mw]
    nvml.nvmlDeviceSetPowerManagementLimit = set_limit
    nvml.nvmlDeviceGetClockInfo = lambda h, clock: gpu(h).sm_clock_mhz
    nvml.nvmlDeviceGetMaxClockInfo = lambda h, clock: gpu(h).max_sm_clock_mhz
    nvml.nvmlDeviceGetSupportedMemoryClocks = supported_memory
    nvml.nvmlDeviceGetSupportedGraphicsClocks = lambda h, memory: list(gpu(h).graphics_clocks[memory])
    nvml.nvmlDeviceSetGpuLockedClocks = lock
    nvml.nvmlDeviceResetGpuLockedClocks = reset
    return nvml
