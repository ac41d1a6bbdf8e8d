"""Energy from a power trace: the trapezoid integral, and the same trace re-integrated at lower sampling rates.

The resampling answers "how much does the energy figure depend on the power sampling frequency?": a slower
sampler would have seen only the samples nearest to its own regular grid, so we keep those and integrate again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A requested rate up to 5% above the trace's own mean rate is still resampled (it keeps nearly every sample):
# a sampler asked for 100 Hz that achieved 98 Hz should not have its 100 Hz row skipped for timing jitter.
_RATE_TOLERANCE = 1.05

# np.trapezoid is NumPy >= 2.0; NumPy 1.26 (our floor, still what stacks that pin numpy<2 have) names it trapz.
# Looking trapezoid up first keeps NumPy 2 off trapz, which it deprecates.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _as_trace(t_s: Sequence[float], power_w: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"t_s and power_w must be 1-D and the same length (got {t.shape} and {p.shape})")
    if t.size > 1 and np.any(np.diff(t) < 0):
        raise ValueError("t_s must be non-decreasing (timestamps from time.monotonic())")
    return t, p


def integrate_trapezoid(t_s: Sequence[float], power_w: Sequence[float]) -> float:
    """Energy in joules of a power trace (watts at seconds) by the trapezoid rule; 0.0 for fewer than 2 samples."""
    t, p = _as_trace(t_s, power_w)
    if t.size < 2:
        return 0.0
    return float(_trapezoid(p, t))


def trace_rate_hz(t_s: Sequence[float]) -> float:
    """Mean sampling rate of a trace: (samples - 1) / span; 0.0 when it spans no time."""
    t = np.asarray(t_s, dtype=np.float64)
    if t.size < 2 or t[-1] <= t[0]:
        return 0.0
    return float((t.size - 1) / (t[-1] - t[0]))


def nearest_grid_indices(t: np.ndarray, rate_hz: float) -> np.ndarray:
    """Indices of the samples nearest to a regular grid at rate_hz from t[0], plus the first and last sample.

    The first and last samples are always kept because a measurement window's boundary readings are taken
    whatever the rate; the comparison is then about the resolution inside the window, over the same span.
    """
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    n_grid = int(np.floor((t[-1] - t[0]) * rate_hz + 1e-9)) + 1
    grid = t[0] + np.arange(n_grid, dtype=np.float64) / rate_hz
    right = np.clip(np.searchsorted(t, grid), 1, t.size - 1) if t.size > 1 else np.zeros(n_grid, dtype=np.int64)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(t[left] - grid) <= np.abs(t[right] - grid), left, right)
    return np.unique(np.concatenate([[0], nearest, [t.size - 1]]))


def _relative_error(value: float, reference: float | None) -> float | None:
    if reference is None or reference == 0:
        return None
    return (value - reference) / reference


def resample_energy(t_s: Sequence[float], power_w: Sequence[float], rates_hz: Sequence[float],
                    counter_energy_j: float | None = None) -> list[dict]:
    """Energy of the trace as a slower sampler at each rate would have measured it, with its relative errors.

    Each row: ``rate_hz``, ``n_samples``, ``energy_j``, ``rel_error_vs_full`` (signed, (E_rate - E_full) /
    E_full), ``rel_error_vs_counter`` (signed, against ``counter_energy_j``; None without a counter) and ``note``.
    A rate above the trace's own mean rate cannot be resampled: its row has ``energy_j`` None and a note.
    """
    t, p = _as_trace(t_s, power_w)
    full_j = integrate_trapezoid(t, p)
    own_hz = trace_rate_hz(t)
    rows: list[dict] = []
    for rate in rates_hz:
        rate = float(rate)
        if not rate > 0:
            raise ValueError(f"rates_hz: {rate} is not a positive rate in Hz")
        row: dict = {"rate_hz": rate, "n_samples": 0, "energy_j": None, "rel_error_vs_full": None,
                     "rel_error_vs_counter": None, "note": None}
        if rate > own_hz * _RATE_TOLERANCE:
            row["note"] = f"skipped: {rate:g} Hz is above the trace's own rate of {own_hz:.4g} Hz"
            rows.append(row)
            continue
        idx = nearest_grid_indices(t, rate)
        energy_j = integrate_trapezoid(t[idx], p[idx])
        row.update(n_samples=int(idx.size), energy_j=energy_j, rel_error_vs_full=_relative_error(energy_j, full_j),
                   rel_error_vs_counter=_relative_error(energy_j, counter_energy_j))
        rows.append(row)
    return rows
