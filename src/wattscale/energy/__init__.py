"""Power meters (NVML, RAPL, CPU estimate), the background sampler and energy integration."""

from wattscale.energy.cpu_estimate import CpuEstimateMeter
from wattscale.energy.discover import close_meters, discover_meters
from wattscale.energy.meter import METER_KINDS, Meter, MeterConfig, MeterError, PowerReading
from wattscale.energy.nvml import NvmlMeter
from wattscale.energy.rapl import RaplMeter, RaplZone, find_rapl_zones
from wattscale.energy.sampler import EnergyWindow, PowerSampler, SamplerStats, integrate_trapezoid, resample_energy

__all__ = [
    "METER_KINDS",
    "CpuEstimateMeter",
    "EnergyWindow",
    "Meter",
    "MeterConfig",
    "MeterError",
    "NvmlMeter",
    "PowerReading",
    "PowerSampler",
    "RaplMeter",
    "RaplZone",
    "SamplerStats",
    "close_meters",
    "discover_meters",
    "find_rapl_zones",
    "integrate_trapezoid",
    "resample_energy",
]
