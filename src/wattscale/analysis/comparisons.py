"""Every repeated-measures comparison of one metric across one within-subject factor, as one result.

:func:`compare_metric` runs, on a long frame (one row per run: subject, level, value), the tests of
`wattscale.analysis.stats`: RM-ANOVA with Mauchly and Greenhouse-Geisser, paired pairwise tests
(Bonferroni and Holm), Friedman, and, for an ordered numeric factor, Page's L in both directions plus a
verdict on strict monotonicity. A test that cannot run on the data is not an exception here: it is
listed in ``not_computable`` with the reason (one level, too few complete subjects, duplicate cells ...).

Unbalanced designs: the RM-ANOVA, Friedman, Page and paired tests use only complete subjects (every
level present; the dropped ones are listed). When any subject is incomplete, or a cell holds several
runs, the linear mixed-model likelihood-ratio test (`mixed_model_test`) is added: it uses every run.

**Strict monotonicity** ("efficiency declines strictly monotonically with tokens") is claimed only when
Page's L in that direction has p < alpha AND every adjacent pair of levels differs in that direction
with a Bonferroni-corrected paired p < alpha (Bonferroni over all pairs, as reported). Otherwise the
verdict says which condition failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from wattscale.analysis import stats
from wattscale.analysis.efficiency import level_order_key
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class MetricComparison(JsonResult):
    """All tests of one metric across one factor; dicts are the `stats` results' ``to_dict()``."""

    metric: str
    factor: str
    subject: str
    levels: tuple
    n_runs: int
    n_subjects: int
    n_subjects_complete: int
    dropped_subjects: tuple
    rm_anova: dict | None
    apa: str | None
    pairwise: list[dict]
    friedman: dict | None
    apa_friedman: str | None
    trend_increasing: dict | None
    trend_decreasing: dict | None
    monotonic_verdict: str | None
    mixed_model: dict | None
    not_computable: dict[str, str] = field(default_factory=dict)


def _numeric(levels: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels)


def compare_metric(frame: pd.DataFrame, metric: str, factor: str, subject: str, alpha: float = DEFAULT_ALPHA,
                   no_value_reason: str | None = None) -> MetricComparison:
    """Run every applicable repeated-measures test of ``metric`` across ``factor`` (subjects ``subject``).

    ``no_value_reason`` is said when no row has a value (e.g. why a run's MFU is not computable).
    """
    for role, col in (("metric", metric), ("factor", factor), ("subject", subject)):
        if col not in frame.columns:
            raise ConfigError(f"{role}: unknown column {col!r}; columns are {sorted(map(str, frame.columns))}")
    data = frame[[subject, factor, metric]].copy()
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    data = data[data[metric].notna()]
    levels = sorted(data[factor].dropna().unique().tolist(), key=level_order_key)
    why: dict[str, str] = {}
    results: dict[str, Any] = {}
    if data.empty:
        why["all tests"] = f"no run has a value of {metric!r}" + (f" ({no_value_reason})" if no_value_reason else "")
        return MetricComparison(metric, factor, subject, tuple(levels), 0, 0, 0, (), None, None, [], None, None,
                                None, None, None, None, why)

    def attempt(name: str, fn):
        try:
            results[name] = fn()
        except ConfigError as exc:
            why[name] = str(exc)

    attempt("rm_anova", lambda: stats.rm_anova(data, metric, factor, subject))
    attempt("pairwise", lambda: stats.pairwise(data, metric, factor, subject))
    attempt("friedman", lambda: stats.friedman(data, metric, factor, subject))
    if _numeric(levels):
        attempt("trend_increasing", lambda: stats.trend_test(data, metric, factor, subject, increasing=True))
        attempt("trend_decreasing", lambda: stats.trend_test(data, metric, factor, subject, increasing=False))
    else:
        why["trend"] = f"factor {factor!r} is not numeric: no order to test a trend along"
    wide = data.pivot_table(index=subject, columns=factor, values=metric, aggfunc="count")
    complete = wide.reindex(columns=levels).notna().all(axis=1) if len(levels) else wide.iloc[:, :0].all(axis=1)
    several_per_cell = bool((wide.fillna(0) > 1).to_numpy().any())
    if several_per_cell or not complete.all():
        attempt("mixed_model", lambda: stats.mixed_model_test(data, metric, factor, subject))

    anova = results.get("rm_anova")
    fried = results.get("friedman")
    dropped = anova.dropped_subjects if anova else tuple(sorted(wide.index[~complete])) if len(levels) else ()
    return MetricComparison(
        metric=metric, factor=factor, subject=subject, levels=tuple(levels), n_runs=len(data),
        n_subjects=int(data[subject].nunique()), n_subjects_complete=int(complete.sum()), dropped_subjects=dropped,
        rm_anova=anova.to_dict() if anova else None, apa=stats.apa_sentence(anova) if anova else None,
        pairwise=[p.to_dict() for p in results.get("pairwise", [])],
        friedman=fried.to_dict() if fried else None, apa_friedman=stats.apa_sentence(fried) if fried else None,
        trend_increasing=_maybe_dict(results.get("trend_increasing")),
        trend_decreasing=_maybe_dict(results.get("trend_decreasing")),
        monotonic_verdict=_monotonic_verdict(results, alpha) if "trend_increasing" in results else None,
        mixed_model=_maybe_dict(results.get("mixed_model")), not_computable=why,
    )


def _maybe_dict(result: Any) -> dict | None:
    return None if result is None else result.to_dict()


def _monotonic_verdict(results: dict[str, Any], alpha: float) -> str:
    """Strictly increasing/decreasing only when Page's L and every adjacent Bonferroni-corrected pair agree."""
    inc, dec = results["trend_increasing"], results["trend_decreasing"]
    levels = list(inc.levels)
    pairs = {(p.level_a, p.level_b): p for p in results.get("pairwise", [])}
    for trend, name, sign in ((dec, "decreasing", 1.0), (inc, "increasing", -1.0)):
        if trend.p >= alpha:
            continue
        # mean_diff = mean(a - b) for a the lower level: a decrease means a > b, i.e. a positive difference.
        steps = [pairs.get((a, b)) for a, b in zip(levels, levels[1:], strict=False)]
        failed = [f"{a}->{b}" for (a, b), p in zip(zip(levels, levels[1:], strict=False), steps, strict=True)
                  if p is None or sign * p.mean_diff <= 0 or p.p_bonferroni >= alpha]
        page = f"Page's L = {trend.page_l:.2f}, p = {trend.p:.3g}"
        if not failed:
            return (f"strictly {name}: {page}; every adjacent step differs in that direction "
                    f"(Bonferroni p < {alpha:g})")
        return (f"{name} trend ({page}) but not strictly monotonic: adjacent step(s) {', '.join(failed)} "
                f"not significant in that direction (Bonferroni, alpha {alpha:g})")
    return (f"no monotonic trend: Page's L p = {inc.p:.3g} (increasing), {dec.p:.3g} (decreasing), "
            f"alpha {alpha:g}")
