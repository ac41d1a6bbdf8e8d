"""The PNG figures of a study export, drawn from the exported rows only (matplotlib, Agg backend).

- ``val_loss.png``: validation loss against tokens seen, one line per run, coloured by condition (by seed
  in a study of one condition).
- ``train_loss.png``: training loss against tokens seen, one line per run, each point the mean of a window of
  steps (a fiftieth of the run's steps; 1 for runs of under 100 steps), so a spike or a setback shows where a
  study evaluates rarely.
- ``final_loss_energy.png``: each finished run's final validation loss and training-phase energy against its
  tokens seen (log axes), coloured by condition; the energy axis names the runs' energy source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_LEGEND = 12  # conditions named in a legend; more are coloured without one
TRAIN_LOSS_WINDOWS = 50  # points per run in train_loss.png (each the mean of its window of steps)


def _conditions(plan: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """run_id -> line label: the plan's condition (else the run's preset); by seed when all share one condition."""
    labels = {row["run_id"]: row["condition"] for row in plan}
    condition = {r["run_id"]: labels.get(r["run_id"]) or str(r.get("preset")) for r in runs}
    seeds = [r.get("seed") for r in runs]
    if len(set(condition.values())) == 1 and None not in seeds and len(set(seeds)) == len(runs) > 1:
        return {r["run_id"]: f"seed {r['seed']}" for r in runs}  # one condition, many seeds: tell the seeds apart
    return condition


def _colours(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    names = sorted(set(labels))
    if len(names) <= 10:  # distinct hues that all read on white (viridis ends in a pale yellow)
        cmap = matplotlib.colormaps["tab10"]
        return {name: cmap(i) for i, name in enumerate(names)}
    cmap = matplotlib.colormaps["viridis"]
    return {name: cmap(i / max(1, len(names) - 1)) for i, name in enumerate(names)}


def _legend(ax: Any, colours: dict[str, Any]) -> None:
    if len(colours) <= MAX_LEGEND:
        ax.legend(fontsize=7, loc="best")


def write_figures(folder: Path, rows: dict[str, list[dict[str, Any]]], title: str) -> list[Path]:
    """Draw the study's figures into ``folder``; return their paths (none when no run finished)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in rows["runs"] if r["status"] == "finished"]
    if not finished:
        return []
    condition = _conditions(rows["experiment_runs"], finished)
    colours = _colours(list(condition.values()))
    evals: dict[str, list[dict[str, Any]]] = {}
    for row in rows["evaluations"]:
        if row["val_loss"] is not None:
            evals.setdefault(row["run_id"], []).append(row)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown: set[str] = set()
    for run in finished:
        points = evals.get(run["run_id"], [])
        if not points:
            continue
        label = condition[run["run_id"]]
        ax.plot([p["tokens_seen"] for p in points], [p["val_loss"] for p in points], marker="." if len(points) < 3
                else None, lw=1, color=colours[label], label=None if label in shown else label, alpha=0.8)
        shown.add(label)
    ax.set(xlabel="tokens seen", ylabel="validation loss (nats/token)", title=f"{title}: validation loss")
    _legend(ax, colours)
    fig.tight_layout()
    written.append(_save(fig, folder / "val_loss.png"))

    steps: dict[str, list[tuple[int, float]]] = {}
    for row in rows["train_steps"]:
        if row["loss"] is not None and math.isfinite(row["loss"]):
            steps.setdefault(row["run_id"], []).append((row["tokens_seen"], row["loss"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = set()
    for run in finished:
        points = sorted(steps.get(run["run_id"], []))
        if not points:
            continue
        window = max(1, len(points) // TRAIN_LOSS_WINDOWS)
        means = [(points[i + window - 1][0], sum(loss for _, loss in points[i:i + window]) / window)
                 for i in range(0, len(points) - window + 1, window)]
        label = condition[run["run_id"]]
        ax.plot([t for t, _ in means], [m for _, m in means], lw=1, color=colours[label],
                label=None if label in shown else label, alpha=0.8)
        shown.add(label)
    ax.set(xlabel="tokens seen", ylabel="training loss (nats/token)",
           title=f"{title}: training loss, means of 1/{TRAIN_LOSS_WINDOWS} of each run's steps")
    _legend(ax, colours)
    fig.tight_layout()
    written.append(_save(fig, folder / "train_loss.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    sources = sorted({str(r.get("energy_source")) for r in finished if r.get("train_energy_j") is not None})
    shown = set()
    for run in finished:
        label = condition[run["run_id"]]
        kwargs = {"color": colours[label], "s": 14, "label": None if label in shown else label}
        shown.add(label)
        if run.get("final_val_loss") is not None:
            left.scatter(run["tokens_seen"], run["final_val_loss"], **kwargs)
        if run.get("train_energy_j") is not None:
            right.scatter(run["tokens_seen"], run["train_energy_j"], **{**kwargs, "label": None})
    left.set(xscale="log", xlabel="tokens seen", ylabel="final validation loss (nats/token)", title="final loss")
    right.set(xscale="log", yscale="log", xlabel="tokens seen",
              ylabel=f"training-phase energy (J, {', '.join(sources) or 'none recorded'})", title="energy")
    _legend(left, colours)
    fig.suptitle(title)
    fig.tight_layout()
    written.append(_save(fig, folder / "final_loss_energy.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version string: re-exports differ only by data
    plt.close(fig)
    return path
