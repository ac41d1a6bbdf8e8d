"""One job measured by several processes (the ranks of a torchrun job): each measures its own devices.

Every rank runs a `Monitor` on its own meters, with its devices named ``rank<R>/<device>`` so the rows of
different ranks never collide. Host-wide meters (RAPL) are read by local rank 0 alone, so nothing is counted
twice; each rank's NVML meter reads only its own GPU. Rank 0 merges what the ranks measured
(`merge_states`) for checkpoints and results, and a resumed job hands each rank back its own share
(`state_for_rank`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from wattscale.energy.discover import close_meters, discover_meters
from wattscale.energy.gpus import GpuSelection
from wattscale.energy.measurement import DeviceInfo, Ledger, merge_ledgers
from wattscale.energy.meter import Meter, MeterConfig, PowerReading, component_of
from wattscale.energy.result import MonitorResult, WindowResult, summarise_ledger, window_result


class RankMeter:
    """A meter whose devices carry the rank ("rank1/cpu"), so ranks' rows and samples never collide."""

    def __init__(self, meter: Meter, rank: int) -> None:
        self._meter, self._prefix, self.rank = meter, f"rank{rank}/", rank
        self.name, self.energy_source = meter.name, meter.energy_source
        self.devices = tuple(self._prefix + d for d in meter.devices)
        self.components = getattr(meter, "components", None) or tuple(
            component_of(meter.name, d) for d in meter.devices)
        self.uuids = getattr(meter, "uuids", None)
        self.notes = getattr(meter, "notes", ())

    def read(self) -> PowerReading:
        """The meter's reading with rank-prefixed device names."""
        r = self._meter.read()
        return PowerReading(r.t_s, {self._prefix + d: w for d, w in r.power_w.items()},
                            None if r.energy_j is None else {self._prefix + d: j for d, j in r.energy_j.items()})

    def describe(self) -> dict:
        """The meter's description with the prefixed devices and the rank."""
        return {**self._meter.describe(), "devices": list(self.devices), "rank": self.rank}

    def close(self) -> None:
        """Close the wrapped meter."""
        self._meter.close()


def rank_meters(config: MeterConfig, rank: int, local_rank: int, world_size: int,
                gpus: GpuSelection) -> tuple[list[Meter], list[str]]:
    """This rank's meters, and why the others are not used.

    `gpus` are the GPUs this rank uses ([] for a CPU run). With one process the meters are returned as they
    are; with several, host-wide meters stay with local rank 0 and devices are rank-prefixed.
    """
    meters, reasons = discover_meters(config, gpus=gpus)
    if world_size == 1:
        return meters, reasons
    if local_rank != 0:
        dropped = [m for m in meters if m.name == "rapl"]
        close_meters(dropped)
        meters = [m for m in meters if m.name != "rapl"]
        reasons += [f"{m.name}: measures the whole host; local rank 0 reads it" for m in dropped]
    return [RankMeter(m, rank) for m in meters], reasons


def merge_states(states: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One Monitor state from every rank's `Monitor.state()` (their devices are disjoint; time is rank 0's)."""
    present = [s for s in states if s]
    if not present:
        return None
    first = present[0]
    merged = {**first, "ledger": merge_ledgers([Ledger.from_json(s["ledger"]) for s in present]).to_json()}
    merged["windows"] = {
        name: {**window, "ledger": merge_ledgers([Ledger.from_json(s["windows"][name]["ledger"])
                                                  for s in present if name in s.get("windows", {})]).to_json()}
        for name, window in first.get("windows", {}).items()}
    return merged


def state_for_rank(state: dict[str, Any] | None, rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's share of a merged state: its own devices ("rank<R>/..."), time and tokens for all.

    Rank 0 also takes every device no live rank claims (those of a job resumed with fewer processes, or
    unprefixed ones from a single-process session), so no energy is lost or counted twice.
    """
    if not state or world_size == 1:
        return state

    def owner(device: str) -> int:
        head, _, rest = device.partition("/")
        owner_rank = int(head[4:]) if rest and head.startswith("rank") and head[4:].isdigit() else -1
        return owner_rank if 0 <= owner_rank < world_size else 0

    def mine(data: dict[str, Any]) -> dict[str, Any]:
        ledger = Ledger.from_json(data)
        for tally in ledger.phases.values():
            keep = [d for d in tally.energy_j if owner(d) == rank]
            tally.energy_j = {d: tally.energy_j[d] for d in keep}
            tally.sources = {d: tally.sources[d] for d in keep}
        return ledger.to_json()

    return {**state, "ledger": mine(state["ledger"]),
            "windows": {name: {**w, "ledger": mine(w["ledger"])} for name, w in state.get("windows", {}).items()}}


def _union(per_rank: Sequence[Mapping[str, DeviceInfo]]) -> dict[str, DeviceInfo]:
    merged: dict[str, DeviceInfo] = {}
    for devices in per_rank:
        merged.update(devices)
    return merged


def merge_windows(parts: Sequence[tuple[WindowResult, Mapping[str, DeviceInfo]]],
                  rule: str) -> tuple[WindowResult, dict[str, DeviceInfo]]:
    """The ranks' (window, devices) of one window as one window (rank 0's bounds), and every rank's devices."""
    first = parts[0][0]
    devices = _union([d for _, d in parts])
    ledger = merge_ledgers([w.ledger for w, _ in parts])
    return window_result(first.name, ledger, devices, rule, first.start_s, first.end_s, first.start_tokens,
                         first.end_tokens), devices


def merge_results(results: Sequence[MonitorResult]) -> MonitorResult | None:
    """The ranks' results of one job as one (rank 0's time and tokens, every rank's devices); None if none."""
    if not results:
        return None
    if len(results) == 1:
        return results[0]
    first = results[0]
    devices = _union([r.devices for r in results])
    ledger = merge_ledgers([r.ledger for r in results])
    job, phases, idle = summarise_ledger(ledger, devices, first.total_rule)
    return dataclasses.replace(
        first, job=job, phases=phases, idle=idle, devices=devices, ledger=ledger,
        sampling={"ranks": [r.sampling for r in results]},
        shared_host=tuple(o for r in results for o in r.shared_host),
        notes=tuple(dict.fromkeys(n for r in results for n in r.notes)))
