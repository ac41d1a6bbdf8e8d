"""`MlflowTracker`: one MLflow run, written through `mlflow.MlflowClient` in batches.

The tracking URI is always given by the caller: ``sqlite:///mlflow.db`` (recommended), a folder or
``file://`` URI (MLflow's file store, which MLflow 3 keeps in maintenance mode: wattscale opts in to it
for this process, through ``MLFLOW_ALLOW_FILE_STORE``, only when you name a folder), or an
``http(s)://`` tracking server you run. Nothing is read from ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wattscale.trackers.base import (
    DEFAULT_EXPERIMENT,
    TrackerError,
    finite_metrics,
    missing_package,
    param_value,
)

BATCH_METRICS = 1000  # MLflow's log_batch limits
BATCH_PARAMS = 100
# wattscale's run statuses as MLflow's
RUN_STATUS = {"finished": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "interrupted": "KILLED"}
_SERVER_SCHEMES = ("http", "https")
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def resolve_tracking_uri(uri: str) -> tuple[str, str]:
    """(the URI to give MLflow, its kind: ``file``, ``database`` or ``server``); a folder becomes a file:// URI."""
    text = uri.strip()
    scheme = urlparse(text).scheme.lower()
    if scheme in _SERVER_SCHEMES:
        return text, "server"
    if scheme.split("+")[0] in _DATABASE_SCHEMES:
        if scheme == "sqlite":
            path = text[len("sqlite:///"):]
            if path and path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return text, "database"
    if scheme == "file":
        return text, "file"
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive
        raise TrackerError(f"mlflow tracking URI {uri!r}: unknown scheme {scheme!r}; use sqlite:///mlflow.db, a "
                           "folder such as ./mlruns, or http(s)://HOST:PORT of a server you run")
    return Path(text).expanduser().resolve().as_uri(), "file"


@contextmanager
def _quiet_setup() -> Iterator[None]:
    """MLflow's and alembic's INFO lines about creating a new SQLite database's tables, silenced while it does."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class MlflowTracker:
    """Logs to one new MLflow run in `experiment` (created if missing) at `tracking_uri`.

    Args:
        tracking_uri: see the module docstring; required (no default, no environment variable).
        experiment: the MLflow experiment's name.
        run_name: the MLflow run's name (MLflow picks one when None).
        tags: MLflow tags set on the run when it is created.
    """

    def __init__(self, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        try:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException
        except ImportError:
            raise missing_package("mlflow", "mlflow") from None
        self._exception = MlflowException
        self.tracking_uri, self.store_kind = resolve_tracking_uri(tracking_uri)
        if self.store_kind == "file":
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.experiment = experiment
        self._params: dict[str, str] = {}
        self._closed = False
        try:
            with _quiet_setup():
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found is not None else self._create_experiment(experiment)
            run = self.client.create_run(self.experiment_id, run_name=run_name,
                                         tags={str(k): str(v) for k, v in (tags or {}).items()})
        except MlflowException as exc:
            raise self._error("open", exc) from None
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name

    def _create_experiment(self, name: str) -> str:
        try:
            return self.client.create_experiment(name)
        except self._exception:  # created by another process meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _error(self, what: str, exc: Exception) -> TrackerError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrackerError(f"mlflow tracker ({self.tracking_uri}): cannot {what}: {first}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; one already logged with the same value is skipped, with another value refused."""
        from mlflow.entities import Param

        new: dict[str, str] = {}
        for key, value in params.items():
            text = param_value(value)
            if key in self._params:
                if self._params[key] != text:
                    raise TrackerError(f"mlflow tracker: parameter {key!r} was logged as {self._params[key]!r}; "
                                       f"MLflow parameters cannot change (got {text!r}); log it as a metric")
                continue
            new[key] = text
        items = [Param(k, v) for k, v in new.items()]
        for start in range(0, len(items), BATCH_PARAMS):
            self._batch("log parameters", params=items[start:start + BATCH_PARAMS])
        self._params.update(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log metric values at `step` (one timestamp for the call; non-finite values skipped)."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        items = [Metric(k, v, now_ms, int(step)) for k, v in finite_metrics(metrics).items()]
        for start in range(0, len(items), BATCH_METRICS):
            self._batch("log metrics", metrics=items[start:start + BATCH_METRICS])

    def log_metric_series(self, key: str, points: list[tuple[int, float]]) -> None:
        """One metric at many steps (e.g. sampled power), in batches."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        items = [Metric(key, float(v), now_ms, int(s)) for s, v in points if finite_metrics({key: v})]
        for start in range(0, len(items), BATCH_METRICS):
            self._batch("log metrics", metrics=items[start:start + BATCH_METRICS])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set MLflow tags on the run (values as strings)."""
        from mlflow.entities import RunTag

        self._batch("set tags", tags=[RunTag(str(k), param_value(v)) for k, v in tags.items()])

    def _batch(self, what: str, **items: Any) -> None:
        try:
            self.client.log_batch(self.run_id, **items)
        except self._exception as exc:
            raise self._error(what, exc) from None

    def close(self, status: str = "finished") -> None:
        """End the MLflow run with wattscale's `status` (finished, failed, diverged, interrupted)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.client.set_terminated(self.run_id, RUN_STATUS.get(status, "FINISHED"))
        except self._exception as exc:
            raise self._error("end the run", exc) from None

    def describe(self) -> dict[str, Any]:
        """Where the run went, JSON-ready."""
        return {"kind": "mlflow", "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                "experiment_id": self.experiment_id, "run_id": self.run_id, "run_name": self.run_name}
