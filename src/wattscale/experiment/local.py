"""The local executor: the planned runs one after another in this process, in the stored order.

Resumable by construction: every run is `train()`, which skips a finished run, resumes an
interrupted or failed one from its last checkpoint and never writes a row twice. So a sweep
killed at any moment is continued by running the same command again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from wattscale.earlier_ids import adopt_earlier_id
from wattscale.store import open_store
from wattscale.train import DEFAULT_CACHE_DIR, train

from .plan import ExperimentPlan
from .progress import SweepProgress
from .worker_store import gather_leftovers


@dataclass
class SweepResult:
    """How a sweep ended: counts by outcome and the runs that failed, with their messages."""

    experiment: str
    planned: int
    finished: int = 0
    diverged: int = 0
    already_done: int = 0  # finished or diverged before this sweep started them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run_id, message)

    @property
    def complete(self) -> bool:
        """Every planned run ended (finished or diverged)."""
        return not self.failed and self.finished + self.diverged == self.planned


def register_plan(plan: ExperimentPlan, store_url: str) -> None:
    """Record the experiment and its run order (once), runs stored under earlier ids renamed first."""
    with open_store(store_url) as store:
        for run in plan.runs:
            note = adopt_earlier_id(store, run.run_id, run.earlier_run_ids)
            if note:
                print(f"wattscale: {note}", file=sys.stderr, flush=True)
        store.register_experiment(plan.store_record(), [run.store_row() for run in plan.runs])


def run_local(plan: ExperimentPlan, store_url: str, cache_dir: Path = DEFAULT_CACHE_DIR,
              show_progress: bool = True) -> SweepResult:
    """Train every planned run that has not ended, in order; a failing run is recorded and the sweep goes on."""
    register_plan(plan, store_url)
    with open_store(store_url) as store:
        if store.backend == "sqlite":
            gather_leftovers(plan, store)  # what the tasks of a killed Ray sweep trained
        stored = store.experiment_runs(plan.spec.name)
    result = SweepResult(plan.spec.name, len(plan.runs))
    progress = SweepProgress(plan, stored, enabled=show_progress)
    try:
        for run in plan.runs:
            progress.start_run(run)
            try:
                outcome = train(run.config, store_url, show_progress=show_progress, cache_dir=cache_dir,
                                experiment=plan.spec.name, progress_hooks=progress.hooks())
            except Exception as exc:  # recorded as failed by train(); the other runs still run
                result.failed.append((run.run_id, f"{type(exc).__name__}: {exc}"))
                progress.end_run(run, "failed", 0, None)
                continue
            result.already_done += outcome.already_done
            result.finished += outcome.status == "finished"
            result.diverged += outcome.status == "diverged"
            progress.end_run(run, outcome.status, outcome.tokens_seen, outcome.energy_j)
    finally:
        progress.close()
    return result
