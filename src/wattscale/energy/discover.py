"""Choose the meters that work on this machine, and say why the others were not used."""

from __future__ import annotations

from wattscale.energy.cpu_estimate import CpuEstimateMeter
from wattscale.energy.gpus import GpuSelection
from wattscale.energy.meter import METER_KINDS, Meter, MeterConfig, MeterError
from wattscale.energy.nvml import NvmlMeter
from wattscale.energy.rapl import RaplMeter


def discover_meters(config: MeterConfig, gpus: GpuSelection = "auto",
                    pid: int | None = None) -> tuple[list[Meter], list[str]]:
    """The meters that open here, in config.kinds order, and one line per kind not used saying why.

    ``pid``: the process whose tree the CPU estimate covers (default this one; `wattscale measure` its command).

    NVML measures the GPUs `gpus` selects (see `wattscale.energy.gpus`; ``[]``: none, as for a CPU run) and
    RAPL the CPU packages and DRAM; the CPU estimate is used only when no measured CPU meter (RAPL) opened,
    so estimated and measured CPU power never describe the same component.
    """
    if not config.enabled:
        return [], ["metering disabled (meter.kinds = none)"]
    meters: list[Meter] = []
    reasons = [f"{kind}: not requested (meter.kinds)" for kind in METER_KINDS if kind not in config.kinds]
    for kind in config.kinds:
        if kind == "cpu-estimate":
            continue  # decided last: it depends on whether RAPL opened
        if kind == "nvml" and not isinstance(gpus, str) and len(gpus) == 0:
            reasons.append("nvml: not used, this process uses no GPU")
            continue
        try:
            meters.append(_open(kind, config, gpus))
        except MeterError as exc:
            reasons.append(str(exc))
    if "cpu-estimate" in config.kinds:
        if any(m.name == "rapl" for m in meters):
            reasons.append("cpu-estimate: not used, RAPL measures the CPU")
        else:
            try:
                estimate = _open("cpu-estimate", config, pid=pid)
            except MeterError as exc:
                reasons.append(str(exc))
            else:
                position = config.kinds.index("cpu-estimate")
                preceding = set(config.kinds[:position])
                meters.insert(sum(1 for m in meters if m.name in preceding), estimate)
    return meters, reasons


def close_meters(meters: list[Meter]) -> None:
    """Close every meter, even if one of them fails to close."""
    for meter in meters:
        try:
            meter.close()
        except MeterError:
            pass  # closing is best effort; the readings already taken stand


def _open(kind: str, config: MeterConfig, gpus: GpuSelection = "auto", pid: int | None = None) -> Meter:
    if kind == "nvml":
        return NvmlMeter(gpus)
    if kind == "rapl":
        return RaplMeter(config.powercap_root)
    if kind == "cpu-estimate":
        return CpuEstimateMeter(tdp_w_per_core=config.cpu_tdp_w_per_core, pid=pid)
    raise AssertionError(f"unknown meter kind {kind!r}; MeterConfig validates kinds")
