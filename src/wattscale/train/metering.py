"""How a training session measures itself: the public `Monitor`, one per rank, and what rank 0 writes.

Every rank runs a `Monitor` on its own devices (its GPU by UUID; RAPL on local rank 0 only; a CPU estimate of
its own process tree), with the same phases in lockstep: ``idle`` (the baseline, first session only),
``warmup`` and ``train`` (the optimiser steps), ``eval``, ``checkpoint``, ``save`` and ``other``. A window
named ``interval`` runs from one evaluation to the next. Rank 0 gathers the ranks' figures at evaluations,
checkpoints and the end, and alone writes them: interval rows split by phase, the power samples, and when
the run ends its phase and run rows and energy fields. Without meters (``meter.kinds = none``, or none
readable) the Monitor still keeps time and tokens per phase, so MFU always uses training-phase time.

With trackers (``train.track``), rank 0 feeds them through a `wattscale.trackers.MonitorFeed` at each
evaluation (energy since the last one by phase, from its own Monitor, with the validation loss) and, when the
run ends, the merged totals of every rank.

A resumed session continues the measurement saved with its checkpoint (`Monitor.state()`); what was
measured between that checkpoint and a kill is dropped with the work it paid for, which is redone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from wattscale.energy import MeterConfig
from wattscale.energy.discover import close_meters
from wattscale.energy.gpus import device_uuid
from wattscale.energy.monitor import Monitor
from wattscale.energy.ranks import merge_results, merge_states, merge_windows, rank_meters, state_for_rank
from wattscale.energy.store_rows import final_rows, idle_rows, run_fields, window_rows
from wattscale.store import Store
from wattscale.trackers.base import Tracker
from wattscale.trackers.live import MonitorFeed
from wattscale.train.parallel import DistributedContext, gather_lists, gather_objects

INTERVAL = "interval"
TRAINER_WARMUP_STEPS = 1


class RunMetering:
    """One rank's measurement of a training session; every method marked collective runs on every rank."""

    def __init__(self, config: MeterConfig, ctx: DistributedContext, store: Store | None, run_id: str,
                 resume: dict[str, Any] | None, measure_idle: bool, trackers: Sequence[Tracker] = (),
                 params: Mapping[str, Any] | None = None) -> None:
        self.ctx, self.store, self.run_id = ctx, store, run_id
        self._trackers, self._params = list(trackers), dict(params or {})
        self.feed: MonitorFeed | None = None  # made when the job starts, if there are trackers
        gpus = [device_uuid(ctx.device.index or 0)] if ctx.device.type == "cuda" else []
        meters, reasons = rank_meters(config, ctx.rank, ctx.local_rank, ctx.world_size, gpus)
        self.meters = meters
        self.notes: list[str] = []
        if config.enabled and not meters:
            self.notes.append("energy not measured, no usable meter: " + "; ".join(reasons))
        self._buffer: list[dict] = []  # other ranks' samples until the next gather (the Monitor's writer thread adds)
        self._buffer_lock = threading.Lock()
        single_writer = store is not None and ctx.world_size == 1
        on_samples = self._write_samples if single_writer else (self._buffer_samples if meters else None)
        # The trainer's warm-up: its first step of each session (allocations, autotuning, compilation).
        warmup = TRAINER_WARMUP_STEPS if config.warmup_steps is None else config.warmup_steps
        settings = dataclasses.replace(config, idle_seconds=config.idle_seconds if measure_idle else 0.0,
                                       warmup_steps=warmup)
        self.monitor = Monitor(settings, meters=meters, run_id=run_id, on_samples=on_samples,
                               resume=state_for_rank(resume, ctx.rank, ctx.world_size),
                               notes=[f"not used: {reason}" for reason in reasons])

    def start(self) -> None:
        """Start measuring: the idle baseline (if due), then the job; rank 0 writes the idle rows. Collective."""
        try:
            self.monitor.start()
        except BaseException:
            close_meters(self.meters)
            raise
        if self.monitor.config.idle_seconds > 0:
            idle = self.monitor.snapshot()
            self._write(gather_lists(self.ctx, idle_rows(idle)))
        if INTERVAL not in self.monitor.open_windows:
            self.monitor.begin_window(INTERVAL)
        if self._trackers:
            self.feed = MonitorFeed(self.monitor, self._trackers)
            self.feed.log_params(self._params)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the block as `name` on this rank."""
        with self.monitor.phase(name):
            yield

    def step(self, tokens: int) -> None:
        """Count one optimiser step of `tokens` tokens (the whole step's, the same on every rank)."""
        self.monitor.step(tokens=tokens)

    def job_seconds(self) -> float:
        """Seconds of the run so far, across sessions (the run's wall_seconds)."""
        return self.monitor.job_seconds()

    def close_interval(self, tokens_seen: int | None = None, metrics: Mapping[str, float] | None = None) -> None:
        """End the interval at an evaluation and start the next; rank 0 writes its rows and feeds the trackers
        (this rank's devices, at step = `tokens_seen`, with `metrics` such as the validation loss). Collective."""
        window = self.monitor.end_window(INTERVAL)
        self.monitor.begin_window(INTERVAL)
        parts = gather_objects(self.ctx, (window, self.monitor.devices))
        if self.store is not None:
            merged, devices = merge_windows(parts, self.monitor.config.total)
            self.store.add_energy_measurements(self.run_id, window_rows(merged, devices))
        self.flush_samples()
        if self.feed is not None and tokens_seen is not None:
            self.feed.log(tokens_seen, metrics)

    def state(self) -> dict[str, Any] | None:
        """Every rank's measurement so far, merged on rank 0 (None elsewhere), for a checkpoint. Collective."""
        return merge_states(gather_objects(self.ctx, self.monitor.state()))

    def flush_samples(self) -> None:
        """Gather the other ranks' buffered power samples; rank 0 writes them. Collective."""
        if self.ctx.world_size == 1:
            return
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
        self._write_samples(gather_lists(self.ctx, rows))

    def finish(self, tokens_seen: int, status: str = "finished") -> dict[str, Any]:
        """Stop; rank 0 writes the phase and run rows, ends the trackers with `status` and returns the runs-table
        fields ({} elsewhere). Collective."""
        result = self.monitor.stop()
        self.flush_samples()
        merged = merge_results(gather_objects(self.ctx, result))
        if self.feed is not None:
            self.feed.close(status, step=tokens_seen, result=merged)
        if self.store is None or merged is None:
            return {}
        self.store.add_energy_measurements(self.run_id, final_rows(merged, 0.0, self.monitor.job_seconds(),
                                                                   tokens_seen))
        return run_fields(merged)

    def abort(self, status: str) -> None:
        """Stop without writing (a failed or interrupted session resumes from its checkpoint)."""
        if self.monitor.running:
            self.monitor.stop(status)
        if self.feed is not None:
            self.feed.close(status)

    def close(self) -> None:
        """Release the meters."""
        close_meters(self.meters)

    def _write(self, rows: list[dict]) -> None:
        if self.store is not None and rows:
            self.store.add_energy_measurements(self.run_id, rows)

    def _write_samples(self, rows: list[dict]) -> None:
        if self.store is not None and rows:
            self.store.add_power_samples(self.run_id, rows)

    def _buffer_samples(self, rows: list[dict]) -> None:
        with self._buffer_lock:
            self._buffer.extend(rows)
