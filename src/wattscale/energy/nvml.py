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
from collections.abc import Mapping
from types import ModuleType

from wattscale.energy.gpus import GpuSelection, NvmlGpu, choose_gpus, torch_visible_uuids
from wattscale.energy.meter import MeterError, PowerReading, describe_header


def import_pynvml() -> ModuleType:
    """The pynvml module from nvidia-ml-py, or MeterError saying how to install it."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise MeterError("nvml: nvidia-ml-py not installed (pip install 'wattscale[nvidia]')") from exc


class NvmlMeter:
    """Per-GPU power (W) and energy (J, from the hardware counter) for the GPUs this process uses.

    ``gpus`` selects them (see `wattscale.energy.gpus`): ``"auto"`` (the rank's GPU under torchrun, else
    the GPUs visible to the process, ``CUDA_VISIBLE_DEVICES`` honoured), or CUDA indexes / UUIDs. NVML
    itself numbers every GPU of the host in PCI order and ignores ``CUDA_VISIBLE_DEVICES``, so the choice
    is resolved to UUIDs; devices are named ``gpu<NVML index>``.
    """

    name = "nvml"
    energy_source = "counter"

    def __init__(self, gpus: GpuSelection = "auto", env: Mapping[str, str] | None = None) -> None:
        self._nvml = import_pynvml()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise MeterError(f"nvml: no NVIDIA GPU ({type(exc).__name__})") from exc
        self._open = True
        try:
            self._setup(gpus, env)
        except self._nvml.NVMLError as exc:
            self.close()
            raise MeterError(f"nvml: cannot open the GPUs ({type(exc).__name__}: {exc})") from exc
        except BaseException:
            self.close()
            raise

    def _setup(self, gpus: GpuSelection, env: Mapping[str, str] | None) -> None:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            raise MeterError("nvml: no NVIDIA GPU (NVML found 0 devices)")
        host = [NvmlGpu(i, _text(nvml.nvmlDeviceGetUUID(h)), _text(nvml.nvmlDeviceGetName(h)))
                for i, h in ((i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count))]
        choice = choose_gpus(gpus, host, env, torch_visible_uuids())
        if not choice.uuids:
            raise MeterError("nvml: no GPU selected (this process uses none: gpus=[] or CUDA_VISIBLE_DEVICES is "
                             "empty)")
        chosen = [next(g for g in host if g.uuid == uuid) for uuid in choice.uuids]
        self.notes = choice.notes
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(g.index) for g in chosen]
        self.devices = tuple(f"gpu{g.index}" for g in chosen)
        self.components = ("gpu",) * len(chosen)
        self._names = [g.name for g in chosen]
        self.uuids = tuple(g.uuid for g in chosen)
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
                         for d, n, u, inst in zip(self.devices, self._names, self.uuids, self._instant,
                                                  strict=True)],
                "energy": "nvmlDeviceGetTotalEnergyConsumption (mJ), relative to the value at open",
                "power": "NVML_FI_DEV_POWER_INSTANT if supported, else nvmlDeviceGetPowerUsage (mW; "
                         "a 1 s average on Ampere and newer)",
                "selection": list(self.notes),
            },
            "units": {"power": "W", "energy": "J"},
        }

    def running_pids(self) -> dict[str, set[int]]:
        """Per device, the PIDs NVML lists on it (compute and graphics); a device NVML cannot list is left out.

        NVML reports PIDs of the host's PID namespace: inside a container with its own, they match no local PID.
        """
        out: dict[str, set[int]] = {}
        for device, handle in zip(self.devices, self._handles, strict=True):
            pids: set[int] = set()
            try:
                for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                    pids.update(int(p.pid) for p in getattr(self._nvml, call)(handle))
            except self._nvml.NVMLError:
                continue
            out[device] = pids
        return out

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
