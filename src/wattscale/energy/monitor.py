"""The public measurement API: energy and time of any PyTorch code, by phase, per component, with sources.

```python
from wattscale import Monitor

with Monitor(sample_hz=10, idle_seconds=3) as m:      # idle baseline first, then the job starts
    with m.phase("warmup"):
        compiled = torch.compile(model)
    for batch in loader:
        with m.phase("train"):
            loss = step(compiled, batch)
            m.step(tokens=batch.numel())                # tokens count in the active phase
    with m.phase("eval"):
        evaluate(model)
    m.begin_window("epoch-1")                           # named windows may overlap phases and each other
    ...
    epoch = m.end_window("epoch-1")
print(m.result.phase("train").joules_per_token, m.result.job.energy_j, m.result.job.source)
```

One phase is active at a time (they do not nest); time outside every phase is ``other``; the phases add up
to the job exactly, because one meter reading ends a phase and starts the next. With ``warmup_steps=N``,
``phase("train")`` records its first N steps (counted by `step`) as ``warmup`` (wattscale's trainer uses 1).
Devices: ``gpus="auto"`` measures the GPUs this process uses (see `wattscale.energy.gpus`), RAPL the CPU
packages and DRAM when readable, and a CPU estimate when no CPU meter is. Nothing needs a GPU, root or a
store; ``store=`` records the measurement as a run of kind ``measured`` that ``wattscale runs / energy /
analyze / report`` show. Under ``wattscale measure`` (``$WATTSCALE_PHASE_FILE`` set), the Monitor also appends
its phase changes and steps to that file, so the phases it marks become the measured command's (see
`wattscale.energy.phase_file`).

Zeus users know ``begin_window``/``end_window``; CodeCarbon users the context manager. The trainer
measures itself through this same class.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from wattscale.energy.discover import close_meters, discover_meters
from wattscale.energy.gpus import GpuSelection
from wattscale.energy.host import Registration, register
from wattscale.energy.measurement import IDLE_PHASE, OTHER_PHASE, DeviceInfo, Ledger
from wattscale.energy.meter import Meter, MeterConfig, component_of
from wattscale.energy.phase_file import PhaseFileWriter
from wattscale.energy.result import MonitorResult, WindowResult, summarise_ledger, window_result
from wattscale.energy.sampler import Mark, PowerSampler
from wattscale.errors import WattscaleError

STATE_VERSION = 1
_PHASE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SampleConsumer = Callable[[list[dict]], None]


class MonitorError(WattscaleError):
    """A Monitor used out of order: phases nested, a window closed twice, step() before start, ..."""


@dataclass
class _OpenWindow:
    ledger: Ledger
    start_s: float
    start_tokens: int


class Monitor:
    """Measures the code run inside it, by phase (see the module docstring for an example).

    Args:
        config: the meter settings (`MeterConfig`); keyword ``settings`` override its fields, e.g.
            ``Monitor(sample_hz=100, idle_seconds=0)``.
        gpus: ``"auto"``, a list of CUDA indexes / GPU UUIDs, or ``[]`` for none.
        meters: already-open meters to use instead of discovering them (the caller closes them).
        store: a `Store` or database URL/path: the measurement becomes a run of kind ``measured``.
        name: a label for the measurement (the run's name in a store).
        run_id: the id to register on the host (and of the stored run); a new one by default.
        on_samples: receives the power samples in chunks (rows ``device, t_seconds, power_w, energy_j``,
            times in seconds of the job) from a writer thread, so a slow consumer never delays sampling.
        resume: a `state()` saved earlier: continue that measurement (its time, phases and open windows).
        metadata: JSON-ready facts stored with a measured run (model, flops_per_token, params, command_line, ...);
            entries added to ``monitor.metadata`` before stop() are stored too (e.g. an exit status).
        notes: caveats to keep with the result, e.g. why a meter passed in ``meters`` is the only one.
    """

    def __init__(self, config: MeterConfig | None = None, *, gpus: GpuSelection = "auto",
                 meters: list[Meter] | None = None, store: Any = None, name: str | None = None,
                 run_id: str | None = None, on_samples: SampleConsumer | None = None,
                 resume: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                 notes: Sequence[str] = (), clock: Callable[[], float] = time.monotonic, **settings: Any) -> None:
        self.config = dataclasses.replace(config or MeterConfig(), **settings)
        self._warmup_steps = self.config.warmup_steps or 0  # unset: no warm-up for your own code
        self.gpus = gpus
        self.name = name
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self.metadata = dict(metadata or {})
        self._given_meters = meters
        self._store_target = store
        self._on_samples = on_samples
        self._clock = clock
        self._resume = resume
        self._meters: list[Meter] = []
        self._devices: dict[str, DeviceInfo] = {}
        self._notes: list[str] = list(notes)
        self._sampler: PowerSampler | None = None
        self._writer: _SampleWriter | None = None
        self._registration: Registration | None = None
        self._recorder: Any = None  # wattscale.energy.store_run.MeasuredRun when store= is given
        self._ledger = Ledger.from_json((resume or {}).get("ledger"))
        self._windows: dict[str, _OpenWindow] = {}
        self._closed_windows: dict[str, WindowResult] = {}
        self._offset_s = float((resume or {}).get("job_seconds", 0.0))
        self._tokens = int((resume or {}).get("tokens", 0))
        self._job_start_t = float("nan")
        self._segment_phase = OTHER_PHASE
        self._segment_t = float("nan")
        self._segment_mark: Mark | None = None
        self._phase: str | None = None
        self._session_train_steps = 0
        self._state = "new"  # new -> running -> stopped
        self._result: MonitorResult | None = None
        self._phase_out: PhaseFileWriter | None = None  # $WATTSCALE_PHASE_FILE: `wattscale measure` follows

    # ---- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._state == "running":
            status = "finished" if exc_type is None else (
                "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")
            self.stop(status, message=None if exc is None else f"{type(exc).__name__}: {exc}")

    def start(self) -> Monitor:
        """Open the meters, start sampling, measure the idle baseline (if set), and start the job."""
        if self._state != "new":
            raise MonitorError("Monitor.start(): a Monitor measures once; create a new one")
        if self._given_meters is not None:
            self._meters = list(self._given_meters)
        else:
            self._meters, not_used = discover_meters(self.config, gpus=self.gpus)
            self._notes.extend(f"not used: {reason}" for reason in not_used)
        self._notes.extend(note for m in self._meters for note in getattr(m, "notes", ()))
        self._devices = _device_infos(self._meters)
        try:
            if self._store_target is not None:  # the run exists before its first sample is written
                from wattscale.energy.store_run import MeasuredRun

                self._recorder = MeasuredRun.begin(self._store_target, self)
            self._start_sampling()
        except BaseException:
            self._close_meters()
            raise
        self._state = "running"
        self._phase_out = PhaseFileWriter.from_env()
        self._segment_t, self._segment_mark = self._now_mark()
        if self.config.idle_seconds > 0 and self._resume is None:
            self._segment_phase = IDLE_PHASE  # nothing runs: the baseline of the host as the job will find it
            time.sleep(self.config.idle_seconds)
            self._close_segment(OTHER_PHASE)
        else:
            self._segment_phase = OTHER_PHASE
        self._job_start_t = self._segment_t
        for name, data in ((self._resume or {}).get("windows") or {}).items():
            self._windows[name] = _OpenWindow(Ledger.from_json(data["ledger"]), float(data["start_s"]),
                                              int(data["start_tokens"]))
        return self

    def _start_sampling(self) -> None:
        if self._meters:
            consumer = self._on_samples
            if consumer is None and self._store_target is not None:
                consumer = self._write_samples_to_store
            if consumer is not None:
                self._writer = _SampleWriter(consumer)
            self._sampler = PowerSampler(self._meters, self.config.sample_hz,
                                         on_samples=self._enqueue_samples if self._writer else None,
                                         flush_every=max(1, int(self.config.sample_hz)), clock=self._clock)
            self._sampler.start()
        host_wide = any(d.host_wide for d in self._devices.values())
        uuids = [d.uuid for d in self._devices.values() if d.uuid]
        self._registration = register(self.run_id, host_wide, uuids, self.config.host_registry)

    def stop(self, status: str = "finished", message: str | None = None) -> MonitorResult:
        """End the measurement and return its result (idempotent)."""
        if self._state == "stopped":
            return self._result
        self._require_running("stop()")
        self._phase = None
        self._close_segment(OTHER_PHASE)
        job_end_s = self.job_seconds()
        sampling = None
        try:
            if self._sampler is not None:
                sampling = self._sampler.stop().to_dict()
            if self._writer is not None:
                written_ok, error = self._writer.close()
                if not written_ok:
                    self._notes.append(f"some power samples could not be written: {error}")
        finally:
            self._close_meters()
        overlaps = tuple(self._registration.overlaps()) if self._registration else ()
        if self._registration is not None:
            self._registration.close()
        if overlaps and any(d.host_wide for d in self._devices.values()):
            ids = ", ".join(sorted({o.id for o in overlaps}))
            self._notes.append(f"host-wide counters (RAPL) also counted other wattscale measurements that ran "
                               f"on this host at the same time: {ids}")
        for overlap in overlaps:
            if overlap.shared_gpus:
                self._notes.append(f"GPU(s) {', '.join(overlap.shared_gpus)} were also measured by {overlap.id} "
                                   f"for {overlap.overlap_s:.1f} s: their energy counts both jobs")
        self._state = "stopped"
        if self._phase_out is not None:
            self._phase_out.close()
        self._result = self._build_result(status, sampling, overlaps)
        if self._recorder is not None:
            self._recorder.finish(self._result, job_end_s, message)
        return self._result

    def _close_meters(self) -> None:
        if self._given_meters is None:
            close_meters(self._meters)

    @property
    def result(self) -> MonitorResult:
        """The result, once the Monitor has stopped."""
        if self._result is None:
            raise MonitorError("Monitor.result: the measurement has not ended; leave the `with` block or call "
                               "stop() first (snapshot() gives the figures so far)")
        return self._result

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._state == "running"

    @property
    def devices(self) -> dict[str, DeviceInfo]:
        """The measured devices by name."""
        return dict(self._devices)

    @property
    def notes(self) -> list[str]:
        """What was not measured and why, and other caveats."""
        return list(self._notes)

    def note(self, text: str) -> None:
        """Keep a caveat with the result (e.g. something the measured code did that the figures cannot show)."""
        if text not in self._notes:
            self._notes.append(text)

    # ---- phases, steps, windows ------------------------------------------------------------------------

    @contextmanager
    def phase(self, name: str) -> Iterator[Monitor]:
        """Measure the block as phase `name` (train, eval, checkpoint, save, warmup or your own)."""
        self._require_running(f"phase({name!r})")
        if not is_phase_name(name):
            raise MonitorError(f"phase: {name!r} is not a phase name; use train, eval, checkpoint, save, warmup or "
                               "a short lowercase name of your own ('idle' and 'other' are kept by wattscale)")
        if self._phase is not None:
            raise MonitorError(f"phase({name!r}) inside phase({self._phase!r}): phases do not nest (one is active "
                               "at a time); leave the outer one first, or use begin_window/end_window")
        warming = name == "train" and self._session_train_steps < self._warmup_steps
        self._close_segment("warmup" if warming else name)
        self._phase = name
        try:
            yield self
        finally:
            if self._state == "running" and self._phase == name:
                self._phase = None
                self._close_segment(OTHER_PHASE)

    @property
    def current_phase(self) -> str:
        """The phase being measured now (``warmup`` while phase("train") is still warming up, ``other`` outside)."""
        return self._segment_phase

    def step(self, tokens: int = 0, steps: int = 1) -> None:
        """Count `steps` steps and `tokens` tokens in the current phase (J/token uses them)."""
        self._require_running("step()")
        for label, value in (("tokens", tokens), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MonitorError(f"step: {label}={value!r} must be a whole number >= 0")
        for ledger in (self._ledger, *(w.ledger for w in self._windows.values())):
            tally = ledger.tally(self._segment_phase)
            tally.tokens += tokens
            tally.steps += steps
        self._tokens += tokens
        if self._phase_out is not None:
            self._phase_out.write(self._segment_phase, tokens, steps)
        if self._phase == "train":
            self._session_train_steps += steps
            if self._segment_phase == "warmup" and self._session_train_steps >= self._warmup_steps:
                self._close_segment("train")

    @property
    def open_windows(self) -> list[str]:
        """Names of the windows begun and not yet ended (restored ones included)."""
        return list(self._windows)

    @property
    def tokens(self) -> int:
        """Tokens counted so far (over every phase and earlier sessions)."""
        return self._tokens

    def begin_window(self, name: str) -> None:
        """Open a named window (windows may overlap phases and one another)."""
        self._require_running(f"begin_window({name!r})")
        if name in self._windows:
            raise MonitorError(f"begin_window: window {name!r} is already open")
        self._close_segment(self._segment_phase)
        self._windows[name] = _OpenWindow(Ledger(), self.job_seconds(), self._tokens)

    def end_window(self, name: str) -> WindowResult:
        """Close a window and return its energy and time, in total and per phase."""
        self._require_running(f"end_window({name!r})")
        if name not in self._windows:
            raise MonitorError(f"end_window: window {name!r} was not begun (open: {sorted(self._windows) or 'none'})")
        self._close_segment(self._segment_phase)
        window = self._windows.pop(name)
        result = window_result(name, window.ledger, self._devices, self.config.total, window.start_s,
                               self.job_seconds(), window.start_tokens, self._tokens)
        self._closed_windows[name] = result
        return result

    # ---- snapshots and state ---------------------------------------------------------------------------

    def job_seconds(self) -> float:
        """Seconds of the job so far (continuing a resumed measurement's time)."""
        if self._job_start_t != self._job_start_t:  # NaN: the job has not started
            return self._offset_s
        return self._offset_s + (self._segment_t if self._state == "stopped" else self._clock()) - self._job_start_t

    def snapshot(self) -> MonitorResult:
        """The figures so far, without stopping."""
        self._require_running("snapshot()")
        self._close_segment(self._segment_phase)
        return self._build_result("running", None, ())

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this measurement later (`Monitor(resume=...)`), as JSON-ready data."""
        self._require_running("state()")
        self._close_segment(self._segment_phase)
        return {"version": STATE_VERSION, "job_seconds": self._offset_s + self._segment_t - self._job_start_t,
                "tokens": self._tokens, "ledger": self._ledger.to_json(),
                "windows": {name: {"ledger": w.ledger.to_json(), "start_s": w.start_s, "start_tokens": w.start_tokens}
                            for name, w in self._windows.items()}}

    # ---- internals -------------------------------------------------------------------------------------

    def _require_running(self, what: str) -> None:
        if self._state != "running":
            raise MonitorError(f"Monitor.{what}: the Monitor is {'not started' if self._state == 'new' else 'stopped'};"
                               " use it inside `with Monitor(...) as m:` (or between start() and stop())")

    def _now_mark(self) -> tuple[float, Mark | None]:
        if self._sampler is None:
            return self._clock(), None
        mark = self._sampler.mark()
        return mark.t_s, mark

    def _close_segment(self, next_phase: str) -> None:
        """End the running segment now (one reading of every meter) and start one of `next_phase`."""
        t, mark = self._now_mark()
        window = None
        if self._sampler is not None and self._segment_mark is not None:
            window = self._sampler.energy_between(self._segment_mark, mark, self._segment_phase)
        seconds = t - self._segment_t
        for ledger in (self._ledger, *(w.ledger for w in self._windows.values())):
            ledger.tally(self._segment_phase).add_window(window, seconds)
        if self._phase_out is not None and next_phase != self._segment_phase:
            self._phase_out.write(next_phase)
        self._segment_phase, self._segment_t, self._segment_mark = next_phase, t, mark
        if self._registration is not None:
            self._registration.touch()

    def _build_result(self, status: str, sampling: dict | None, overlaps: tuple) -> MonitorResult:
        job, phases, idle = summarise_ledger(self._ledger, self._devices, self.config.total)
        return MonitorResult(job=job, phases=phases, idle=idle, devices=dict(self._devices),
                             total_rule=self.config.total, status=status, name=self.name, run_id=self.run_id,
                             sampling=sampling, shared_host=overlaps, notes=tuple(self._notes),
                             windows=dict(self._closed_windows), ledger=self._ledger.copy())

    def _enqueue_samples(self, rows: list[dict]) -> None:
        """Sampler thread: rows to the job's time frame (the idle baseline's are dropped), to the writer."""
        start = self._job_start_t
        if start != start:  # NaN: still in the idle baseline
            return
        shift = self._offset_s + self._sampler.start_monotonic_s - start
        out = [{"device": r["device"], "t_seconds": r["t_s"] + shift, "power_w": r["power_w"],
                "energy_j": r["energy_j"]} for r in rows if r["t_s"] + shift >= self._offset_s]
        if out:
            self._writer.put(out)

    def _write_samples_to_store(self, rows: list[dict]) -> None:
        if self._recorder is not None:
            self._recorder.write_samples(rows)


class _SampleWriter:
    """Hands sample chunks to a consumer on its own thread; a failing consumer is reported, never raised."""

    def __init__(self, consumer: SampleConsumer) -> None:
        self._consumer = consumer
        self._queue: queue.Queue[list[dict] | None] = queue.Queue()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="wattscale-sample-writer", daemon=True)
        self._thread.start()

    def put(self, rows: list[dict]) -> None:
        self._queue.put(rows)

    def _run(self) -> None:
        while (rows := self._queue.get()) is not None:
            try:
                self._consumer(rows)
            except Exception as exc:  # the measurement goes on; the result's notes say what was lost
                self._error = self._error or f"{type(exc).__name__}: {exc}"

    def close(self) -> tuple[bool, str | None]:
        """Write what is queued, stop; (all written, first error)."""
        self._queue.put(None)
        self._thread.join()
        return self._error is None, self._error


def _device_infos(meters: list[Meter]) -> dict[str, DeviceInfo]:
    infos = {}
    for meter in meters:
        components = getattr(meter, "components", None) or tuple(component_of(meter.name, d) for d in meter.devices)
        uuids = getattr(meter, "uuids", None) or (None,) * len(meter.devices)
        for device, component, device_uuid in zip(meter.devices, components, uuids, strict=True):
            infos[device] = DeviceInfo(device, component, meter.name, device_uuid)
    return infos


def is_phase_name(name: object) -> bool:
    """True for a name `Monitor.phase` accepts: lowercase, a letter first, at most 32 characters, not idle/other."""
    return isinstance(name, str) and bool(_PHASE_NAME.match(name)) and name not in (IDLE_PHASE, OTHER_PHASE)


def command_line() -> str:
    """This process's command line, shell-quoted (stored with a measured run)."""
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv])
