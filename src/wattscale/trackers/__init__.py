"""Experiment trackers: wattscale's energy figures in MLflow and TensorBoard, live or from the store.

- `tracker_from_spec` / `open_trackers`: ``mlflow:URI[#EXPERIMENT]`` and ``tensorboard:DIR`` specs
  (see `wattscale.trackers.base`);
- `MonitorFeed`: feed trackers from a running `wattscale.Monitor` (the trainer's ``--track`` uses it);
- `replay_run` / `export_runs`: log a stored run (``wattscale export --to mlflow|tensorboard``).

Metric names carry their units; see `wattscale.trackers.metrics` for the list and their steps.
The MLflow and TensorBoard classes import their packages only when made (extras ``mlflow`` and
``tensorboard``).
"""

from wattscale.trackers.base import (
    Tracker,
    TrackerError,
    TrackerSpec,
    close_all,
    open_trackers,
    parse_spec,
    tracker_from_spec,
)
from wattscale.trackers.live import MonitorFeed
from wattscale.trackers.replay import ReplaySummary, export_runs, replay_run

__all__ = ["MonitorFeed", "ReplaySummary", "Tracker", "TrackerError", "TrackerSpec", "close_all", "export_runs",
           "open_trackers", "parse_spec", "replay_run", "tracker_from_spec"]
