"""The live view: what is running in a store, polled read-only (``wattscale watch``).

The trainer writes steps, evaluations and power samples in batches at evaluations and
checkpoints, so every "current" figure here is the latest one written, not this second's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from wattscale.analysis.study.data import condition_of
from wattscale.errors import ConfigError
from wattscale.interrupts import raise_if_interrupted
from wattscale.report.queries import interval_energy, latest_evaluation, latest_power, latest_train_step
from wattscale.store import Store, open_store
from wattscale.store_schema import FINAL_STATUSES


def watch_snapshot(store: Store, experiment: str | None = None) -> dict[str, Any]:
    """What is running now (as far as the store has been written), as a JSON-ready dict.

    Keys: experiment, store, time (UTC), runs_total (planned runs of the experiment, else runs in
    the store), runs_done (finished, diverged or failed), runs_finished, runs_running, running:
    one dict per running run with run_id, name, condition, preset, tokens_seen, tokens_budget,
    progress (0..1), step, train_loss, val_loss, val_tokens, power_w (device -> latest W),
    power_total_w, power_t_seconds, energy_j (sum of interval rows so far), energy_sources.
    """
    runs = store.list_runs(experiment=experiment)
    planned = None
    if experiment is not None:
        if store.get_experiment(experiment) is not None:
            planned = len(store.experiment_runs(experiment))
        elif not runs:
            raise ConfigError(f"--experiment: no experiment {experiment!r} in {store.display_url}; "
                              "see `wattscale experiments`")
    running = [_running_row(store, run) for run in runs if run["status"] == "running"]
    return {
        "experiment": experiment, "store": store.display_url,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs_total": planned if planned is not None else len(runs),
        "runs_done": sum(r["status"] in FINAL_STATUSES for r in runs),
        "runs_finished": sum(r["status"] == "finished" for r in runs),
        "runs_running": len(running), "running": running,
    }


def _running_row(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    step = latest_train_step(store, run["run_id"]) or {}
    evaluation = latest_evaluation(store, run["run_id"]) or {}
    power = latest_power(store, run["run_id"])
    energy = interval_energy(store, run["run_id"])
    tokens = max(run.get("tokens_seen") or 0, step.get("tokens_seen") or 0)
    budget = run.get("tokens_budget") or 0
    return {
        "run_id": run["run_id"], "name": run.get("name"), "condition": condition_of(run), "preset": run["preset"],
        "tokens_seen": tokens, "tokens_budget": budget, "progress": min(tokens / budget, 1.0) if budget else None,
        "step": step.get("step"), "train_loss": step.get("loss"), "val_loss": evaluation.get("val_loss"),
        "val_tokens": evaluation.get("tokens_seen"),
        "power_w": {device: p["power_w"] for device, p in power.items()},
        "power_total_w": sum(p["power_w"] for p in power.values()) if power else None,
        "power_t_seconds": max((p["t_seconds"] for p in power.values()), default=None),
        "energy_j": energy["energy_j"], "energy_sources": energy["sources"],
    }


def render_snapshot(snapshot: dict[str, Any]) -> RenderableType:
    """A rich renderable of a snapshot: a header line and one table row per running run."""
    scope = f"experiment {snapshot['experiment']}" if snapshot["experiment"] else "all runs"
    header = Text(f"wattscale watch: {scope} in {snapshot['store']} at {snapshot['time']}  |  "
                  f"{snapshot['runs_done']}/{snapshot['runs_total']} runs done "
                  f"({snapshot['runs_finished']} finished), {snapshot['runs_running']} running")
    if not snapshot["running"]:
        return Group(header, Text("nothing is running", style="dim"))
    table = Table(caption="latest values written to the store (the trainer writes at evaluations and checkpoints)",
                  caption_justify="left")
    for column, justify in (("run", "left"), ("condition", "left"), ("progress", "left"), ("tokens", "right"),
                            ("train loss", "right"), ("val loss", "right"), ("power (W)", "right"),
                            ("energy (J)", "right")):
        table.add_column(column, justify=justify)
    for row in snapshot["running"]:
        name = f"{row['run_id']}" + (f" {row['name']}" if row["name"] else "")
        progress = row["progress"]
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=progress or 0.0, width=16),
                    Text("–" if progress is None else f"{progress:.1%}"))
        power = "–" if row["power_total_w"] is None else (
            f"{row['power_total_w']:,.1f}" + (f" @ {row['power_t_seconds']:,.0f} s" if row["power_t_seconds"] else ""))
        energy = "–" if row["energy_j"] is None else f"{row['energy_j']:,.1f} ({', '.join(row['energy_sources'])})"
        # Text() never interprets rich markup, so a run named "[red]x" shows as typed.
        table.add_row(Text(name), Text(row["condition"]), bar,
                      Text(f"{row['tokens_seen']:,}/{row['tokens_budget']:,}"), Text(_num(row["train_loss"])),
                      Text(_num(row["val_loss"])), Text(power), Text(energy))
    return Group(header, table)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def watch(store_url: str, experiment: str | None = None, interval_s: float = 2.0, grace_s: float = 10.0,
          console: Console | None = None) -> None:
    """Redraw the snapshot every ``interval_s`` until nothing has been running for ``grace_s`` seconds.

    The grace period covers the moment between two runs of a sweep, when none is running yet.
    """
    from rich.live import Live

    if interval_s <= 0:
        raise ConfigError(f"--interval-s: must be positive, got {interval_s}")
    console = console or Console()
    with open_store(store_url, create=False) as store:
        snapshot = watch_snapshot(store, experiment)
        idle_since: float | None = None
        with Live(render_snapshot(snapshot), console=console, auto_refresh=False) as live:
            while True:
                if snapshot["running"]:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                if idle_since is not None and time.monotonic() - idle_since >= grace_s:
                    return
                time.sleep(interval_s)
                raise_if_interrupted()  # a Ctrl-C the garbage collector swallowed (wattscale.interrupts)
                snapshot = watch_snapshot(store, experiment)
                live.update(render_snapshot(snapshot), refresh=True)
