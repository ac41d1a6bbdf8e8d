"""Per-run SQLite stores: where a Ray task writes its run when the main store is SQLite.

The Ray executor's driver seeds `<run_dir>/worker-store-<hash>.db` with a run's rows, a task
trains into it, and the driver copies the run back into the main store when the task returns.
A driver that dies before that leaves the rows there; `gather_leftovers` copies them in, and both
executors call it before they train, so no sweep resumes a run with some of its rows missing.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path

from wattscale.errors import WattscaleError
from wattscale.locking import run_lock
from wattscale.store import Store, open_store

from .plan import ExperimentPlan, PlannedRun

_ENDED = ("finished", "diverged")


def run_dir_of(run: PlannedRun, record: dict | None) -> Path:
    """Where train() keeps the run's checkpoints: the stored run_dir, else <run_root>/<run_id>."""
    if record and record.get("run_dir"):
        return Path(record["run_dir"])
    return Path(run.config.train.run_root).resolve() / run.run_id


def worker_store_path(run_dir: Path, store_url: str) -> Path:
    """A task's own SQLite store in its run directory, named after the main store (two never share one)."""
    return run_dir / f"worker-store-{hashlib.sha256(store_url.encode()).hexdigest()[:8]}.db"


def gather_leftovers(plan: ExperimentPlan, store: Store) -> None:
    """Copy in what the tasks of an earlier driver of this store trained but that driver never gathered (it died).

    A per-run store that got further (tokens up to its last checkpoint) than the main store replaces
    the run's rows there; the rows after that checkpoint are redone by the run's next session.
    """
    for run in plan.runs:
        record = store.get_run(run.run_id)
        if record is not None and record["status"] in _ENDED:
            continue
        run_dir = run_dir_of(run, record)
        path = worker_store_path(run_dir, store.url)
        if not path.is_file():
            continue
        with ExitStack() as stack:
            try:
                stack.enter_context(run_lock(run_dir))
            except WattscaleError:
                continue  # a task trains it right now; its own driver gathers it
            worker = stack.enter_context(open_store(path, create=False))
            theirs = worker.get_run(run.run_id)
            if theirs is not None and (record is None or theirs["tokens_seen"] >= record["tokens_seen"]):
                store.copy_run_from(worker, run.run_id)
