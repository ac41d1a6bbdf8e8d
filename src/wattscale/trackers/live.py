"""`MonitorFeed`: trackers fed from a running `wattscale.Monitor` (your own loop, or wattscale's trainer).

```python
from wattscale import Monitor
from wattscale.trackers import MonitorFeed, open_trackers

with Monitor() as m:
    feed = MonitorFeed(m, open_trackers(["mlflow:sqlite:///mlflow.db", "tensorboard:./tb"], run_name="my-run"))
    feed.log_params({"lr": 3e-4, "model": "my-model"})
    for step, batch in enumerate(loader, 1):
        with m.phase("train"):
            loss = train_step(batch)
            m.step(tokens=batch.numel())
        if step % 100 == 0:
            feed.log(step, {"train_loss": loss})    # energy, W and J/token since the last log, by phase
feed.close()                                        # the run's totals and sources, then the trackers end
```

Each `log(step)` reads `Monitor.snapshot()` and logs what happened since the previous `log` (or since the
feed was made): per phase and for the job, ``energy_j``, ``power_w``, ``joules_per_token`` and
``seconds``, and the cumulative energy (names in `wattscale.trackers.metrics`). A tracker that fails
while logging is reported once on stderr and dropped: the measurement (and a store, if the Monitor
writes one) goes on, and `wattscale export --to ...` can log the run again later.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from wattscale.energy.measurement import Ledger, PhaseTally
from wattscale.energy.monitor import MonitorError
from wattscale.energy.result import MonitorResult, summarise_ledger
from wattscale.trackers.base import Tracker, close_tracker, flatten_params
from wattscale.trackers.metrics import cumulative_metrics, interval_metrics, source_params, total_metrics


def ledger_since(now: Ledger, before: Ledger) -> Ledger:
    """What `now` holds beyond `before` (both of the same measurement): time, tokens, steps, joules per device.

    The idle baseline is left out (it is measured before the job, never in an interval).
    """
    out = Ledger()
    for phase in now.job_phases():
        new, old = now.phases[phase], before.phases.get(phase, PhaseTally())
        tally = out.tally(phase)
        tally.seconds = new.seconds - old.seconds
        tally.tokens = new.tokens - old.tokens
        tally.steps = new.steps - old.steps
        tally.energy_j = {d: j - old.energy_j.get(d, 0.0) for d, j in new.energy_j.items()}
        tally.sources = dict(new.sources)
        tally.complete = new.complete
        tally.errors = [e for e in new.errors if e not in old.errors]
    # A phase with no time since `before` is not part of this interval.
    out.phases = {p: t for p, t in out.phases.items() if t.seconds > 0 or t.tokens or any(t.energy_j.values())}
    return out


class MonitorFeed:
    """Logs a Monitor's energy to trackers at the steps you choose.

    Args:
        monitor: a `Monitor` (started now or later; `log` needs it running).
        trackers: the trackers to feed (see `open_trackers`); the feed closes them in `close`.
    """

    def __init__(self, monitor: Any, trackers: Sequence[Tracker]) -> None:
        self.monitor = monitor
        self.trackers: list[Tracker] = list(trackers)
        self._last = monitor.snapshot().ledger if monitor.running else Ledger()
        self._last_step = 0
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Send parameters to every tracker."""
        self._send("log_params", params)

    def log(self, step: int, metrics: Mapping[str, float | None] | None = None) -> dict[str, float | None]:
        """Log the energy since the last call (and `metrics`, e.g. a loss) at `step`; returns what was logged."""
        snapshot = self.monitor.snapshot()
        since = ledger_since(snapshot.ledger, self._last)
        self._last = snapshot.ledger
        job, phases, _ = summarise_ledger(since, snapshot.devices, snapshot.total_rule)
        so_far_job, so_far, _ = summarise_ledger(snapshot.ledger, snapshot.devices, snapshot.total_rule)
        logged = {**interval_metrics(phases, job), **cumulative_metrics(so_far, so_far_job), **(metrics or {})}
        self._last_step = int(step)
        self._send("log_metrics", logged, int(step))
        return logged

    def log_result(self, result: MonitorResult, step: int | None = None) -> dict[str, float | None]:
        """Log a finished measurement's totals (at `step`, default the last logged) and its sources as params."""
        totals = total_metrics(result.phases, result.job)
        self._send("log_metrics", totals, self._last_step if step is None else int(step))
        self._send("log_params", {**source_params(result.phases, result.job), "total_rule": result.total_rule,
                                  "status": result.status,
                                  **{f"component/{d.device}": d.component for d in result.devices.values()},
                                  **{f"meter/{d.device}": d.meter for d in result.devices.values()}})
        return totals

    def close(self, status: str | None = None, step: int | None = None, result: MonitorResult | None = None) -> None:
        """Log the totals (of `result`, default the Monitor's once it has stopped), then end every tracker with
        `status` (default the result's: finished, failed, interrupted)."""
        if self._closed:
            return
        if result is None and not self.monitor.running:
            with suppress(MonitorError):  # never started: nothing to total
                result = self.monitor.result
        if result is not None:
            self.log_result(result, step)
        final = status or (result.status if result is not None else "finished")
        self._closed = True
        for tracker in self.trackers:
            try:
                close_tracker(tracker, final)
            except Exception as exc:
                _report(tracker, exc)
        self.trackers = []

    def _send(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                _report(tracker, exc)
                self.trackers.remove(tracker)


def _report(tracker: Tracker, exc: Exception) -> None:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    print(f"wattscale: tracker {type(tracker).__name__} failed and is no longer fed: {first} "
          "(the run goes on; log it later with `wattscale export --to ...`)", file=sys.stderr, flush=True)


def tracked_params(config: Any, run_id: str, device: Any, precision: str, experiment: str | None) -> dict[str, Any]:
    """The parameters wattscale's trainer logs for a run (`config` is its `RunConfig`), flattened."""
    params = {"run_id": run_id, "kind": "train", "preset": config.model.name, "seed": config.train.seed,
              "tokens_budget": config.train.tokens, "device": str(device), "precision": precision,
              "experiment": experiment, "metric_step": "training tokens seen"}
    return {**{k: v for k, v in params.items() if v is not None}, **flatten_params(config.to_dict(), "config.")}
