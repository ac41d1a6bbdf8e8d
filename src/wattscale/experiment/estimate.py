"""Time, energy, CO2e and cost a planned run will take, with the basis of each estimate and its uncertainty.

The basis, first that applies:

(a) ``done``: the run already finished (or diverged) in the store: nothing remains.
(b) matching finished runs: the median seconds and joules per token of finished runs that match the planned
    one as closely as the store allows: the same preset, batch, sequence length and device type; failing
    that the same preset and device type. Uncertainty: the matched runs' relative range of seconds per token,
    at least ``U_RUNS_FLOOR`` (``U_ONE_RUN`` when one run matched).
    Every uncertainty ``u`` is a factor: the true figure is expected within estimate / (1 + u) to estimate x (1 + u).
(c) calibration (`wattscale calibrate`) of the same device type and precision, preferably on this host: see
    `wattscale.experiment.calibrated` (same preset -> its tokens/s; other presets -> scaled by FLOPs).
(d) none: no estimate, and the reason (never a guess).

An interrupted run only needs its remaining tokens. Every estimate with energy also gets its facility
energy, CO2e and cost from `wattscale.footprint` (flags, environment, the experiment file's table).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from wattscale.config import RunConfig
from wattscale.footprint import Footprint, FootprintSettings, footprint_of
from wattscale.hardware import resolve_device
from wattscale.model import flops_per_token

from .calibrated import choose_points, estimate_from_calibration
from .plan import ExperimentPlan, PlannedRun

U_RUNS_FLOOR = 0.10
U_ONE_RUN = 0.20


@dataclass(frozen=True)
class RunEstimate:
    """The expected remaining time and energy of one planned run, and what they rest on."""

    run_id: str
    status: str | None  # in the store, None if it never started
    seconds: float | None  # remaining
    joules: float | None  # remaining
    energy_source: str | None  # of the runs or calibrations the energy estimate rests on
    basis: str  # "done" | "finished runs: ..." | "calibration: ..." | "none: <why>"
    uncertainty: float | None = None  # relative: 0.5 means from estimate / 1.5 to estimate x 1.5
    tokens: int = 0  # remaining training tokens
    flops: float | None = None  # remaining training FLOPs (tokens x FLOPs per token)
    footprint: Footprint | None = None  # of `joules`: facility energy, CO2e, cost
    parts_seconds: dict[str, float] = field(default_factory=dict)  # calibration basis: train, eval, ...
    calibrated_on: str | None = None  # calibration basis: the host, device and precision, e.g. "vm, AMD EPYC, fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the range: estimate / (1 + uncertainty) to estimate x (1 + uncertainty)."""
        low = lambda v: None if v is None or self.uncertainty is None else v / (1 + self.uncertainty)  # noqa: E731
        high = lambda v: None if v is None or self.uncertainty is None else v * (1 + self.uncertainty)  # noqa: E731
        fp = self.footprint
        return {"run_id": self.run_id, "status": self.status, "tokens": self.tokens, "flops": self.flops,
                "seconds": self.seconds, "seconds_low": low(self.seconds), "seconds_high": high(self.seconds),
                "energy_j": self.joules, "energy_j_low": low(self.joules), "energy_j_high": high(self.joules),
                "energy_source": self.energy_source, "basis": self.basis, "uncertainty": self.uncertainty,
                "co2e_g": fp.co2e_g if fp else None, "cost": fp.cost if fp else None,
                "currency": fp.currency if fp else None, "facility_energy_j": fp.facility_energy_j if fp else None,
                "footprint_inputs": fp.inputs if fp else None, "parts_seconds": self.parts_seconds,
                "calibrated_on": self.calibrated_on}


@dataclass(frozen=True)
class EstimateInputs:
    """What estimates rest on: the store's runs and calibrations, and the footprint settings."""

    stored_runs: list[dict] = field(default_factory=list)  # Store.list_runs()
    calibrations: list[dict] = field(default_factory=list)  # Store.list_calibrations()
    footprint: FootprintSettings = field(default_factory=FootprintSettings)
    hostname: str | None = None  # default: this host


def estimate_plan(plan: ExperimentPlan, inputs: EstimateInputs | list[dict]) -> list[RunEstimate]:
    """One estimate per planned run, in plan order (a bare list is `stored_runs`, as before calibrations)."""
    if isinstance(inputs, list):
        inputs = EstimateInputs(stored_runs=inputs)
    rates = _finished_rates(inputs.stored_runs)
    by_id = {row["run_id"]: row for row in inputs.stored_runs}
    points_cache: dict[tuple[str, str], tuple] = {}
    return [_estimate(run.config, run.run_id, _stored_row(run, by_id), rates, inputs, points_cache)
            for run in plan.runs]


def _stored_row(run: PlannedRun, by_id: dict[str, dict]) -> dict | None:
    """The run's stored row, found under an id an earlier version gave it too (renamed when it next runs)."""
    for run_id in (run.run_id, *run.earlier_run_ids):
        if run_id in by_id:
            return by_id[run_id]
    return None


def estimate_run(config: RunConfig, run_id: str, inputs: EstimateInputs) -> RunEstimate:
    """The estimate of one run (``wattscale train --dry-run``)."""
    stored = next((r for r in inputs.stored_runs if r["run_id"] == run_id), None)
    return _estimate(config, run_id, stored, _finished_rates(inputs.stored_runs), inputs, {})


def device_and_precision(config: RunConfig) -> tuple[str, str]:
    """The device type and resolved precision a run will use (a CUDA study can be planned without a GPU)."""
    setting = config.train.device
    device_type = resolve_device(setting).type if setting == "auto" else setting.split(":")[0]
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    return device_type, precision


def _match_keys(preset: str, batch_size: int, seq_len: int, device_type: str) -> tuple[tuple, ...]:
    return ((preset, batch_size, seq_len, device_type), (preset, device_type))


_BASES = ("finished runs: same preset, batch, seq_len, device", "finished runs: same preset, device")


def _finished_rates(stored_runs: list[dict]) -> dict[tuple, list[tuple[float, float | None, str | None]]]:
    rates: dict[tuple, list[tuple[float, float | None, str | None]]] = {}
    for row in stored_runs:
        if row["status"] != "finished" or not row["tokens_seen"] or not row["wall_seconds"] or not row["preset"]:
            continue
        config = json.loads(row["config_json"])
        if "train" not in config:  # a measured run (wattscale.Monitor) has no trainer settings
            continue
        device_type = (row.get("device") or "cpu").split(":")[0]
        seq_len = config["train"].get("seq_len") or config["model"]["context_length"]
        per_token = (row["wall_seconds"] / row["tokens_seen"],
                     row["energy_j"] / row["tokens_seen"] if row["energy_j"] else None, row["energy_source"])
        for key in _match_keys(row["preset"], config["train"]["batch_size"], seq_len, device_type):
            rates.setdefault(key, []).append(per_token)
    return rates


def _estimate(config: RunConfig, run_id: str, stored: dict | None, rates: dict, inputs: EstimateInputs,
              points_cache: dict) -> RunEstimate:
    status = stored["status"] if stored else None
    if status in ("finished", "diverged"):
        return RunEstimate(run_id, status, 0.0, 0.0, stored.get("energy_source"), "done", 0.0)
    remaining = config.train.tokens - ((stored or {}).get("tokens_seen") or 0)
    flops = remaining * flops_per_token(config.model, config.seq_len)
    device_type, precision = device_and_precision(config)
    keys = _match_keys(config.model.name, config.train.batch_size, config.seq_len, device_type)
    common = {"tokens": remaining, "flops": flops}
    for key, basis in zip(keys, _BASES, strict=True):
        if key in rates:
            samples = rates[key]
            seconds = statistics.median(s for s, _, _ in samples) * remaining
            energies = [(j, src) for _, j, src in samples if j is not None]
            joules = statistics.median(j for j, _ in energies) * remaining if energies else None
            sources = sorted({src for _, src in energies if src})
            per_token = [s for s, _, _ in samples]
            spread = (max(per_token) - min(per_token)) / statistics.median(per_token)
            uncertainty = max(U_RUNS_FLOOR, spread) if len(samples) > 1 else U_ONE_RUN
            return RunEstimate(run_id, status, seconds, joules, "/".join(sources) or None,
                               f"{basis} ({len(samples)} runs)", uncertainty,
                               footprint=_footprint(joules, sources, inputs.footprint), **common)
    # On CPU the thread count decides the speed: calibrations with the run's count are preferred.
    threads = (config.train.threads or torch.get_num_threads()) if device_type == "cpu" else None
    cache_key = (device_type, precision, threads)
    if cache_key not in points_cache:
        rows = [r for r in inputs.calibrations if r["device_type"] == device_type and r["precision"] == precision]
        points_cache[cache_key] = choose_points(rows, inputs.hostname, threads)
    points, origin = points_cache[cache_key]
    calibrated = estimate_from_calibration(config, remaining, points)
    if calibrated is None:
        why = (f"none: no matching finished run and no calibration for {device_type} {precision}; run `wattscale "
               f"calibrate` on the machine that will train it" + (" (with --device cuda)" if device_type == "cuda"
                                                                  else ""))
        return RunEstimate(run_id, status, None, None, None, why, None, **common)
    return RunEstimate(run_id, status, calibrated.seconds, calibrated.joules, calibrated.energy_source,
                       calibrated.basis, calibrated.uncertainty,
                       footprint=_footprint(calibrated.joules, [calibrated.energy_source], inputs.footprint),
                       parts_seconds=calibrated.parts_seconds, calibrated_on=f"{origin}, {precision}", **common)


def _footprint(joules: float | None, sources: list, settings: FootprintSettings) -> Footprint | None:
    if joules is None:
        return None
    return footprint_of(joules, settings, energy_source="/".join(s for s in sources if s) or None)
