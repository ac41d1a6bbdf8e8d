"""A sweep's progress: runs done / total, tokens, energy so far and the ETA, above the current run's bar.

The local executor runs one run at a time and reports its tokens through `hooks()`; the Ray
executor has many runs in flight and reports each with `update_tokens(run_id, tokens_seen)`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import Progress

from wattscale.progress import ProgressHooks, progress_columns

from .plan import ExperimentPlan, PlannedRun

_DONE = ("finished", "diverged")


class SweepProgress:
    """Overall progress of one experiment; a rich display on a terminal, one line per run otherwise."""

    def __init__(self, plan: ExperimentPlan, stored: list[dict], enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        """`stored`: the experiment's rows from `Store.experiment_runs` (what is already done)."""
        self.plan, self.enabled = plan, enabled
        self.stream = stream or sys.stderr
        by_id = {row["run_id"]: row for row in stored}
        done = [by_id[r.run_id] for r in plan.runs if by_id.get(r.run_id, {}).get("status") in _DONE]
        self._done_ids = {row["run_id"] for row in done}
        self.runs_done = len(done)
        self._tokens_ended = sum(row["tokens_seen"] or 0 for row in done)
        self.energy_j = sum(row["energy_j"] or 0.0 for row in done)
        self._running: dict[str, int] = {}  # run_id -> tokens_seen of the runs in progress
        self._current: str | None = None  # the run the hooks report for
        self._session_tokens = 0
        self._started = time.monotonic()
        self._display: Progress | None = None
        if enabled and self.stream.isatty():
            self._display = Progress(*progress_columns(), console=Console(file=self.stream), transient=False)
            self._task = self._display.add_task(f"sweep {plan.spec.name}", total=plan.total_tokens,
                                                completed=self.tokens_done, info=self._info())
            self._display.start()

    @property
    def tokens_done(self) -> int:
        """Tokens of the runs that ended plus those trained so far by the runs in progress."""
        return self._tokens_ended + sum(self._running.values())

    def _info(self) -> str:
        return f"{self.runs_done}/{len(self.plan.runs)} runs  {self.energy_j / 1000:,.1f} kJ so far"

    def eta_seconds(self) -> float | None:
        """Remaining tokens at the rate this sweep has trained so far (None before any token)."""
        elapsed = time.monotonic() - self._started
        if self._session_tokens <= 0 or elapsed <= 0:
            return None
        return (self.plan.total_tokens - self.tokens_done) / (self._session_tokens / elapsed)

    def hooks(self) -> ProgressHooks:
        """What the current run's trainer reports into."""
        return ProgressHooks(display=self._display, on_tokens=self._on_tokens)

    def _on_tokens(self, tokens_seen: int) -> None:
        if self._current is not None:
            self.update_tokens(self._current, tokens_seen)

    def update_tokens(self, run_id: str, tokens_seen: int) -> None:
        """A run in progress has now seen `tokens_seen` tokens (its total, earlier sessions included)."""
        # The rate counts only tokens trained in this sweep: a resumed run's first report
        # includes the tokens of its earlier sessions.
        last = self._running.get(run_id)
        if last is not None:
            self._session_tokens += max(0, tokens_seen - last)
        self._running[run_id] = tokens_seen
        if self._display is not None:
            self._display.update(self._task, completed=self.tokens_done)

    def start_run(self, run: PlannedRun) -> None:
        """Announce the next run (the one `hooks()` reports for)."""
        self._current = run.run_id
        if run.run_id not in self._done_ids:
            self.announce(run)

    def announce(self, run: PlannedRun, event: str = "") -> None:
        """One line about a run (`event`, e.g. "finished", follows its description) with the sweep's totals."""
        if not self.enabled:
            return
        eta = self.eta_seconds()
        self.log(f"run {run.position + 1}/{len(self.plan.runs)} {run.run_id} "
                 f"(block {run.block}, {run.condition_label}, seed {run.config.train.seed})"
                 + (f" {event}" if event else "") + "; "
                 f"{self.runs_done} done, {self.tokens_done:,}/{self.plan.total_tokens:,} tokens, "
                 f"{self.energy_j / 1000:,.1f} kJ so far" + (f", ETA {eta / 60:,.1f} min" if eta else ""))

    def log(self, text: str) -> None:
        """Print `[sweep NAME] text` above the display (nothing when disabled)."""
        if not self.enabled:
            return
        line = f"[sweep {self.plan.spec.name}] {text}"
        if self._display is not None:
            self._display.console.print(line)
        else:
            print(line, file=self.stream, flush=True)

    def end_run(self, run: PlannedRun, status: str, tokens_seen: int, energy_j: float | None) -> None:
        """Count a run that ended (a run already counted as done changes nothing)."""
        self._running.pop(run.run_id, None)
        if run.run_id in self._done_ids:
            return
        if status in _DONE:
            self._done_ids.add(run.run_id)
            self.runs_done += 1
            self.energy_j += energy_j or 0.0
            self._tokens_ended += tokens_seen
        if self._display is not None:
            self._display.update(self._task, completed=self.tokens_done, info=self._info())

    def close(self) -> None:
        """Stop the display."""
        if self._display is not None:
            self._display.stop()
            self._display = None
