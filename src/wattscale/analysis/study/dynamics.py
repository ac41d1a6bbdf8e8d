"""Training dynamics of a study: `wattscale.analysis.dynamics` applied per condition, plus RM-ANOVA across intervals.

For each condition (the runs sharing one level of the analysis factor; a study with one condition has one
group), from the runs' evaluations and training steps:

- per run and interval: val loss, perplexity, change, rolling volatility, backslide (``per_seed_intervals``);
- per interval across seeds: mean/SD/CV of loss and perplexity (``across_seeds``), mean volatility, how many
  runs backslid at that interval and how many loss spikes fell inside it (a spike at a step whose tokens_seen
  is in (tokens at evaluation i-1, tokens at evaluation i] belongs to interval i);
- per run: backslide count/depth, spike count/size, stable phase; across seeds: the stable phase;
- RM-ANOVA (with Mauchly / Greenhouse-Geisser, APA sentence) across intervals for val loss, perplexity and
  volatility, subjects = runs (seeds). Volatility is not computable at the first ``volatility_window``
  intervals, so its ANOVA uses the intervals where every run has it.

A part that cannot be computed (e.g. runs evaluated at different token counts, a single run) is reported in
``not_computable`` with the reason; the rest is still returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from wattscale.analysis import dynamics, stats
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult


@dataclass(frozen=True)
class ConditionDynamics(JsonResult):
    condition: Any
    run_ids: tuple[str, ...]
    intervals: list[dict]  # one row per (run, interval): IntervalDynamics.as_dict()
    across_seeds: list[dict]  # one row per interval
    backslides: list[dict]
    spikes: list[dict]
    stable_phase: dict
    rm_anova: dict[str, dict]  # "val_loss" / "val_ppl" / "volatility" -> RMAnovaResult.to_dict() + "apa"
    not_computable: dict[str, str] = field(default_factory=dict)


def condition_dynamics(condition: Any, evaluations: pd.DataFrame, train_steps: pd.DataFrame,
                       seeds: dict[str, int], config: dynamics.DynamicsConfig) -> ConditionDynamics:
    """Dynamics of one condition's runs (``seeds``: run_id -> subject index, unique within the condition)."""
    why: dict[str, str] = {}
    per_seed = dynamics.per_seed_intervals(evaluations, config, seeds=seeds)
    rows = [row.as_dict() for run_rows in per_seed.values() for row in run_rows]
    spike_summary = dynamics.spikes(train_steps, config) if not train_steps.empty else {}
    if train_steps.empty:
        why["spikes"] = "no training steps stored for these runs"
    try:
        spread = [s.as_dict() for s in dynamics.across_seeds(per_seed)]
        _add_interval_counts(spread, per_seed, spike_summary, train_steps)
    except ConfigError as exc:
        spread, why["across_seeds"] = [], str(exc)
    phase = dynamics.stable_phase(per_seed, config)
    anovas = {}
    frame = pd.DataFrame(rows)
    for metric in ("val_loss", "val_ppl", "volatility"):
        data = frame[frame[metric].notna()] if metric in frame else frame.iloc[:0]
        try:
            if metric == "volatility":  # only intervals where every run has a volatility
                counts = data.groupby("interval")["run_id"].nunique()
                data = data[data["interval"].isin(counts[counts == frame["run_id"].nunique()].index)]
            result = stats.rm_anova(data.astype({metric: float}), metric, "interval", "run_id")
            anovas[metric] = {**result.to_dict(), "apa": stats.apa_sentence(result)}
        except (ConfigError, KeyError, ValueError) as exc:
            why[f"rm_anova_{metric}"] = str(exc)
    return ConditionDynamics(
        condition=condition, run_ids=tuple(per_seed), intervals=rows, across_seeds=spread,
        backslides=[b.as_dict() for b in dynamics.backslides(evaluations, config).values()],
        spikes=[s.as_dict() for s in spike_summary.values()],
        stable_phase={"per_run": {k: v.as_dict() for k, v in phase.per_run.items()},
                      "across_seeds": phase.across_seeds.as_dict()},
        rm_anova=anovas, not_computable=why)


def _add_interval_counts(spread: list[dict], per_seed: dict, spike_summary: dict, train_steps: pd.DataFrame) -> None:
    """Add mean volatility, backslide count and spike count per interval to the across-seed rows (in place)."""
    bounds = [row["tokens_seen"] for row in spread]
    spike_tokens = []
    for run_id, summary in spike_summary.items():
        steps = train_steps[train_steps["run_id"].astype(str) == run_id].set_index("step")["tokens_seen"]
        spike_tokens += [int(steps[s]) for s in summary.steps if s in steps.index]
    for i, row in enumerate(spread):
        vols = [rows[i].volatility for rows in per_seed.values() if rows[i].volatility is not None]
        row["volatility_mean"] = sum(vols) / len(vols) if vols else None
        row["n_backslides"] = sum(1 for rows in per_seed.values() if rows[i].backslide)
        lo = bounds[i - 1] if i > 0 else -1
        row["n_spikes"] = sum(1 for t in spike_tokens if lo < t <= bounds[i])
