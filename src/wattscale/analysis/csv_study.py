"""Repeated-measures statistics of any long-format table: one metric, one factor, one subject column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wattscale.analysis.comparisons import DEFAULT_ALPHA, compare_metric
from wattscale.analysis.efficiency import level_order_key, mean_ci
from wattscale.analysis.stats import json_ready
from wattscale.analysis.tidy import load_long_csv
from wattscale.errors import ConfigError


@dataclass(frozen=True)
class LongTableAnalysis:
    source: str
    metric: str
    factor: str
    subject: str
    levels: list[dict]  # per level: level, n, mean, sd, ci95_low, ci95_high
    statistics: dict  # MetricComparison.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dict(vars(self)))


def analyze_long_frame(frame: pd.DataFrame, metric: str, factor: str, subject: str, source: str,
                       alpha: float = DEFAULT_ALPHA) -> LongTableAnalysis:
    """Per-level descriptives and every repeated-measures test of ``metric`` across ``factor``."""
    values = pd.to_numeric(frame[metric], errors="coerce")
    if values.isna().all():
        raise ConfigError(f"--metric: column {metric!r} has no numeric values")
    data = frame.assign(**{metric: values})
    levels = []
    for level in sorted(data[factor].dropna().unique().tolist(), key=level_order_key):
        at = data.loc[data[factor] == level, metric].dropna()
        mean, sd, lo, hi = mean_ci(at.tolist())
        levels.append({"level": level, "n": len(at), "mean": mean, "sd": sd, "ci95_low": lo, "ci95_high": hi})
    comparison = compare_metric(data, metric, factor, subject, alpha)
    return LongTableAnalysis(source, metric, factor, subject, levels, comparison.to_dict())


def analyze_long_csv(path: Path, metric: str, factor: str, subject: str,
                     alpha: float = DEFAULT_ALPHA) -> LongTableAnalysis:
    """`analyze_long_frame` on a CSV file; missing file or columns raise one-line ConfigErrors."""
    frame = load_long_csv(path, metric, factor, subject)
    return analyze_long_frame(frame, metric, factor, subject, f"file {path}", alpha)
