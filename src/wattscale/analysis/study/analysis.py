"""`analyze_study`: efficiency, repeated-measures statistics, returns on tokens and dynamics of one study.

The choices, each overridable in `AnalysisOptions`:

- **Factor** (``by``): a column of the run records (``tokens_seen``, ``data_tokens``, ``preset``, ...), a grid
  key of the experiment (``train.lr``) or ``condition`` (the full grid label). Default: ``tokens_seen`` when
  token count identifies the conditions one to one (the token-count study), else the grid's only factor, else
  ``condition``. A study with one condition has no between-condition statistics (dynamics still apply).
- **Subject**: ``repetition`` (the experiment's repetition index) when the runs have one, else ``seed``.
- **Metrics** tested: every efficiency metric (`wattscale.analysis.efficiency`) plus user metrics, unless
  ``metrics`` names some. Returns on tokens are computed for the performance metrics (loss, perplexity) and
  the energy-efficiency metrics (tokens per joule, PEE) when the factor orders token counts.
- **Energy basis**: ``train`` (default: the training phase's energy, tokens and time; see
  `wattscale.analysis.efficiency`) or ``job`` (the whole job); the whole-job J and J/token are always there too.
- **Carbon and cost** (``footprint``, a `wattscale.footprint.FootprintSettings`): with a carbon intensity the
  metrics gain ``co2e_g`` and ``co2e_g_per_token``, with a price ``cost``, on the energy basis x PUE
  (`wattscale.analysis.footprint_metrics`); each run states its inputs and carbon basis, and ``footprint``
  in the result the settings.
- **Shared host**: a run whose host-wide counters (RAPL) also counted other wattscale measurements that ran
  at the same time is named in ``warnings``.
- **Missing data**: unfinished planned runs are listed with their status, conditions with fewer repetitions
  than the most complete condition are named, and ``design_note`` says which tests use which runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from wattscale.analysis import efficiency
from wattscale.analysis.comparisons import DEFAULT_ALPHA, compare_metric
from wattscale.analysis.dynamics import DynamicsConfig
from wattscale.analysis.footprint_metrics import StudyFootprint, study_footprint
from wattscale.analysis.returns import metric_returns, token_levels
from wattscale.analysis.study.data import StudyData, condition_of
from wattscale.analysis.study.dynamics import condition_dynamics
from wattscale.errors import ConfigError
from wattscale.footprint import FootprintSettings
from wattscale.jsonout import JsonResult

RETURN_METRICS = ("final_val_loss", "final_val_ppl", "tokens_per_joule", "pee")
# Which of a run's not-computable reasons explains a metric without a value.
_REASON_KEY = {m: "energy" for m in ("tokens_per_joule", "joules_per_token", "flops_per_joule", "energy_j",
                                     "energy_kwh", "pee", "pee_time", "ppl_gain_per_kwh", "co2e_g",
                                     "co2e_g_per_token", "cost")}


@dataclass(frozen=True)
class AnalysisOptions:
    """What to analyse and how (see the module docstring for the defaults)."""

    by: str | None = None
    subject: str | None = None
    metrics: tuple[str, ...] | None = None
    alpha: float = DEFAULT_ALPHA
    peak_flops: float | None = None
    energy_basis: str = "train"
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    include_dynamics: bool = True
    extra_metrics: dict[str, efficiency.MetricFn] = field(default_factory=dict)
    footprint: FootprintSettings | None = None  # carbon and cost inputs (None: only a run's own intensity)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha: must be between 0 and 1, got {self.alpha}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ConfigError(f"peak_flops: must be > 0 FLOP/s, got {self.peak_flops}")
        if self.energy_basis not in efficiency.ENERGY_BASES:
            raise ConfigError(f"--energy-basis: {self.energy_basis!r} is not one of "
                              f"{', '.join(efficiency.ENERGY_BASES)} (train: the training phase; job: the whole job)")


@dataclass(frozen=True)
class StudyAnalysis(JsonResult):
    """Everything `wattscale analyze` prints; ``to_dict()`` is the JSON it writes."""

    experiment: str | None
    source: str
    factor: str | None
    subject: str
    levels: tuple
    runs: list[dict]  # per run: run_id, level, subject, condition, every metric, sources
    conditions: list[dict]  # per (metric, level): MetricSummary.to_dict()
    statistics: list[dict]  # per metric: MetricComparison.to_dict()
    returns: list[dict]  # per metric: MetricReturns.to_dict()
    dynamics: list[dict]  # per condition: ConditionDynamics.to_dict()
    missing: dict[str, Any]
    design_note: str
    not_computable: dict[str, str]
    energy_basis: str = "train"  # what was asked; each run says which it used
    warnings: list[str] = field(default_factory=list)
    footprint: dict[str, Any] = field(default_factory=dict)  # StudyFootprint.to_dict(): configured, inputs, units


def _condition_values(record: dict[str, Any]) -> dict[str, Any]:
    raw = record.get("condition_json")
    try:
        values = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        values = {}
    return values if isinstance(values, dict) else {}


def _run_frame(data: StudyData, options: AnalysisOptions,
               extra: dict[str, efficiency.MetricFn]) -> tuple[pd.DataFrame, list[efficiency.RunEfficiency]]:
    per_run = [efficiency.run_efficiency(r, extra, options.peak_flops, options.energy_basis) for r in data.runs]
    rows = []
    for record, eff in zip(data.runs, per_run, strict=True):
        row = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
        row.update(_condition_values(record))
        row["condition"] = condition_of(record)
        row.update(eff.metrics)
        rows.append(row)
    return pd.DataFrame(rows), per_run


def default_factor(frame: pd.DataFrame, grid_keys: list[str]) -> str | None:
    """tokens_seen if it identifies the conditions 1:1, else the only grid factor, else condition (None: one)."""
    if frame.empty or frame["condition"].nunique() < 2:
        return None
    pairs = frame[["condition", "tokens_seen"]].drop_duplicates()
    if pairs["condition"].is_unique and pairs["tokens_seen"].is_unique:
        return "tokens_seen"
    if len(grid_keys) == 1 and grid_keys[0] in frame.columns:
        return grid_keys[0]
    return "condition"


def analyze_study(data: StudyData, options: AnalysisOptions | None = None) -> StudyAnalysis:
    """Efficiency per run and condition, RM statistics per metric, returns on tokens and dynamics."""
    options = options or AnalysisOptions()
    if not data.runs:
        raise ConfigError(f"runs: no finished runs to analyse in {data.source}"
                          + (f" for experiment {data.experiment!r}" if data.experiment else ""))
    footprint = study_footprint(data.runs, options.footprint, options.energy_basis)
    extra = {**footprint.metrics, **options.extra_metrics}
    frame, per_run = _run_frame(data, options, extra)
    _footprint_reasons(per_run, footprint)
    grid_keys = sorted({k for r in data.runs for k in _condition_values(r)})
    factor = options.by or default_factor(frame, grid_keys)
    if factor is not None and factor not in frame.columns:
        known = sorted(c for c in frame.columns if frame[c].nunique(dropna=True) > 1)
        raise ConfigError(f"--by: unknown field {factor!r}; fields that vary in these runs: {known}")
    has_repetition = "repetition" in frame.columns and bool(frame["repetition"].notna().all())
    subject = options.subject or ("repetition" if has_repetition else "seed")
    if subject not in frame.columns:
        raise ConfigError(f"--subject: unknown field {subject!r}; use repetition or seed")
    metrics = list(options.metrics or efficiency.metric_names(extra))
    unknown = [m for m in metrics if m not in frame.columns]
    if unknown:
        raise ConfigError(f"--metric: unknown metric(s) {unknown}; known: {efficiency.metric_names(extra)}")
    why: dict[str, str] = {}
    level_of = {eff.run_id: (frame.loc[i, factor] if factor else "all runs") for i, eff in enumerate(per_run)}
    levels = tuple(sorted(set(level_of.values()), key=efficiency.level_order_key))
    statistics, returns = [], []
    if factor is None:
        why["statistics"] = "one condition: no within-subject factor to compare across (see dynamics)"
    else:
        for metric in metrics:
            reasons = [r.not_computable.get(metric) or r.not_computable.get(_REASON_KEY.get(metric, ""))
                       for r in per_run]
            reason = next((r for r in reasons if r), None)
            statistics.append(compare_metric(frame, metric, factor, subject, options.alpha, reason).to_dict())
        if token_levels(frame, factor) is None:
            why["returns"] = f"factor {factor!r} does not order token counts"
        else:
            for metric in (m for m in RETURN_METRICS if m in metrics):
                try:
                    returns.append(metric_returns(frame, metric, factor, subject).to_dict())
                except ConfigError as exc:
                    why[f"returns_{metric}"] = str(exc)
    runs_out = [{"run_id": eff.run_id, "level": level_of[eff.run_id], "subject": frame.loc[i, subject],
                 "condition": frame.loc[i, "condition"], **eff.to_dict(), **footprint.run_fields(eff.run_id)}
                for i, eff in enumerate(per_run)]
    return StudyAnalysis(
        experiment=data.experiment, source=data.source, factor=factor, subject=subject, levels=levels,
        runs=runs_out,
        conditions=[s.to_dict() for s in efficiency.summarise(per_run, level_of, metrics)],
        statistics=statistics, returns=returns, dynamics=_dynamics(data, frame, factor, subject, options, why),
        missing=_missing(data, frame, factor), design_note=_design_note(frame, factor, subject),
        not_computable=why, energy_basis=options.energy_basis, warnings=_warnings(data.runs, per_run, options),
        footprint=footprint.to_dict())


def _footprint_reasons(per_run: list[efficiency.RunEfficiency], footprint: StudyFootprint) -> None:
    """A run with energy but no CO2e (a series that misses it) says why, like any metric without a value."""
    for eff in per_run:
        for metric in footprint.metrics:
            reason = footprint.reason(eff.run_id, metric)
            if reason:
                eff.not_computable[metric] = reason


def _warnings(records: list[dict[str, Any]], per_run: list[efficiency.RunEfficiency],
              options: AnalysisOptions) -> list[str]:
    """What a reader of the energy figures must know: shared hosts, and runs on another basis than asked."""
    out = []
    for record in records:
        energy = _energy_json(record)
        overlaps = energy.get("shared_host") or []
        host_wide = [d["device"] for d in energy.get("devices") or [] if d.get("component") in ("cpu_package", "dram")]
        if overlaps and host_wide:
            others = ", ".join(sorted({str(o.get("id")) for o in overlaps}))
            out.append(f"run {record['run_id']}: its host-wide counters ({', '.join(host_wide)}) also counted "
                       f"other measurements on the same host at the same time ({others}); its energy is too high")
    fallback = [r.run_id for r in per_run if r.energy_basis != options.energy_basis and r.metrics.get("energy_j")]
    if fallback:
        shown = ", ".join(fallback[:5]) + (", ..." if len(fallback) > 5 else "")
        out.append(f"{len(fallback)} run(s) have no training-phase energy (stored before phases were measured): "
                   f"their figures are whole-job energy ({shown})")
    return out


def _energy_json(record: dict[str, Any]) -> dict[str, Any]:
    raw = record.get("energy_json")
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def _dynamics(data: StudyData, frame: pd.DataFrame, factor: str | None, subject: str, options: AnalysisOptions,
              why: dict[str, str]) -> list[dict]:
    if not options.include_dynamics:
        return []
    if data.evaluations is None:
        why["dynamics"] = "dynamics need the store's evaluations (a runs export has none): analyse the store"
        return []
    out = []
    groups = frame.groupby(factor if factor else "condition", sort=False)
    for level, group in sorted(groups, key=lambda g: efficiency.level_order_key(g[0])):
        run_ids = list(group["run_id"])
        evals = pd.DataFrame([e for r in run_ids for e in data.evaluations.get(r, [])])
        steps = pd.DataFrame([s for r in run_ids for s in (data.train_steps or {}).get(r, [])])
        subjects = dict(zip(group["run_id"], group[subject], strict=True))
        seeds = subjects if len(set(subjects.values())) == len(subjects) else None
        try:
            if evals.empty:
                raise ConfigError("no evaluations stored for these runs")
            if steps.empty:
                steps = pd.DataFrame(columns=["run_id", "step", "tokens_seen", "loss"])
            result = condition_dynamics(level, evals, steps, {k: int(v) for k, v in (seeds or {}).items()} or None,
                                        options.dynamics)
            out.append(result.to_dict())
        except (ConfigError, ValueError, TypeError) as exc:
            why[f"dynamics[{level}]"] = str(exc)
    return out


def _missing(data: StudyData, frame: pd.DataFrame, factor: str | None) -> dict[str, Any]:
    """Planned runs that are not finished, and conditions with fewer runs than the fullest one."""
    not_finished = [{"run_id": p["run_id"], "condition": p.get("condition"), "repetition": p.get("repetition"),
                     "status": p.get("status") or "not started"}
                    for p in data.planned if p.get("status") != "finished"]
    not_finished += [{"run_id": r["run_id"], "condition": r.get("condition"), "repetition": r.get("repetition"),
                      "status": r.get("status")} for r in data.unfinished
                     if not any(p["run_id"] == r["run_id"] for p in data.planned)]
    counts = frame.groupby(factor).size() if factor else pd.Series({"all runs": len(frame)})
    fullest = int(counts.max()) if len(counts) else 0
    short = {str(level): int(n) for level, n in counts.items() if n < fullest}
    return {"planned": len(data.planned), "finished": len(frame), "not_finished": not_finished,
            "runs_per_level": {str(k): int(v) for k, v in counts.items()}, "levels_with_fewer_runs": short,
            "balanced": not short and not not_finished}


def _design_note(frame: pd.DataFrame, factor: str | None, subject: str) -> str:
    if factor is None:
        return "one condition: per-run and across-seed statistics only"
    cells = frame.groupby([subject, factor]).size().unstack()
    complete = int(cells.notna().all(axis=1).sum())
    total = len(cells)
    several = bool((cells.fillna(0) > 1).to_numpy().any())
    if complete < 2:
        return (f"{complete} of {total} subject(s) ({subject}) have every level of {factor!r}: the repeated-measures "
                "tests need at least 2 (not computable); descriptive statistics use every run")
    if complete == total and not several:
        return (f"balanced: all {total} subjects ({subject}) have every level of {factor!r}; "
                "RM-ANOVA, Friedman, Page's L and the paired tests use every run")
    parts = [f"unbalanced: {complete} of {total} subjects ({subject}) have every level of {factor!r}"]
    if several:
        parts.append("some cells hold several runs (the RM tests need one run per subject and level)")
    parts.append("RM-ANOVA, Friedman, Page's L and the paired tests use the complete subjects only; "
                 "the mixed-model likelihood-ratio test uses every run; descriptive statistics use every run")
    return "; ".join(parts)
