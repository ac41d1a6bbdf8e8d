"""`TensorBoardTracker`: TensorBoard event files written by `torch.utils.tensorboard.SummaryWriter`.

Metrics become scalars (tag = metric name, step = the step given); parameters become one text summary
``params`` (a Markdown table of name and value) so that TensorBoard's Text tab shows them beside the
curves. Each run writes into its own sub-folder of the log directory, so ``tensorboard --logdir DIR``
compares runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wattscale.trackers.base import finite_metrics, missing_package, param_value

PARAMS_TAG = "params"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_folder_name(run_name: str | None) -> str | None:
    """A run name as a safe folder name (None stays None: the log directory itself)."""
    if run_name is None:
        return None
    return _UNSAFE.sub("_", run_name).strip("._") or "run"


class TensorBoardTracker:
    """Writes event files under ``log_dir`` (in ``log_dir/<run_name>`` when a run name is given)."""

    def __init__(self, log_dir: str | Path, run_name: str | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_package("tensorboard", "tensorboard") from None
        folder = run_folder_name(run_name)
        self.log_dir = Path(log_dir).expanduser() / folder if folder else Path(log_dir).expanduser()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._params: dict[str, str] = {}
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Add the parameters to the ``params`` text summary (written again in full with each call)."""
        self._params.update({k: param_value(v) for k, v in params.items()})
        rows = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in sorted(self._params.items()))
        self.writer.add_text(PARAMS_TAG, "| name | value |\n|---|---|\n" + rows, global_step=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per metric at `step` (non-finite values skipped)."""
        for key, value in finite_metrics(metrics).items():
            self.writer.add_scalar(key, value, global_step=int(step))

    def log_metric_series(self, key: str, points: list[tuple[int, float]]) -> None:
        """One metric at many steps."""
        for step, value in points:
            for name, number in finite_metrics({key: value}).items():
                self.writer.add_scalar(name, number, global_step=int(step))

    def close(self, status: str = "finished") -> None:
        """Write the run's status as text and close the event file."""
        if self._closed:
            return
        self._closed = True
        self.writer.add_text("status", status, global_step=0)
        self.writer.close()

    def describe(self) -> dict[str, Any]:
        """Where the events went, JSON-ready."""
        return {"kind": "tensorboard", "log_dir": str(self.log_dir.resolve())}
