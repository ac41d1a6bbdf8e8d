"""`Monitor(store=...)`: a measurement recorded as a run of kind ``measured``.

The run is created when the Monitor starts (status ``running``, its name, command line, settings and
machine), its power samples are written while it runs, and it ends with the status of the measured code
(``finished``, ``failed``, ``interrupted``), its rows by phase and device, and its energy fields, in the
same shapes as a trained run's (see `wattscale.energy.store_rows`), so ``wattscale runs``, ``energy``,
``analyze`` and ``report`` show it like one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wattscale import __version__
from wattscale.cpu_info import cpu_model_name
from wattscale.energy.result import MonitorResult
from wattscale.energy.store_rows import final_rows, idle_rows, run_fields, window_rows

if TYPE_CHECKING:
    from wattscale.energy.monitor import Monitor
    from wattscale.store import Store

# Facts a user may give in Monitor(metadata=...) that have a runs column of their own.
_METADATA_COLUMNS = {"model": "preset", "seed": "seed", "params": "params_total",
                     "flops_per_token": "flops_per_token", "experiment": "experiment",
                     "command_line": "command_line"}  # wattscale measure: the measured command's, not wattscale's


class MeasuredRun:
    """The store side of one Monitor: creates the run, writes samples, finishes it."""

    def __init__(self, store: Store, owned: bool, run_id: str, monitor: Monitor | None = None) -> None:
        self.store, self.owned, self.run_id = store, owned, run_id
        self._monitor = monitor
        self._config_json = _settings_json(monitor) if monitor is not None else None

    @classmethod
    def begin(cls, target: Any, monitor: Monitor) -> MeasuredRun:
        """Open the store (a Store, or a path/URL opened here) and create the run."""
        from wattscale.store import Store, open_store

        store, owned = (target, False) if isinstance(target, Store) else (open_store(target), True)
        try:
            store.create_run(_record(monitor))
        except BaseException:
            if owned:
                store.close()
            raise
        return cls(store, owned, monitor.run_id, monitor)

    def write_samples(self, rows: list[dict]) -> None:
        """Power samples (called from the Monitor's writer thread)."""
        self.store.add_power_samples(self.run_id, rows)

    def finish(self, result: MonitorResult, job_end_s: float, message: str | None) -> None:
        """Write the rows and end the run with the result's status."""
        try:
            rows = idle_rows(result) + final_rows(result, 0.0, job_end_s, result.job.tokens)
            rows += [r for w in result.windows.values() for r in window_rows(w, result.devices, scope="window")]
            self.store.add_energy_measurements(self.run_id, rows)
            if self._monitor is not None and _settings_json(self._monitor) != self._config_json:
                # metadata added while it ran (an exit status); config_hash stays the settings' at the start
                self.store.update_run(self.run_id, config_json=_settings_json(self._monitor))
            fields = run_fields(result)
            notes = "; ".join(m for m in (message, fields.pop("message", None)) if m)
            self.store.finish_run(self.run_id, result.status, {
                **fields, "tokens_seen": result.job.tokens, "steps": result.job.steps,
                "wall_seconds": job_end_s, "finished_at": datetime.now(UTC), "message": notes or None})
        finally:
            if self.owned:
                self.store.close()


def _record(monitor: Monitor) -> dict[str, Any]:
    """The runs row of a new measured run."""
    from wattscale.energy.monitor import command_line

    config_json = _settings_json(monitor)
    now = datetime.now(UTC)
    torch = sys.modules.get("torch")
    gpus = [{"device": d.device, "uuid": d.uuid} for d in monitor.devices.values() if d.component == "gpu"]
    record: dict[str, Any] = {
        "run_id": monitor.run_id, "kind": "measured", "name": monitor.name, "status": "running",
        "config_json": config_json, "config_hash": hashlib.sha256(config_json.encode()).hexdigest(),
        "created_at": now, "started_at": now, "command_line": command_line(),
        "device": "gpu" if gpus else "cpu",
        "device_info_json": json.dumps({"platform": platform.platform(), "python": platform.python_version(),
                                        "cpu": cpu_model_name(), "gpus": gpus,
                                        "torch": getattr(torch, "__version__", None)}),
        "torch_version": getattr(torch, "__version__", None), "wattscale_version": __version__,
    }
    for key, column in _METADATA_COLUMNS.items():
        if monitor.metadata.get(key) is not None:
            record[column] = monitor.metadata[key]
    return record


def _settings_json(monitor: Monitor) -> str:
    """The runs.config_json of a measured run: meter settings, GPU selection, metadata."""
    settings = {"meter": dataclasses.asdict(monitor.config), "gpus": monitor.gpus
                if isinstance(monitor.gpus, str) else list(monitor.gpus), "metadata": monitor.metadata}
    return json.dumps(settings, sort_keys=True, default=str)

