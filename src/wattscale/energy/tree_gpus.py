"""GPU energy of the GPUs a process tree uses: what `wattscale measure` charges a command.

A GPU counts from the first reading at which NVML lists one of the tree's processes on it (its process
lists are looked at every `usage_poll_s`); a GPU the tree never uses adds 0 J, and the notes say which were
watched and not used. Before `gate()` (the idle baseline, before the command starts) every GPU counts, so
the baseline describes the GPUs as the command finds them.

NVML reports PIDs of the host's PID namespace; in a container with a PID namespace of its own they match
no PID of the tree, so no GPU would count: the notes then say so, and ``--gpus`` names the GPUs to measure
whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from wattscale.energy.meter import Meter, PowerReading

USAGE_POLL_S = 0.5


def tree_pids(root_pid: int) -> set[int]:
    """The PIDs of `root_pid` and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(root_pid)
        return {root_pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.Error:
        return set()


class TreeGpuMeter:
    """Wraps an NVML meter: after `gate()`, each GPU's energy and power count only once the tree uses it.

    ``running_pids()`` gives, per device, the PIDs on it (`NvmlMeter.running_pids`); ``pids()`` the tree's.
    Energy stays cumulative and monotonic: a GPU's figure is its energy up to the gate, plus its counter's
    increase since the tree was first seen on it.
    """

    def __init__(self, inner: Meter, running_pids: Callable[[], dict[str, set[int]]], pids: Callable[[], set[int]],
                 usage_poll_s: float = USAGE_POLL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner
        self.name = inner.name
        self.energy_source = inner.energy_source
        self.devices = tuple(inner.devices)
        self.components = getattr(inner, "components", None)
        self.uuids = getattr(inner, "uuids", None)
        self.notes = tuple(getattr(inner, "notes", ()))
        self._running_pids, self._pids = running_pids, pids
        self._poll_s, self._clock = usage_poll_s, clock
        self._lock = threading.Lock()
        self._gated = False
        self._gate_t = float("nan")
        self._at_gate_j: dict[str, float] = {}
        self._since_j: dict[str, float] = {}  # counter when the tree was first seen on the device
        self._last_j: dict[str, float] = dict.fromkeys(self.devices, 0.0)
        self._first_use_s: dict[str, float] = {}
        self._others: set[str] = set()  # devices that ran only processes outside the tree
        self._polled_t = -float("inf")

    def gate(self) -> None:
        """From now on a GPU counts only once the tree uses it (call when the command starts)."""
        with self._lock:
            self._gated, self._gate_t = True, self._clock()
            self._at_gate_j = dict(self._last_j)

    def read(self) -> PowerReading:
        reading = self._inner.read()
        with self._lock:
            if not self._gated:
                if reading.energy_j is not None:
                    self._last_j = dict(reading.energy_j)
                return reading
            self._poll_usage(reading)
            power = {d: (w if d in self._since_j else 0.0) for d, w in reading.power_w.items()}
            energy = None
            if reading.energy_j is not None:
                energy = {d: self._at_gate_j.get(d, 0.0) + (j - self._since_j[d] if d in self._since_j else 0.0)
                          for d, j in reading.energy_j.items()}
        return PowerReading(reading.t_s, power, energy)

    def _poll_usage(self, reading: PowerReading) -> None:
        now = self._clock()
        if len(self._since_j) == len(self.devices) or now - self._polled_t < self._poll_s:
            return
        self._polled_t = now
        ours = self._pids()
        for device, pids in self._running_pids().items():
            if device in self._since_j:
                continue
            if pids & ours:
                self._since_j[device] = (reading.energy_j or {}).get(device, 0.0)
                self._first_use_s[device] = now - self._gate_t
                self._others.discard(device)
            elif pids:
                self._others.add(device)

    def usage(self) -> dict[str, float]:
        """Devices the tree used, with the seconds after the gate when it was first seen on each."""
        with self._lock:
            return dict(self._first_use_s)

    def usage_notes(self) -> list[str]:
        """What the usage means for the figures: GPUs watched and not used, PIDs that matched nothing."""
        with self._lock:
            unused = [d for d in self.devices if d not in self._first_use_s]
            others = sorted(self._others)
        notes = []
        if unused:
            notes.append(f"GPU(s) {', '.join(unused)} watched but not used by the command (no process of its tree "
                         "on them in NVML's process lists): 0 J counted for them")
        if others and not self._first_use_s:
            notes.append(f"GPU(s) {', '.join(others)} ran processes outside the command's tree only; in a container "
                         "NVML reports host PIDs that match none here: pass --gpus to measure GPUs whole")
        return notes

    def describe(self) -> dict:
        inner = self._inner.describe()
        inner["inputs"] = {**inner.get("inputs", {}), "counted": "from the first reading at which NVML lists a "
                           "process of the command's tree on the GPU", "usage_poll_s": self._poll_s}
        return inner

    def close(self) -> None:
        self._inner.close()
