"""The Ray executor: every planned run that has not ended becomes one Ray task.

    wattscale run study.toml --executor ray --address HEAD_IP:6379 --cpus-per-run 4

Tasks are submitted in plan order; each reserves one GPU when the cluster has GPUs, otherwise
`cpus_per_run` CPUs (and trains with that many threads unless the file sets train.threads).
Who writes the results:

- PostgreSQL: the workers, straight into the store, which takes writers from many hosts at once.
- SQLite: the driver. Each task trains into a per-run store in its run directory
  (`worker-store-<hash of the store's URL>.db`), which the driver first seeds with the run's rows
  so far (a run begun by the local executor keeps them); when the task returns, the driver
  copies the run's rows into the main store in one transaction (`Store.copy_run_from`).

A worker that dies (killed, out of memory, node lost) is retried by Ray up to `max_retries`
times, and the retry's `train()` resumes from the run's last checkpoint. So run directories must
be on a filesystem that the driver and every worker see (one machine, or a shared run_root).
A driver that dies leaves the per-run stores behind; the next `run` on the same store (either
executor) gathers them before it trains anything, so a Ray sweep is resumable like a local one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from wattscale.config import RunConfig
from wattscale.errors import ConfigError, WattscaleError
from wattscale.interrupts import raise_if_interrupted
from wattscale.locking import run_lock
from wattscale.store import Store, open_store
from wattscale.train import DEFAULT_CACHE_DIR, TrainResult, train
from wattscale.train.checkpoints import list_checkpoints

from .local import SweepResult, register_plan
from .plan import ExperimentPlan, PlannedRun
from .progress import SweepProgress
from .worker_store import gather_leftovers, run_dir_of, worker_store_path

DEFAULT_MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 10.0
POLL_SECONDS = 2.0  # how often the driver reads the runs' checkpoints for the progress display
_ENDED = ("finished", "diverged")


def run_ray(plan: ExperimentPlan, store_url: str, cache_dir: Path = DEFAULT_CACHE_DIR, *,
            address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float | None = None,
            show_progress: bool = True, max_retries: int = DEFAULT_MAX_RETRIES) -> SweepResult:
    """Train every planned run that has not ended as a Ray task; a failing run is recorded and the sweep goes on.

    address: the cluster ("HEAD_IP:6379"); None means $RAY_ADDRESS, else a cluster started on
    this machine with `ray start`, else a new local Ray instance, stopped again at the end.
    gpus_per_run: None reserves 1 GPU per run when the cluster has GPUs, else none.
    max_retries: how often Ray restarts a run whose worker died (each restart resumes it).
    """
    ray = _import_ray()
    _check_request(cpus_per_run, gpus_per_run, max_retries)
    register_plan(plan, store_url)
    with open_store(store_url) as store:
        per_run_stores = store.backend == "sqlite"
        if per_run_stores:
            gather_leftovers(plan, store)
        stored = store.experiment_runs(plan.spec.name)
    status = {row["run_id"]: row["status"] for row in stored}
    result = SweepResult(plan.spec.name, len(plan.runs))
    for run in plan.runs:
        if status.get(run.run_id) in _ENDED:
            result.already_done += 1
            result.finished += status[run.run_id] == "finished"
            result.diverged += status[run.run_id] == "diverged"
    if result.already_done == len(plan.runs):
        return result  # nothing to train: no need for a cluster
    connected_here = _connect(ray, address)
    try:
        if gpus_per_run is None:
            gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        options = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": max_retries,
                   "retry_exceptions": False}  # a run that raises has failed; only a dead worker is retried
        with open_store(store_url) as store:
            sweep = _Sweep(ray, plan, store, per_run_stores, Path(cache_dir).resolve(), result,
                           SweepProgress(plan, stored, enabled=show_progress))
            sweep.run(options, threads=max(1, int(cpus_per_run)))
        return result
    finally:
        if connected_here:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray: Ray is not installed; pip install 'wattscale[ray]'") from None
    return ray


def _check_request(cpus_per_run: float, gpus_per_run: float | None, max_retries: int) -> None:
    """Reject resource requests Ray would refuse (negative, fractions above 1), naming the flag."""
    problems = []
    for flag, value in (("--cpus-per-run", cpus_per_run), ("--gpus-per-run", gpus_per_run)):
        if value is None:
            continue
        if value < 0 or (flag == "--cpus-per-run" and value == 0):
            problems.append(f"{flag}: {value} must be positive")
        elif value > 1 and value != int(value):
            problems.append(f"{flag}: {value}: Ray takes fractions only below 1; use a whole number")
    if max_retries < 0:
        problems.append(f"max_retries: {max_retries} must be >= 0")
    if problems:
        raise ConfigError("; ".join(problems))


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) Ray quietly; False when the caller had already connected (left open then)."""
    if ray.is_initialized():
        return False
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    try:
        ray.init(address=address or None, logging_level=logging.WARNING, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS")
        what = f"cannot connect to the Ray cluster at {where}" if where else "cannot start a local Ray instance"
        raise WattscaleError(f"--address: {what} ({_first_line(exc)}); check the address and that the cluster "
                             "runs: ray status --address ADDR") from None
    return True


def _check_reachable(address: str | None) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or not port.isdigit() or "/" in host or not host:
        return  # None, "auto", "local", ray://...: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise WattscaleError(f"--address: no Ray cluster answers at {address} ({exc.strerror or exc}); check the "
                             "address (the head's IP and its --port, default 6379) and that the cluster runs: "
                             f"ray status --address {address}") from None


def _train_run(config: RunConfig, store_url: str, cache_dir: str, experiment: str, driver_cwd: str) -> TrainResult:
    """The Ray task: train (or resume, or skip if it ended) one run, in a worker process."""
    if Path(driver_cwd).is_dir():
        # A worker starts where `ray start` ran; relative paths in the file (data.source, ...) are the driver's.
        os.chdir(driver_cwd)
    return train(config, store_url, show_progress=False, cache_dir=Path(cache_dir), experiment=experiment)


def _task_config(config: RunConfig, threads: int) -> RunConfig:
    """What a task trains: run_root made absolute (a worker has its own cwd), threads = reserved CPUs.

    Neither is part of the run id, so the task trains the planned run.
    """
    train_config = replace(config.train, run_root=str(Path(config.train.run_root).resolve()),
                           threads=config.train.threads or threads)
    return replace(config, train=train_config)


def _checkpoint_tokens(run_dir: Path) -> int | None:
    """tokens_seen of the run's newest checkpoint (a plain file: safe to read while the task writes)."""
    try:
        checkpoints = list_checkpoints(run_dir)
        return json.loads((checkpoints[-1] / "meta.json").read_text())["tokens_seen"] if checkpoints else None
    except (OSError, ValueError, KeyError):
        return None  # pruned or replaced while we looked; the next poll sees the new one


def _remove_sqlite(path: Path) -> None:
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with suppress(FileNotFoundError):
            (path.parent / name).unlink()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


class _Sweep:
    """The driver's side of one Ray sweep: seed, submit, wait, gather, count.

    The driver touches a run's per-run store, or marks a run in the store, only while it holds the
    run's lock, i.e. while no process trains the run (a second sweep of the same runs cannot harm it).
    """

    def __init__(self, ray: Any, plan: ExperimentPlan, store: Store, per_run_stores: bool, cache_dir: Path,
                 result: SweepResult, progress: SweepProgress) -> None:
        self.ray, self.plan, self.store, self.per_run_stores = ray, plan, store, per_run_stores
        self.cache_dir, self.result, self.progress = cache_dir, result, progress
        self.in_flight: dict[Any, PlannedRun] = {}  # ObjectRef -> run
        self.run_dirs: dict[str, Path] = {}
        self.max_retries = 0

    def run(self, options: dict[str, Any], threads: int) -> None:
        """Submit every run that has not ended, in plan order, then gather them as they finish."""
        self.max_retries = options["max_retries"]
        remote = self.ray.remote(_train_run)
        try:
            for run in self.plan.runs:
                record = self.store.get_run(run.run_id)
                if record is not None and record["status"] in _ENDED:
                    continue
                self.run_dirs[run.run_id] = run_dir = run_dir_of(run, record)
                try:
                    url = self._seed(run, record, run_dir) if self.per_run_stores else self.store.url
                except WattscaleError as exc:  # another process trains the run (or its store is unusable)
                    self._failed(run, f"{type(exc).__name__}: {exc}", worker_died=False)
                    continue
                ref = remote.options(**options, name=f"wattscale-train-{run.run_id}").remote(
                    _task_config(run.config, threads), url, str(self.cache_dir), self.plan.spec.name, os.getcwd())
                self.in_flight[ref] = run
            self.progress.log(f"{len(self.in_flight)} runs submitted to Ray ({self.result.already_done} already "
                              f"done); per run: CPUs {options['num_cpus']:g}, GPUs {options['num_gpus']:g}; "
                              f"results written by {'the driver' if self.per_run_stores else 'the workers'}")
            self._wait()
        except BaseException:  # Ctrl-C or a driver error: stop the tasks, keep what they trained
            self._abandon()
            raise
        finally:
            self.progress.close()

    def _wait(self) -> None:
        last_poll = time.monotonic()
        while self.in_flight:
            raise_if_interrupted()  # a Ctrl-C the garbage collector swallowed (wattscale.interrupts)
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                self._end(ref)
            if time.monotonic() - last_poll >= POLL_SECONDS:
                self._poll()
                last_poll = time.monotonic()

    def _seed(self, run: PlannedRun, record: dict | None, run_dir: Path) -> str:
        """The run's per-run store, holding exactly the run's rows of the main store."""
        path = worker_store_path(run_dir, self.store.url)
        with run_lock(run_dir), open_store(path) as worker:
            if record is None:
                worker.delete_run(run.run_id)
            else:
                worker.copy_run_from(self.store, run.run_id)
        return str(path)

    def _gather(self, run: PlannedRun) -> str | None:
        """Copy the run's rows from its per-run store into the main store; an error message, or None."""
        run_dir = self.run_dirs[run.run_id]
        path = worker_store_path(run_dir, self.store.url)
        try:
            with run_lock(run_dir), open_store(path, create=False) as worker:
                if worker.get_run(run.run_id) is not None:
                    self.store.copy_run_from(worker, run.run_id)
        except WattscaleError as exc:
            return f"{type(exc).__name__}: {exc} (its rows stay in {path}; run the sweep again to gather them)"
        return None

    def _end(self, ref: Any) -> None:
        """Count one finished task: gather its rows, record its outcome."""
        run = self.in_flight.pop(ref)
        try:
            outcome: TrainResult = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # train() raised; it recorded the run as failed
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            self._failed(run, f"{type(cause).__name__}: {_first_line(cause)}", worker_died=False)
            return
        except Exception as exc:  # its worker died more than max_retries times, or its node was lost
            self._failed(run, f"{type(exc).__name__}: {_first_line(exc)} ({self.max_retries} retries)",
                         worker_died=True)
            return
        if outcome.run_id != run.run_id:  # the worker read other data than the driver planned with
            self._failed(run, f"the worker trained run {outcome.run_id}, not the planned {run.run_id}: it read "
                              "different data; use absolute data paths on a filesystem every node sees",
                         worker_died=False)
            return
        if self.per_run_stores:
            error = self._gather(run)
            if error is not None:
                self._failed(run, error, worker_died=False)
                return
            if outcome.status in _ENDED:
                _remove_sqlite(worker_store_path(self.run_dirs[run.run_id], self.store.url))  # all copied
        self.result.already_done += outcome.already_done
        self.result.finished += outcome.status == "finished"
        self.result.diverged += outcome.status == "diverged"
        self.progress.end_run(run, outcome.status, outcome.tokens_seen, outcome.energy_j)
        self.progress.announce(run, outcome.status)

    def _failed(self, run: PlannedRun, message: str, worker_died: bool) -> None:
        """Record a failed run: in the result always; in the store as far as no other process trains it."""
        self.result.failed.append((run.run_id, message))
        if self.per_run_stores and run.run_id in self.run_dirs:
            self._gather(run)  # train() may have recorded the failure in the per-run store
        if worker_died:
            self._mark(run, "failed", message)
        self.progress.end_run(run, "failed", 0, None)
        self.progress.announce(run, f"failed: {message}")

    def _mark(self, run: PlannedRun, status: str, message: str) -> None:
        """End a run that is still 'running' in the store although its worker is gone; best effort."""
        with suppress(WattscaleError), run_lock(self.run_dirs[run.run_id]):
            record = self.store.get_run(run.run_id)
            if record is None or record["status"] != "running":
                return
            if status == "failed":
                self.store.finish_run(run.run_id, "failed", {"message": message})
            else:
                self.store.update_run(run.run_id, status=status, message=message)

    def _poll(self) -> None:
        """Show the tokens the runs in flight have trained, as of their last checkpoints."""
        if not self.progress.enabled:
            return
        for run in list(self.in_flight.values()):
            tokens = _checkpoint_tokens(self.run_dirs[run.run_id])
            if tokens is not None:
                self.progress.update_tokens(run.run_id, tokens)

    def _abandon(self) -> None:
        """Stop the tasks in flight, gather what they wrote and mark their runs interrupted (best effort)."""
        refs = list(self.in_flight)
        for ref in refs:
            with suppress(Exception):
                self.ray.cancel(ref, force=True)
        with suppress(Exception):
            self.ray.wait(refs, num_returns=len(refs), timeout=10)
        for run in self.in_flight.values():
            if self.per_run_stores:
                self._gather(run)
            self._mark(run, "interrupted", "interrupted; run the sweep again to resume")
