"""Energy measurement: meters (NVML, RAPL, CPU estimate), the background sampler, phases and components,
and the public `Monitor` that the trainer uses too."""

from wattscale.energy.cpu_estimate import CpuEstimateMeter
from wattscale.energy.discover import close_meters, discover_meters
from wattscale.energy.measurement import BUILTIN_PHASES, COMPONENTS, ComponentEnergy, DeviceInfo, PhaseEnergy
from wattscale.energy.meter import METER_KINDS, Meter, MeterConfig, MeterError, PowerReading
from wattscale.energy.monitor import Monitor, MonitorError
from wattscale.energy.nvml import NvmlMeter
from wattscale.energy.rapl import RaplMeter, RaplZone, find_rapl_zones
from wattscale.energy.result import MonitorResult, WindowResult
from wattscale.energy.sampler import EnergyWindow, PowerSampler, SamplerStats, integrate_trapezoid, resample_energy

__all__ = [
    "BUILTIN_PHASES",
    "COMPONENTS",
    "METER_KINDS",
    "ComponentEnergy",
    "CpuEstimateMeter",
    "DeviceInfo",
    "EnergyWindow",
    "Meter",
    "MeterConfig",
    "MeterError",
    "Monitor",
    "MonitorError",
    "MonitorResult",
    "NvmlMeter",
    "PhaseEnergy",
    "PowerReading",
    "PowerSampler",
    "RaplMeter",
    "RaplZone",
    "SamplerStats",
    "WindowResult",
    "close_meters",
    "discover_meters",
    "find_rapl_zones",
    "integrate_trapezoid",
    "resample_energy",
]
