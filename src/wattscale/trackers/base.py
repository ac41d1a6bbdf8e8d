"""The tracker protocol (what MLflow and TensorBoard writers share) and the spec strings that name them.

A tracker receives parameters once and metrics at integer steps::

    tracker = tracker_from_spec("mlflow:sqlite:///mlflow.db", run_name="llama-4m seed 0")
    tracker.log_params({"preset": "llama-4m", "energy_source/job": "counter"})
    tracker.log_metrics({"energy_j/train": 812.5, "val_loss": 3.21}, step=65_536)
    tracker.close()

Spec strings (``--track SPEC``, ``train.track``):

- ``mlflow:URI``: an MLflow tracking URI: ``sqlite:///path.db`` (recommended), a folder such as
  ``./mlruns`` or ``file:///abs/mlruns`` (MLflow's file store), or an ``http(s)://`` server you name
  yourself. There is no default URI: wattscale never reads ``MLFLOW_TRACKING_URI`` and never calls a
  server you did not name. ``mlflow:URI#EXPERIMENT`` picks the MLflow experiment (default ``wattscale``).
- ``tensorboard:DIR``: TensorBoard event files under ``DIR`` (one sub-folder per run).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from wattscale.errors import WattscaleError

TRACKER_KINDS = ("mlflow", "tensorboard")
DEFAULT_EXPERIMENT = "wattscale"
MAX_PARAM_CHARS = 500  # longer values are cut (MLflow's limit is 6000; a param is a label, not a file)


class TrackerError(WattscaleError):
    """A tracker spec that cannot be used, a tracker package that is missing, or a tracker that failed."""


@runtime_checkable
class Tracker(Protocol):
    """What wattscale logs to: parameters once, metrics at integer steps, then close."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record facts about the run (strings, numbers; nested values as JSON)."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at `step` (non-finite values are skipped)."""
        ...

    def close(self) -> None:
        """Flush and release (safe to call twice)."""
        ...


@dataclass(frozen=True)
class TrackerSpec:
    """A parsed ``KIND:TARGET`` spec (``experiment`` only for MLflow)."""

    kind: str
    target: str
    experiment: str = DEFAULT_EXPERIMENT

    def __str__(self) -> str:
        if self.kind == "mlflow" and self.experiment != DEFAULT_EXPERIMENT:
            return f"{self.kind}:{self.target}#{self.experiment}"
        return f"{self.kind}:{self.target}"


def parse_spec(spec: str, where: str = "--track") -> TrackerSpec:
    """``mlflow:URI[#EXPERIMENT]`` or ``tensorboard:DIR`` as a TrackerSpec; TrackerError names `where` and the fix."""
    kind, sep, target = str(spec).partition(":")
    kind = kind.strip().lower()
    example = "e.g. mlflow:sqlite:///mlflow.db or tensorboard:./tb"
    if not sep or kind not in TRACKER_KINDS:
        raise TrackerError(f"{where}: {spec!r} is not a tracker spec; use KIND:TARGET with KIND one of "
                           f"{', '.join(TRACKER_KINDS)}, {example}")
    experiment = DEFAULT_EXPERIMENT
    if kind == "mlflow" and "#" in target:
        target, _, experiment = target.rpartition("#")
        if not experiment.strip():
            raise TrackerError(f"{where}: {spec!r} names an empty MLflow experiment after '#'; drop the '#' or "
                               "name one, e.g. mlflow:sqlite:///mlflow.db#my-study")
    if not target.strip():
        what = "a tracking URI" if kind == "mlflow" else "a folder for the event files"
        raise TrackerError(f"{where}: {spec!r} gives no target; {kind} needs {what}, {example}")
    return TrackerSpec(kind, target.strip(), experiment.strip())


def parse_specs(specs: Iterable[str], where: str = "--track") -> list[TrackerSpec]:
    """Every spec parsed (the first bad one raises)."""
    return [parse_spec(s, where) for s in specs]


def tracker_from_spec(spec: str | TrackerSpec, *, run_name: str | None = None, where: str = "--track") -> Tracker:
    """Open the tracker a spec names; `run_name` labels the run (an MLflow run name, a TensorBoard sub-folder)."""
    parsed = spec if isinstance(spec, TrackerSpec) else parse_spec(spec, where)
    if parsed.kind == "mlflow":
        from wattscale.trackers.mlflow import MlflowTracker

        return MlflowTracker(parsed.target, experiment=parsed.experiment, run_name=run_name)
    from wattscale.trackers.tensorboard import TensorBoardTracker

    return TensorBoardTracker(parsed.target, run_name=run_name)


def open_trackers(specs: Sequence[str | TrackerSpec], *, run_name: str | None = None,
                  where: str = "--track") -> list[Tracker]:
    """Trackers for every spec; if one fails to open, the ones already open are closed and the error raised."""
    opened: list[Tracker] = []
    try:
        for spec in specs:
            opened.append(tracker_from_spec(spec, run_name=run_name, where=where))
    except BaseException:
        close_all(opened)
        raise
    return opened


def close_all(trackers: Iterable[Tracker]) -> None:
    """Close every tracker (each one even if an earlier one fails; the first failure is raised after)."""
    first: BaseException | None = None
    for tracker in trackers:
        try:
            tracker.close()
        except Exception as exc:  # noqa: PERF203 - close the rest before reporting
            first = first or exc
    if first is not None:
        raise first


def missing_package(package: str, extra: str) -> TrackerError:
    """The one-line error for a tracker whose package is not installed."""
    return TrackerError(f"{extra} tracker: the {package!r} package is not installed; "
                        f"pip install 'wattscale[{extra}]'")


def param_value(value: Any) -> str:
    """A parameter as a string: scalars as themselves, lists and mappings as compact JSON, cut to MAX_PARAM_CHARS."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"train": {"lr": 3e-3}}`` -> ``{"train.lr": 3e-3}``)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = value
    return out


def finite_metrics(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The metrics that are real finite numbers, as floats (None and NaN are not logged, never as zero)."""
    out = {}
    for key, value in metrics.items():
        if value is None or isinstance(value, bool):
            continue
        number = float(value)
        if math.isfinite(number):
            out[key] = number
    return out


def close_tracker(tracker: Tracker, status: str = "finished") -> None:
    """Close a tracker, telling it the run's status when its close() takes one (MLflow's run status)."""
    try:
        takes_status = len(inspect.signature(tracker.close).parameters) > 0
    except (TypeError, ValueError):
        takes_status = False
    if takes_status:
        close = tracker.close
        close(status)
    else:
        tracker.close()


def log_series(tracker: Tracker, key: str, points: Sequence[tuple[int, float]]) -> None:
    """One metric at many steps: in batches where the tracker can, else one log_metrics call per point."""
    series = getattr(tracker, "log_metric_series", None)
    if series is not None:
        series(key, list(points))
        return
    for step, value in points:
        tracker.log_metrics({key: value}, step)
