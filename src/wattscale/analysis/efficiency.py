"""Efficiency metrics of finished runs, per run and per condition.

Input is a list of run records shaped like ``Store.list_runs()`` (or rows of a ``runs`` export): the
columns used are ``run_id, tokens_seen, energy_j, energy_source, wall_seconds, train_energy_j,
train_seconds, train_tokens, flops_per_token, params_total, final_val_loss, final_val_ppl,
device_info_json, config_json``, plus ``initial_val_ppl`` (an evaluation at 0 tokens) when the caller has
it. Definitions (DESIGN.md, "Efficiency"); energy in joules, kWh = J / 3.6e6, time in seconds.

**Energy basis.** By default (``energy_basis="train"``) the energy, tokens and time of the metrics are the
training phase's: the optimiser steps after the warm-up, without the idle baseline, evaluations,
checkpoints or the final save (``train_energy_j``, ``train_tokens``, ``train_seconds``). With ``"job"`` they
are the whole job's (``energy_j``, ``tokens_seen``, ``wall_seconds``). A run without training-phase energy
(stored before phases were measured) uses the job figures, and ``energy_basis`` on its result says so.
``job_energy_j`` and ``job_joules_per_token`` always give the whole job, beside the basis figures.

- ``tokens_per_joule`` = tokens / energy_j; ``joules_per_token`` = energy_j / tokens.
- ``train_flops`` = flops_per_token x tokens, with the run's stored FLOPs per token:
  6 * (N_non_embedding + N_output_head) + 12 * n_layers * d_model * T (the output head counted whether tied
  or not; PaLM appendix B; ``wattscale.flops``); ``flops_per_joule`` = train_flops / energy_j.
- ``mfu`` = flops_per_token x train_tokens / train_seconds / peak_flops, on the training phase whatever the
  basis: achieved FLOP/s / (peak FLOP/s per device x devices used). A run without a training phase uses
  the summed time of its optimiser steps (``step_seconds``) when the caller has it, else wall_seconds,
  with tokens_seen. The peak is the run's recorded ``peak_flops``, which already covers all its
  devices (the datasheet figure for the precision in use on CUDA, the measured matmul FLOP/s at run start
  per process on a CPU); a run recorded before ``peak_flops_devices`` existed stored one device's peak, so
  with ``world_size`` > 1 it is multiplied by ``world_size`` and ``peak_flops_source`` says so. A
  ``peak_flops`` given to :func:`run_efficiency` (for all the run's devices) wins.
- ``ppl_gain_per_kwh`` = (initial perplexity - final perplexity) / energy_kwh. The initial perplexity is the
  evaluation at 0 tokens when the run has one (``eval_at_start``), else the vocabulary size (the perplexity
  of a uniform prediction); ``initial_ppl_source`` says which.
- ``pe`` = (1 / final_val_ppl) / params_millions (total parameters).
- ``pee`` = (1 / final_val_ppl) / (params_millions x energy_kwh).
- ``pee_time`` = pee / hours, the basis's hours (the time-aware variant).
- User metrics: any ``name -> function(run record) -> float | None`` passed as ``extra_metrics``.

A metric that cannot be computed for a run (no energy measured, no peak, a zero denominator) is None
with the reason in ``not_computable``: never NaN, never a silent zero. Energy keeps its source
(``counter``, ``integrated``, ``estimated``); a condition whose runs mix sources says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wattscale.confidence import mean_ci
from wattscale.errors import ConfigError
from wattscale.units import JOULES_PER_KWH, SECONDS_PER_HOUR

ENERGY_BASES = ("train", "job")

# (name, unit, higher_is_better) of the built-in metrics, in display order.
BUILTIN_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("tokens_per_joule", "tokens/J", True),
    ("joules_per_token", "J/token", False),
    ("flops_per_joule", "FLOP/J", True),
    ("mfu", "fraction", True),
    ("wall_s", "s", False),
    ("energy_j", "J", False),
    ("energy_kwh", "kWh", False),
    ("job_energy_j", "J", False),
    ("job_joules_per_token", "J/token", False),
    ("ppl_gain_per_kwh", "ppl/kWh", True),
    ("pe", "1/(ppl*Mparams)", True),
    ("pee", "1/(ppl*Mparams*kWh)", True),
    ("pee_time", "1/(ppl*Mparams*kWh*h)", True),
    ("final_val_loss", "nats/token", False),
    ("final_val_ppl", "ppl", False),
)
PERFORMANCE_METRICS = ("final_val_loss", "final_val_ppl")

MetricFn = Callable[[Mapping[str, Any]], "float | None"]


@dataclass(frozen=True)
class RunEfficiency:
    """One run's metrics (None = not computable; the reason is in ``not_computable``)."""

    run_id: str
    metrics: dict[str, float | None]
    energy_source: str | None
    initial_ppl_source: str | None
    peak_flops: float | None
    peak_flops_source: str | None
    not_computable: dict[str, str] = field(default_factory=dict)
    energy_basis: str = "train"  # the basis used: "train", or "job" when asked for or when no phase was recorded

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **self.metrics, "energy_source": self.energy_source,
                "energy_basis": self.energy_basis, "initial_ppl_source": self.initial_ppl_source,
                "peak_flops": self.peak_flops, "peak_flops_source": self.peak_flops_source,
                "not_computable": dict(self.not_computable)}


@dataclass(frozen=True)
class MetricSummary:
    """One metric at one condition: n runs with a value, mean, SD (ddof=1) and a 95% t-interval of the mean."""

    metric: str
    level: Any
    n: int
    mean: float | None
    sd: float | None
    ci95_low: float | None
    ci95_high: float | None
    minimum: float | None
    maximum: float | None
    energy_sources: tuple[str, ...]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "energy_sources": list(self.energy_sources)}


def metric_names(extra_metrics: Mapping[str, MetricFn] | None = None) -> list[str]:
    """The built-in metric names followed by the user's, in display order."""
    names = [name for name, _, _ in BUILTIN_METRICS]
    clash = sorted(set(names) & set(extra_metrics or {}))
    if clash:
        raise ConfigError(f"extra_metrics: {clash} are built-in metric names; choose other names")
    return names + list(extra_metrics or {})


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _json_field(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    raw = record.get(key)
    if isinstance(raw, dict):
        return raw
    if not raw or (isinstance(raw, float) and math.isnan(raw)):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def vocab_size(record: Mapping[str, Any]) -> int | None:
    """The run's model vocabulary size from its resolved config, if recorded."""
    model = _json_field(record, "config_json").get("model", {})
    size = model.get("vocab_size") if isinstance(model, dict) else None
    return int(size) if isinstance(size, int) and size > 0 else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _recorded_peak(info: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """The run's peak FLOP/s over all its devices, and its source, from its device info."""
    peak, source = _number(info.get("peak_flops")), info.get("peak_flops_source")
    world_size = _number(info.get("world_size"))
    if peak is not None and "peak_flops_devices" not in info and world_size is not None and world_size > 1:
        # Recorded before run_peak_flops covered every device: the stored figure is one device's (process's).
        peak *= world_size
        source = (f"{source or 'recorded peak'}; x {world_size:g} processes (the run recorded one device's peak, "
                  "before peak_flops_devices existed)")
    return peak, source


def basis_figures(record: Mapping[str, Any], basis: str) -> tuple[float | None, float | None, float | None, str]:
    """(energy J, tokens, seconds, basis used) of a run on `basis` (see the module docstring)."""
    if basis not in ENERGY_BASES:
        raise ConfigError(f"energy_basis: {basis!r} is not one of {', '.join(ENERGY_BASES)} (train: the training "
                          "phase; job: the whole job)")
    if basis == "train":
        energy, tokens = _number(record.get("train_energy_j")), _number(record.get("train_tokens"))
        if energy is not None and tokens:
            return energy, tokens, _number(record.get("train_seconds")), "train"
    return (_number(record.get("energy_j")), _number(record.get("tokens_seen")), _number(record.get("wall_seconds")),
            "job")


def _mfu_time(record: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(tokens, seconds) of the training phase for MFU; else tokens_seen over the summed step time or wall time."""
    tokens, seconds = _number(record.get("train_tokens")), _number(record.get("train_seconds"))
    if tokens and seconds:
        return tokens, seconds
    return _number(record.get("tokens_seen")), _number(record.get("step_seconds")) or _number(
        record.get("wall_seconds"))


def run_efficiency(record: Mapping[str, Any], extra_metrics: Mapping[str, MetricFn] | None = None,
                   peak_flops: float | None = None, energy_basis: str = "train") -> RunEfficiency:
    """Every efficiency metric of one run record (see the module docstring for the definitions)."""
    why: dict[str, str] = {}
    energy_j, tokens, seconds, basis = basis_figures(record, energy_basis)
    job_energy_j, tokens_seen = _number(record.get("energy_j")), _number(record.get("tokens_seen"))
    wall_s = _number(record.get("wall_seconds"))
    ppl = _number(record.get("final_val_ppl"))
    params = _number(record.get("params_total"))
    fpt = _number(record.get("flops_per_token"))
    if energy_j is None:
        why["energy"] = "no energy measured for this run (metering off or no usable meter)"
    energy_kwh = None if energy_j is None else energy_j / JOULES_PER_KWH
    flops = None if fpt is None or tokens is None else fpt * tokens
    mfu_tokens, mfu_seconds = _mfu_time(record)

    info = _json_field(record, "device_info_json")
    peak, peak_source = ((peak_flops, "given by the user") if peak_flops is not None else _recorded_peak(info))
    if peak is None:
        why["mfu"] = "no peak FLOP/s recorded for this run's device; pass peak_flops (--peak-flops)"
    elif not mfu_seconds:
        why["mfu"] = "no training time recorded"

    initial_ppl = _number(record.get("initial_val_ppl"))
    initial_source = "evaluation at 0 tokens" if initial_ppl is not None else None
    if initial_ppl is None and vocab_size(record) is not None:
        initial_ppl, initial_source = float(vocab_size(record)), "uniform prediction (vocabulary size)"
    if initial_ppl is None:
        why["ppl_gain_per_kwh"] = "no initial perplexity: no evaluation at 0 tokens and no vocabulary size"
    if ppl is None:
        why["perplexity"] = "no finite final validation perplexity"

    params_m = None if params is None else params / 1e6
    hours = None if seconds is None else seconds / SECONDS_PER_HOUR
    inv_ppl = None if ppl is None or ppl == 0 else 1.0 / ppl
    pee = _ratio(inv_ppl, None if params_m is None or energy_kwh is None else params_m * energy_kwh)
    mfu_flops = None if fpt is None or mfu_tokens is None else fpt * mfu_tokens
    metrics: dict[str, float | None] = {
        "tokens_per_joule": _ratio(tokens, energy_j),
        "joules_per_token": _ratio(energy_j, tokens),
        "flops_per_joule": _ratio(flops, energy_j),
        "mfu": None if peak is None or not mfu_seconds or mfu_flops is None else mfu_flops / mfu_seconds / peak,
        "wall_s": wall_s,
        "energy_j": energy_j,
        "energy_kwh": energy_kwh,
        "job_energy_j": job_energy_j,
        "job_joules_per_token": _ratio(job_energy_j, tokens_seen),
        "ppl_gain_per_kwh": None if initial_ppl is None or ppl is None else _ratio(initial_ppl - ppl, energy_kwh),
        "pe": _ratio(inv_ppl, params_m),
        "pee": pee,
        "pee_time": _ratio(pee, hours),
        "final_val_loss": _number(record.get("final_val_loss")),
        "final_val_ppl": ppl,
    }
    for name, fn in (extra_metrics or {}).items():
        try:
            metrics[name] = _number(fn(record))
        except Exception as exc:  # a user's hook must not stop the analysis; its failure is reported
            metrics[name] = None
            why[name] = f"metric function raised {type(exc).__name__}: {exc}"
    return RunEfficiency(
        run_id=str(record.get("run_id")), metrics=metrics, energy_source=record.get("energy_source") or None,
        initial_ppl_source=initial_source, peak_flops=peak, peak_flops_source=peak_source, not_computable=why,
        energy_basis=basis)


def summarise(runs: Iterable[RunEfficiency], level_of: Mapping[str, Any],
              metrics: Iterable[str]) -> list[MetricSummary]:
    """Per (metric, level): n, mean, SD, 95% CI, min, max over the runs with a value (level order sorted)."""
    runs = list(runs)
    levels = sorted({level_of[r.run_id] for r in runs}, key=level_order_key)
    out = []
    for metric in metrics:
        for level in levels:
            at_level = [r for r in runs if level_of[r.run_id] == level]
            values = [r.metrics[metric] for r in at_level if r.metrics.get(metric) is not None]
            sources = tuple(sorted({r.energy_source for r in at_level if r.energy_source}))
            mean, sd, lo, hi = mean_ci(values)
            missing = len(at_level) - len(values)
            notes = []
            if missing:
                notes.append(f"{missing} of {len(at_level)} run(s) without a value")
            if len(values) == 1:
                notes.append("one run: no SD or CI")
            if len(sources) > 1:
                notes.append(f"energy sources mixed: {', '.join(sources)}")
            out.append(MetricSummary(metric, level, len(values), mean, sd, lo, hi,
                                     min(values) if values else None, max(values) if values else None,
                                     sources, "; ".join(notes)))
    return out


def level_order_key(value: Any) -> tuple:
    """Sort key for factor levels: numbers in numeric order, then anything else in string order."""
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))
