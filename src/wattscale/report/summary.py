"""Small numeric summaries for the report: a band across seeds, downsampling (the mean with its interval is
``wattscale.confidence.mean_ci_summary``).

They are deliberately plain (lists in, dicts out) so the figures can use them directly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any


def band_across_runs(curves: Mapping[str, Sequence[tuple[int, float | None]]]) -> list[dict[str, Any]]:
    """Per x (tokens_seen): mean, min and max of the runs' finite y values, and how many runs had one.

    ``curves`` maps run_id -> [(tokens_seen, val_loss), ...]. Returns rows sorted by x:
    ``{"x", "n", "mean", "min", "max"}``. Runs of one condition evaluate at the same token counts,
    so values are grouped by exact x.
    """
    by_x: dict[int, list[float]] = defaultdict(list)
    for points in curves.values():
        for x, y in points:
            if y is not None and math.isfinite(y):
                by_x[x].append(float(y))
    return [{"x": x, "n": len(ys), "mean": math.fsum(ys) / len(ys), "min": min(ys), "max": max(ys)}
            for x, ys in sorted(by_x.items())]


def minmax_downsample(t: Sequence[float], y: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """Thin a time series for display to at most ``max_points`` points, keeping peaks and dips.

    Min/max per bucket: the samples are cut into ``max_points // 2`` buckets of (nearly) equal count
    and each bucket keeps its lowest and its highest sample, in time order. A series that already
    fits is returned as is. Only the figure is thinned; the stored trace is never touched.
    """
    n = len(t)
    if n <= max_points:
        return list(t), list(y)
    buckets = max(1, max_points // 2)
    out_t: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        i_min = min(range(lo, hi), key=y.__getitem__)
        i_max = max(range(lo, hi), key=y.__getitem__)
        for i in sorted({i_min, i_max}):
            out_t.append(t[i])
            out_y.append(y[i])
    return out_t, out_y
