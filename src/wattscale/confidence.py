"""Confidence intervals of a sample mean: one confidence level and one implementation for every output.

``CI_LEVEL`` (95%) is the level of every interval wattscale reports: the efficiency summaries and
statistics of a study, the scaling-law bootstrap and the report. :func:`mean_ci` is the two-sided
Student-t interval of the mean, ``mean +- t(1 - (1 - level)/2, n - 1) * sd / sqrt(n)``;
:func:`mean_ci_summary` is the same as a dict over the finite values (what the report's tables and
figures read).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

CI_LEVEL = 0.95


def mean_ci(values: Iterable[float], level: float = CI_LEVEL) -> tuple[float | None, float | None, float | None,
                                                                        float | None]:
    """(mean, SD with ddof=1, CI low, CI high) of a sample: a t-interval of the mean; None where undefined."""
    # scipy.special.stdtrit is scipy.stats.t.ppf without importing all of scipy.stats (seconds on a small machine).
    from scipy.special import stdtrit

    data = [float(v) for v in values]
    if not data:
        return None, None, None, None
    mean = statistics.fmean(data)
    if len(data) < 2:
        return mean, None, None, None
    sd = statistics.stdev(data)
    half = float(stdtrit(len(data) - 1, 0.5 + level / 2)) * sd / math.sqrt(len(data))
    return mean, sd, mean - half, mean + half


def mean_ci_summary(values: Iterable[float | None], level: float = CI_LEVEL) -> dict[str, float | int | None]:
    """:func:`mean_ci` of the finite values (None and NaN left out) as ``{"n", "mean", "sd", "ci_low", "ci_high"}``.

    sd and the interval are None for n < 2, everything but n is None for n = 0.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    mean, sd, low, high = mean_ci(finite, level)
    return {"n": len(finite), "mean": mean, "sd": sd, "ci_low": low, "ci_high": high}
