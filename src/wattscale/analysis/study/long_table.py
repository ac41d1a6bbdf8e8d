"""Repeated-measures statistics of any long-format table: one metric, one factor, one subject column.

Missing values: an empty or NA cell (pandas' defaults: ``""``, ``NA``, ``NaN``, ``null`` ...) in the metric column is
a missing observation: the row is left out and ``notes`` says how many. A cell that is not a number (``abc``),
infinite, or a row whose factor or subject cell is empty is an error (DataError naming the file, line and column):
such a row cannot be analysed and silently dropping it would change the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wattscale.analysis.comparisons import DEFAULT_ALPHA, compare_metric
from wattscale.analysis.efficiency import level_order_key
from wattscale.analysis.tidy import load_long_csv
from wattscale.confidence import mean_ci
from wattscale.errors import ConfigError, DataError
from wattscale.jsonout import JsonResult


@dataclass(frozen=True)
class LongTableAnalysis(JsonResult):
    source: str
    metric: str
    factor: str
    subject: str
    levels: list[dict]  # per level: level, n, mean, sd, ci95_low, ci95_high
    statistics: dict  # MetricComparison.to_dict()
    n_rows: int = 0  # rows read, before missing metric cells were left out
    notes: list[str] = field(default_factory=list)


def analyze_long_frame(frame: pd.DataFrame, metric: str, factor: str, subject: str, source: str,
                       alpha: float = DEFAULT_ALPHA) -> LongTableAnalysis:
    """Per-level descriptives and every repeated-measures test of ``metric`` across ``factor``."""
    values = numeric_column(frame, metric, source, "--metric")
    for flag, column in (("--factor", factor), ("--subject", subject)):
        _no_missing(frame, column, source, flag)
    if values.isna().all():
        raise ConfigError(f"--metric: column {metric!r} of {source.removeprefix('file ')} has no values (every cell "
                          "is empty); choose the column that holds the measurements")
    notes = []
    n_missing = int(values.isna().sum())
    if n_missing:
        notes.append(f"{n_missing} of {len(frame)} row(s) have an empty {metric!r} cell: left out as missing")
    data = frame.assign(**{metric: values})
    levels = []
    for level in sorted(data[factor].dropna().unique().tolist(), key=level_order_key):
        at = data.loc[data[factor] == level, metric].dropna()
        mean, sd, lo, hi = mean_ci(at.tolist())
        levels.append({"level": level, "n": len(at), "mean": mean, "sd": sd, "ci95_low": lo, "ci95_high": hi})
    comparison = compare_metric(data, metric, factor, subject, alpha)
    return LongTableAnalysis(source, metric, factor, subject, levels, comparison.to_dict(), len(frame), notes)


def _where(source: str, index: int) -> str:
    """A row's place in the file: data row ``index`` (0-based) is line ``index + 2`` under a one-line header."""
    return f"{source.removeprefix('file ')}, line {index + 2}"


def numeric_column(frame: pd.DataFrame, column: str, source: str, flag: str) -> pd.Series:
    """``frame[column]`` as floats, NaN where the cell is empty/NA; DataError at the first non-number or inf."""
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        raise DataError(f"{flag}: column {column!r} of {source.removeprefix('file ')} holds true/false, not numbers")
    values = pd.to_numeric(raw, errors="coerce")
    text = raw.astype("string").str.strip()
    bad = values.isna() & raw.notna() & (text != "").fillna(False)
    bad |= pd.Series(np.isinf(values.to_numpy(dtype=float)), index=frame.index)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise DataError(f"{flag}: {_where(source, i)}, column {column!r}: {raw.iloc[i]!r} is not a finite number "
                        f"({int(bad.sum())} such cell(s)); fix them, or empty a cell to mark it missing")
    return values.astype(float)


def _no_missing(frame: pd.DataFrame, column: str, source: str, flag: str) -> None:
    empty = frame[column].isna() | (frame[column].astype("string").str.strip() == "").fillna(False)
    if empty.any():
        i = int(np.argmax(empty.to_numpy()))
        raise DataError(f"{flag}: {_where(source, i)}, column {column!r} is empty ({int(empty.sum())} such row(s)); "
                        "every observation needs its factor level and subject")


def analyze_long_csv(path: Path, metric: str, factor: str, subject: str,
                     alpha: float = DEFAULT_ALPHA) -> LongTableAnalysis:
    """`analyze_long_frame` on a CSV file; missing file or columns raise one-line ConfigErrors."""
    frame = load_long_csv(path, metric, factor, subject)
    return analyze_long_frame(frame, metric, factor, subject, f"file {path}", alpha)
