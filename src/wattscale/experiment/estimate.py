"""Time and energy a planned run will take, from matching finished runs in the store.

A planned run already finished reports what it took. Otherwise the rate (seconds and joules per
token) is the median over finished runs that match it as closely as the store allows: the same
preset, batch, sequence length and device type; failing that the same preset and device type.
An interrupted run only needs its remaining tokens. No match: no estimate (never a guess).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from wattscale.hardware import resolve_device

from .plan import ExperimentPlan, PlannedRun


@dataclass(frozen=True)
class RunEstimate:
    """The expected remaining time and energy of one planned run, and what they rest on."""

    run_id: str
    status: str | None  # in the store, None if it never started
    seconds: float | None  # remaining
    joules: float | None  # remaining
    energy_source: str | None  # of the runs the energy estimate rests on
    basis: str  # "done" | "same preset, batch, seq_len, device" | "same preset, device" | "no matching finished run"


def _match_keys(preset: str, batch_size: int, seq_len: int, device_type: str) -> tuple[tuple, ...]:
    return ((preset, batch_size, seq_len, device_type), (preset, device_type))


_BASES = ("same preset, batch, seq_len, device", "same preset, device")


def estimate_plan(plan: ExperimentPlan, stored_runs: list[dict]) -> list[RunEstimate]:
    """One estimate per planned run, in plan order; `stored_runs` from `Store.list_runs()`."""
    by_id = {row["run_id"]: row for row in stored_runs}
    rates: dict[tuple, list[tuple[float, float | None, str | None]]] = {}
    for row in stored_runs:
        if row["status"] != "finished" or not row["tokens_seen"] or not row["wall_seconds"]:
            continue
        config = json.loads(row["config_json"])
        device_type = (row.get("device") or "cpu").split(":")[0]
        seq_len = config["train"].get("seq_len") or config["model"]["context_length"]
        per_token = (row["wall_seconds"] / row["tokens_seen"],
                     row["energy_j"] / row["tokens_seen"] if row["energy_j"] else None, row["energy_source"])
        for key in _match_keys(row["preset"], config["train"]["batch_size"], seq_len, device_type):
            rates.setdefault(key, []).append(per_token)
    return [_estimate(run, by_id.get(run.run_id), rates) for run in plan.runs]


def _estimate(run: PlannedRun, stored: dict | None, rates: dict) -> RunEstimate:
    status = stored["status"] if stored else None
    if status in ("finished", "diverged"):
        return RunEstimate(run.run_id, status, 0.0, 0.0, stored.get("energy_source"), "done")
    remaining = run.tokens - ((stored or {}).get("tokens_seen") or 0)
    setting = run.config.train.device  # a CUDA study can be planned on a machine without a GPU
    device_type = resolve_device(setting).type if setting == "auto" else setting.split(":")[0]
    keys = _match_keys(run.config.model.name, run.config.train.batch_size, run.config.seq_len, device_type)
    for key, basis in zip(keys, _BASES, strict=True):
        if key in rates:
            samples = rates[key]
            seconds = statistics.median(s for s, _, _ in samples) * remaining
            energies = [(j, src) for _, j, src in samples if j is not None]
            joules = statistics.median(j for j, _ in energies) * remaining if energies else None
            sources = sorted({src for _, src in energies if src})
            return RunEstimate(run.run_id, status, seconds, joules, "/".join(sources) or None,
                               f"{basis} ({len(samples)} runs)")
    return RunEstimate(run.run_id, status, None, None, None, "no matching finished run")
