"""Energy of one training session: idle baseline, per-interval and whole-run windows, the power trace.

The trainer calls this; it never writes to the store itself. Times are in the run's training-time
frame (seconds of training work, continuing across resumes, as `wall_seconds` does), so a trace
resumed after a checkpoint continues where the checkpoint left it.

Energy lost between the last checkpoint and a kill is not added to the run (the work it paid for
is redone), in the same way as `wall_seconds`.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass

from wattscale.energy.meter import Meter
from wattscale.energy.sampler import EnergyWindow, PowerSampler

RUN_WINDOW = "run"
INTERVAL_WINDOW = "interval"
IDLE_WINDOW = "idle"


@dataclass(frozen=True)
class RunEnergy:
    """Energy accumulated over windows: per device, each device's source, and whether all were complete."""

    energy_j: dict[str, float]
    sources: dict[str, str]
    complete: bool

    @property
    def total_j(self) -> float:
        """Joules summed over devices."""
        return sum(self.energy_j.values())

    @property
    def source(self) -> str | None:
        """The weakest source of any device (a mix is only as good as its weakest part)."""
        return max(self.sources.values(), key=_SOURCE_ORDER.index) if self.sources else None

    def to_json(self) -> dict:
        """For checkpoint metadata."""
        return {"energy_j": self.energy_j, "sources": self.sources, "complete": self.complete}

    @classmethod
    def from_json(cls, data: dict | None) -> RunEnergy:
        """Inverse of to_json; None gives an empty record."""
        if not data:
            return cls({}, {}, True)
        return cls(dict(data["energy_j"]), dict(data["sources"]), bool(data["complete"]))

    def plus(self, window: EnergyWindow) -> RunEnergy:
        """Add a window's energy per device."""
        energy, sources = dict(self.energy_j), dict(self.sources)
        for device, joules in window.energy_j.items():
            energy[device] = energy.get(device, 0.0) + joules
            new = window.sources.get(device, window.source)
            sources[device] = max((sources.get(device, new), new), key=_SOURCE_ORDER.index)
        return RunEnergy(energy, sources, self.complete and window.complete)


_SOURCE_ORDER = ("counter", "integrated", "estimated")
EMPTY = RunEnergy({}, {}, True)


class EnergyRecorder:
    """Samples the meters during a session and turns windows into `energy_measurements` rows.

    `state` is what `checkpoint()` returned in an earlier session: the run's energy so far, and the
    energy and start of the evaluation interval that was open, so a resumed run continues both.
    """

    def __init__(self, meters: list[Meter], sample_hz: float, time_offset_s: float, state: dict | None) -> None:
        state = state or {}
        self._queue: collections.deque[dict] = collections.deque()
        self.sampler = PowerSampler(meters, sample_hz, on_samples=self._queue.extend, flush_every=64)
        self.meters = meters
        self.time_offset_s = time_offset_s  # training seconds already done before this session
        self.total = RunEnergy.from_json(state.get("run"))
        self._interval = RunEnergy.from_json(state.get("interval"))
        self._interval_start: tuple[int, float] | None = tuple(state["interval_start"]) if state else None
        self._t_train0 = 0.0

    def start(self) -> None:
        """Start sampling (the first samples feed the idle baseline, if measured)."""
        self.sampler.start()

    def measure_idle(self, seconds: float) -> list[dict]:
        """Sample `seconds` with nothing running: the idle baseline, as rows at negative times."""
        self.sampler.begin_window(IDLE_WINDOW)
        time.sleep(seconds)
        window = self.sampler.end_window(IDLE_WINDOW)
        return _rows(EMPTY.plus(window), "idle", None, None, -window.duration_s, 0.0)

    def begin_training(self, tokens_seen: int) -> None:
        """Open the whole-run window and the interval window at the current position."""
        self._t_train0 = self._now_rel()
        self.sampler.begin_window(RUN_WINDOW)
        self.sampler.begin_window(INTERVAL_WINDOW)
        if self._interval_start is None:
            self._interval_start = (tokens_seen, self.training_seconds())

    def _now_rel(self) -> float:
        return time.monotonic() - self.sampler.start_monotonic_s

    def training_seconds(self) -> float:
        """Seconds of training in the run frame (offset + time since begin_training)."""
        return self.time_offset_s + self._now_rel() - self._t_train0

    def close_interval(self, tokens_seen: int) -> list[dict]:
        """End the current interval at `tokens_seen` (an evaluation) and start the next one."""
        energy = self._interval.plus(self.sampler.end_window(INTERVAL_WINDOW))
        start_tokens, start_s = self._interval_start
        now = self.training_seconds()
        rows = _rows(energy, "interval", start_tokens, tokens_seen, start_s, now)
        self.sampler.begin_window(INTERVAL_WINDOW)
        self._interval, self._interval_start = EMPTY, (tokens_seen, now)
        return rows

    def checkpoint(self) -> dict:
        """Energy state up to now (previous sessions included), for checkpoint metadata."""
        self.total = self.total.plus(self.sampler.end_window(RUN_WINDOW))
        self.sampler.begin_window(RUN_WINDOW)
        self._interval = self._interval.plus(self.sampler.end_window(INTERVAL_WINDOW))
        self.sampler.begin_window(INTERVAL_WINDOW)
        return {"run": self.total.to_json(), "interval": self._interval.to_json(),
                "interval_start": list(self._interval_start)}

    def drain_samples(self) -> list[dict]:
        """Power samples gathered since the last drain, as `power_samples` rows in the run frame."""
        rows = []
        shift = self.time_offset_s - self._t_train0
        while self._queue:
            sample = self._queue.popleft()
            if sample["t_s"] < self._t_train0:
                continue  # idle-baseline samples: summarised in the idle row, not part of the trace
            rows.append({"device": sample["device"], "t_seconds": sample["t_s"] + shift,
                         "power_w": sample["power_w"], "energy_j": sample["energy_j"]})
        return rows

    def finish(self, tokens_seen: int) -> tuple[RunEnergy, list[dict]]:
        """Stop sampling; return the run's energy and its `run` rows (per device, whole run)."""
        self.total = self.total.plus(self.sampler.end_window(RUN_WINDOW))
        self.sampler.end_window(INTERVAL_WINDOW)
        stats = self.sampler.stop()
        details = {"sample_hz": stats.requested_hz, "achieved_hz": stats.achieved_hz,
                   "n_samples": stats.n_samples, "missed_deadlines": stats.missed_deadlines,
                   "gaps": [list(g) for g in stats.gaps], "gap_messages": stats.gap_messages,
                   "meters": [m.describe() for m in self.meters]}
        rows = _rows(self.total, "run", 0, tokens_seen, 0.0, self.training_seconds(), details)
        return self.total, rows

    def stop(self) -> None:
        """Stop the sampler without recording (an interrupted or failed session)."""
        if self.sampler.running:
            self.sampler.stop()


def _rows(energy: RunEnergy, scope: str, start_tokens: int | None, end_tokens: int | None, start_s: float,
          end_s: float, details: dict | None = None) -> list[dict]:
    """One `energy_measurements` row per device."""
    duration = end_s - start_s
    return [{"device": device, "scope": scope, "start_tokens": start_tokens, "end_tokens": end_tokens,
             "start_seconds": start_s, "end_seconds": end_s, "energy_j": joules,
             "source": energy.sources[device], "complete": energy.complete,
             "details_json": json.dumps({"mean_power_w": joules / duration if duration > 0 else None,
                                         **(details or {})}, default=str)}
            for device, joules in energy.energy_j.items()]
