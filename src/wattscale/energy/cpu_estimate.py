"""An estimate of CPU power when no CPU meter is readable: busy cores of this process tree x a per-core TDP.

This is a model, not a measurement (the approach CodeCarbon uses without RAPL): it attributes
``tdp_w_per_core`` watts to every fully busy core of this process and its children, nothing to idle
cores, and nothing to memory, disks or the rest of the machine. Every output says so.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

from wattscale.energy.meter import MeterError, PowerReading, describe_header, wait_first_window

FORMULA = ("energy_j = CPU seconds of this process and its children since the meter opened * tdp_w_per_core "
           "(a cumulative estimate, read at most every counter_window_s); power_w = busy_cores * tdp_w_per_core, "
           "busy_cores = d(CPU seconds)/dt over at least power_window_s, capped at cores")


class CpuEstimateMeter:
    """Estimated CPU power and energy of this process tree from its CPU time.

    The energy is a cumulative estimate (CPU seconds x tdp_w_per_core), so a window's estimated energy is the
    CPU time spent in it, however short the window, rather than the integral of a power figure that is
    re-computed only every power_window_s. Its source stays "estimated".
    """

    name = "cpu-estimate"
    energy_source = "estimated"

    def __init__(self, tdp_w_per_core: float = 10.0, power_window_s: float = 0.1, pid: int | None = None,
                 children_refresh_s: float = 1.0, counter_window_s: float = 0.01) -> None:
        if tdp_w_per_core <= 0:
            raise MeterError(f"cpu-estimate: tdp_w_per_core must be positive, got {tdp_w_per_core}")
        try:
            self._process = psutil.Process(pid if pid is not None else os.getpid())
        except psutil.Error as exc:
            raise MeterError(f"cpu-estimate: cannot inspect process {pid}: {exc}") from exc
        self.tdp_w_per_core = float(tdp_w_per_core)
        self.cores = _available_cores()
        self.devices = ("cpu",)
        # CPU times advance in scheduler ticks (typically 10 ms), so the busy fraction is only meaningful
        # over windows of many ticks; between windows the last estimate is repeated.
        self._power_window_s = power_window_s
        # Listing children scans /proc (about a millisecond), so the list is refreshed only now and then.
        self._children_refresh_s = children_refresh_s
        self._children: list[psutil.Process] = []
        self._children_t = -float("inf")
        # psutil's CPU times advance in 10 ms ticks: reading them more often adds cost (~30 us), not information.
        self._counter_window_s = counter_window_s
        self._ref_t = time.monotonic()
        self._ref_cpu_s = self._tree_cpu_seconds(self._ref_t)
        self._cpu0_s, self._cpu_s, self._cpu_t = self._ref_cpu_s, self._ref_cpu_s, self._ref_t
        self._power_w = 0.0
        self._lock = threading.Lock()
        wait_first_window(self._ref_t, power_window_s)  # so the first reading is a measurement, not a zero
        self.read()

    def read(self) -> PowerReading:
        """The current estimate; re-computed once at least power_window_s has passed since the last one."""
        with self._lock:
            return self._read_locked()

    def _read_locked(self) -> PowerReading:
        t_s = time.monotonic()
        if t_s - self._cpu_t >= self._counter_window_s:
            # A child that exited but is not yet reaped drops out of the sum until its time reappears in
            # our children_* times; keeping the high-water mark avoids counting it twice.
            self._cpu_s, self._cpu_t = max(self._tree_cpu_seconds(t_s), self._cpu_s), t_s
        dt_s = self._cpu_t - self._ref_t
        if dt_s >= self._power_window_s:
            busy_cores = min((self._cpu_s - self._ref_cpu_s) / dt_s, float(self.cores))
            self._power_w = busy_cores * self.tdp_w_per_core
            self._ref_t, self._ref_cpu_s = self._cpu_t, self._cpu_s
        return PowerReading(t_s=t_s, power_w={"cpu": self._power_w},
                            energy_j={"cpu": (self._cpu_s - self._cpu0_s) * self.tdp_w_per_core})

    def describe(self) -> dict:
        """Kind, formula and every input of the estimate."""
        return {
            **describe_header(self),
            "inputs": {
                "tdp_w_per_core": self.tdp_w_per_core,
                "cores": self.cores,
                "pid": self._process.pid,
                "power_window_s": self._power_window_s,
                "counter_window_s": self._counter_window_s,
                "children_refresh_s": self._children_refresh_s,
            },
            "formula": FORMULA,
            "note": "estimated, not measured: covers this process tree's CPU time only (no idle, memory or "
                    "other hardware power); set meter.cpu_tdp_w_per_core to your CPU's TDP / cores",
            "units": {"power": "W", "energy": "J"},
        }

    def close(self) -> None:
        """Nothing to release."""

    def _tree_cpu_seconds(self, t_s: float) -> float:
        try:
            times = self._process.cpu_times()
        except psutil.Error as exc:
            raise MeterError(f"cpu-estimate: cannot read CPU times of process {self._process.pid}: {exc}") from exc
        total = times.user + times.system + times.children_user + times.children_system
        if t_s - self._children_t >= self._children_refresh_s:
            try:
                self._children = self._process.children(recursive=True)
            except psutil.Error:
                self._children = []
            self._children_t = t_s
        for child in self._children:
            try:
                child_times = child.cpu_times()
            except psutil.Error:  # the child exited; its time moves to our children_* times when reaped
                continue
            total += child_times.user + child_times.system + child_times.children_user + child_times.children_system
        return total


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return psutil.cpu_count(logical=True) or 1
