"""Returns on tokens: what each step up in token count buys in performance and costs in efficiency.

For an ordered token factor (levels whose runs have strictly increasing mean ``tokens_seen``), each pair of
adjacent levels (lo, hi) is compared within subjects (the same repetition at both levels):

- ``doublings`` = log2(tokens_seen(hi) / tokens_seen(lo)), per subject.
- For a performance metric where lower is better (validation loss in nats, perplexity), the **gain** is
  value(lo) - value(hi) (positive = better at more tokens); ``gain_per_doubling`` = gain / doublings and
  ``gain_per_kwh`` = gain / (energy_kwh(hi) - energy_kwh(lo)) (None when the extra energy is not positive).
- For an efficiency metric the **change** is value(hi) - value(lo), also per doubling and relative
  (``relative_change`` = value(hi) / value(lo) - 1).

Each quantity is summarised across subjects: n, mean, SD, 95% t-interval. "Diminishing returns" is then a
claim about the gains per doubling falling from one step to the next; with two or more steps it rests on
Page's L across the steps (subjects = repetitions, predicted decrease), reported in ``diminishing``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from wattscale.analysis import stats
from wattscale.analysis.efficiency import level_order_key
from wattscale.confidence import mean_ci
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult

LOWER_IS_BETTER = {"final_val_loss", "final_val_ppl", "joules_per_token", "energy_j", "energy_kwh", "wall_s"}


@dataclass(frozen=True)
class Summary(JsonResult):
    n: int
    mean: float | None
    sd: float | None
    ci95_low: float | None
    ci95_high: float | None

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        mean, sd, lo, hi = mean_ci(values)
        return cls(len(values), mean, sd, lo, hi)


@dataclass(frozen=True)
class ReturnStep(JsonResult):
    """One step up the token factor for one metric, summarised across the subjects present at both levels."""

    metric: str
    level_lo: Any
    level_hi: Any
    tokens_lo: float
    tokens_hi: float
    kind: str  # "gain" (performance, lower is better) or "change" (efficiency)
    value_change: Summary
    per_doubling: Summary
    per_kwh: Summary
    relative_change: Summary


@dataclass(frozen=True)
class MetricReturns(JsonResult):
    metric: str
    factor: str
    steps: tuple[ReturnStep, ...]
    diminishing: dict | None  # Page's L (decreasing) on the per-doubling values across steps, or None
    note: str


def token_levels(frame: pd.DataFrame, factor: str) -> tuple[list, dict] | None:
    """Levels in order with their mean tokens_seen, or None when the factor does not order token counts."""
    levels = sorted(frame[factor].dropna().unique().tolist(), key=level_order_key)
    tokens = {lvl: float(frame.loc[frame[factor] == lvl, "tokens_seen"].mean()) for lvl in levels}
    ordered = [tokens[lvl] for lvl in levels]
    if len(levels) < 2 or any(b <= a for a, b in zip(ordered, ordered[1:], strict=False)) or ordered[0] <= 0:
        return None
    return levels, tokens


def metric_returns(frame: pd.DataFrame, metric: str, factor: str, subject: str) -> MetricReturns:
    """Per adjacent pair of token levels: the metric's gain (or change) per step, per doubling and per kWh."""
    for col in (metric, factor, subject, "tokens_seen", "energy_kwh"):
        if col not in frame.columns:
            raise ConfigError(f"returns: column {col!r} missing; columns are {sorted(map(str, frame.columns))}")
    ordered = token_levels(frame, factor)
    if ordered is None:
        raise ConfigError(f"returns: factor {factor!r} does not order token counts (need >= 2 levels whose "
                          "mean tokens_seen strictly increase)")
    levels, tokens = ordered
    kind = "gain" if metric in LOWER_IS_BETTER and metric.startswith("final_val") else "change"
    cells = frame.groupby([subject, factor])[[metric, "tokens_seen", "energy_kwh"]].mean()
    steps, per_doubling_long = [], []
    for index, (lo, hi) in enumerate(zip(levels, levels[1:], strict=False)):
        values: dict[str, list[float]] = {"change": [], "doubling": [], "kwh": [], "relative": []}
        for subj in frame[subject].unique():
            if (subj, lo) not in cells.index or (subj, hi) not in cells.index:
                continue
            a, b = cells.loc[(subj, lo)], cells.loc[(subj, hi)]
            if not all(math.isfinite(float(x)) for x in (a[metric], b[metric])):
                continue
            change = float(a[metric] - b[metric]) if kind == "gain" else float(b[metric] - a[metric])
            doublings = math.log2(float(b["tokens_seen"]) / float(a["tokens_seen"]))
            values["change"].append(change)
            values["doubling"].append(change / doublings)
            per_doubling_long.append({"subject": subj, "step": index, "value": change / doublings})
            extra_kwh = float(b["energy_kwh"] - a["energy_kwh"])
            if math.isfinite(extra_kwh) and extra_kwh > 0:
                values["kwh"].append(change / extra_kwh)
            if float(a[metric]) != 0:
                values["relative"].append(float(b[metric]) / float(a[metric]) - 1.0)
        steps.append(ReturnStep(metric, lo, hi, tokens[lo], tokens[hi], kind, Summary.of(values["change"]),
                                Summary.of(values["doubling"]), Summary.of(values["kwh"]),
                                Summary.of(values["relative"])))
    diminishing, note = _diminishing(pd.DataFrame(per_doubling_long), len(steps), kind)
    return MetricReturns(metric, factor, tuple(steps), diminishing, note)


def _diminishing(per_doubling: pd.DataFrame, n_steps: int, kind: str) -> tuple[dict | None, str]:
    """Page's L (predicted decrease) on the per-doubling values across >= 3 steps; a paired t-test for 2."""
    what = "gain" if kind == "gain" else "change"
    if n_steps < 2:
        return None, f"one step: nothing to compare the {what} per doubling with"
    try:
        if n_steps == 2:
            test = stats.pairwise(per_doubling, "value", "step", "subject")[0]  # mean(step 0 - step 1)
            verdict = ("does not change significantly" if test.p_unc >= 0.05
                       else "falls" if test.mean_diff > 0 else "rises")
            return test.to_dict(), (f"the {what} per doubling {verdict} from the first step to the second "
                                    f"(paired t({test.df}) = {test.t:.2f}, p = {test.p_unc:.3g}, two-sided)")
        trend = stats.trend_test(per_doubling, "value", "step", "subject", increasing=False)
    except ConfigError as exc:
        return None, f"diminishing-returns test not computable: {exc}"
    verdict = "falls" if trend.p < 0.05 else "does not fall significantly"
    return trend.to_dict(), (f"the {what} per doubling {verdict} from step to step "
                             f"(Page's L = {trend.page_l:.2f}, p = {trend.p:.3g}, predicted decrease)")
