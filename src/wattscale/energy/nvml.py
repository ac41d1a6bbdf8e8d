"""NVIDIA GPU power and energy through NVML (``nvidia-ml-py``, imported as ``pynvml``; extra ``wattscale[nvidia]``).

nvidia-ml-py is used directly rather than through Zeus: it is one small dependency, and Zeus's GPU energy
comes from the same NVML total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer),
so Zeus would add dependencies without adding accuracy.

Energy is that counter (millijoules since the driver loaded), taken relative to its value when the meter
opened. Power for the trace is the instantaneous field ``NVML_FI_DEV_POWER_INSTANT`` where the driver has
it, because ``nvmlDeviceGetPowerUsage`` on Ampere (except GA100) and newer returns a one-second average,
which would blur a trace sampled faster than 1 Hz; otherwise ``nvmlDeviceGetPowerUsage``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from types import ModuleType

from wattscale.energy.meter import MeterError, PowerReading, describe_header


def import_pynvml() -> ModuleType:
    """The pynvml module from nvidia-ml-py, or MeterError saying how to install it."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise MeterError("nvml: nvidia-ml-py not installed (pip install 'wattscale[nvidia]')") from exc


class NvmlMeter:
    """Per-GPU power (W) and energy (J, from the hardware counter) for the GPUs NVML sees."""

    name = "nvml"
    energy_source = "counter"

    def __init__(self, device_indices: Sequence[int] | None = None, device_uuid: str | None = None) -> None:
        self._nvml = import_pynvml()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise MeterError(f"nvml: no NVIDIA GPU ({type(exc).__name__})") from exc
        self._open = True
        try:
            self._setup(device_indices, device_uuid)
        except self._nvml.NVMLError as exc:
            self.close()
            raise MeterError(f"nvml: cannot open the GPUs ({type(exc).__name__}: {exc})") from exc
        except BaseException:
            self.close()
            raise

    def _setup(self, device_indices: Sequence[int] | None, device_uuid: str | None) -> None:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            raise MeterError("nvml: no NVIDIA GPU (NVML found 0 devices)")
        indices = list(range(count)) if device_indices is None else list(device_indices)
        if device_uuid is not None:
            # NVML numbers GPUs in PCI order, CUDA (and CUDA_VISIBLE_DEVICES) may not: match by UUID.
            wanted = device_uuid.removeprefix("GPU-").lower()
            indices = [i for i in range(count) if _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))
                       .removeprefix("GPU-").lower() == wanted]
            if not indices:
                raise MeterError(f"nvml: no GPU with UUID {device_uuid} among the {count} NVML sees")
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise MeterError(f"nvml: GPU index {bad[0]} does not exist; NVML sees {count} GPU(s)")
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        self.devices = tuple(f"gpu{i}" for i in indices)
        self._names = [_text(nvml.nvmlDeviceGetName(h)) for h in self._handles]
        self._uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in self._handles]
        self._start_mj = []
        for device, name, handle in zip(self.devices, self._names, self._handles, strict=True):
            try:
                self._start_mj.append(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except nvml.NVMLError as exc:
                raise MeterError(f"nvml: {device} ({name}) has no total-energy counter ({type(exc).__name__}; "
                                 "it needs a Volta or newer GPU)") from exc
        self._instant = [self._instant_power_mw(h) is not None for h in self._handles]

    def read(self) -> PowerReading:
        """Power and cumulative energy of every GPU; raises MeterError on a driver error."""
        power_w: dict[str, float] = {}
        energy_j: dict[str, float] = {}
        try:
            for i, (device, handle) in enumerate(zip(self.devices, self._handles, strict=True)):
                power_mw = self._instant_power_mw(handle) if self._instant[i] else None
                if power_mw is None:
                    power_mw = self._nvml.nvmlDeviceGetPowerUsage(handle)
                power_w[device] = power_mw / 1000.0
                energy_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                energy_j[device] = (energy_mj - self._start_mj[i]) / 1000.0
        except self._nvml.NVMLError as exc:
            raise MeterError(f"nvml: reading {device} failed ({type(exc).__name__}: {exc})") from exc
        return PowerReading(t_s=time.monotonic(), power_w=power_w, energy_j=energy_j)

    def describe(self) -> dict:
        """Kind, devices with names and UUIDs, and which NVML calls give power and energy."""
        return {
            **describe_header(self),
            "inputs": {
                "gpus": [{"device": d, "name": n, "uuid": u, "power": "instant" if inst else "power_usage"}
                         for d, n, u, inst in zip(self.devices, self._names, self._uuids, self._instant,
                                                  strict=True)],
                "energy": "nvmlDeviceGetTotalEnergyConsumption (mJ), relative to the value at open",
                "power": "NVML_FI_DEV_POWER_INSTANT if supported, else nvmlDeviceGetPowerUsage (mW; "
                         "a 1 s average on Ampere and newer)",
            },
            "units": {"power": "W", "energy": "J"},
        }

    def close(self) -> None:
        """Shut NVML down once."""
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass  # the driver is going away anyway; nothing useful to report

    def _instant_power_mw(self, handle: object) -> int | None:
        nvml = self._nvml
        field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is None or not hasattr(nvml, "nvmlDeviceGetFieldValues"):
            return None
        try:
            value = nvml.nvmlDeviceGetFieldValues(handle, [field])[0]
        except nvml.NVMLError:
            return None
        if value.nvmlReturn != getattr(nvml, "NVML_SUCCESS", 0):
            return None
        return int(value.value.uiVal)


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
