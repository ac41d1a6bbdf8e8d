"""Time and energy of a planned run from this machine's calibrations (`wattscale calibrate`), scaled by FLOPs.

A calibration row measured one preset at one precision, batch and sequence length: tokens/s (median of
its repeats, and their spread), training power by component, evaluation speed and one checkpoint's write
time. A planned run on the same device type and precision is estimated from them:

- the same preset, batch and seq_len: its tokens/s directly;
- otherwise by FLOPs: ``seconds = tokens x flops_per_token / FLOP/s``, the FLOP/s interpolated (in log
  FLOP/s against log FLOPs per optimiser step) between the two calibrations that bracket the run's FLOPs
  per step, or taken from the nearest one outside the calibrated range (extrapolated);
- evaluations (forward only, ``eval_tokens`` each, as many as the trainer will run), checkpoints (scaled by
  parameter count), the final save and the first, warm-up step are added the same way;
- energy = each part's seconds x the calibrated power of its phase (training power for all but evaluation).

The uncertainty ``u`` is one relative figure for time and energy, read as a factor: the true value is expected
between ``estimate / (1 + u)`` and ``estimate x (1 + u)`` (speed errors are multiplicative). It is the
calibration repeats' spread plus a floor for what a calibration does not see (a shared machine's load
changing, data loading), widened when the rate is scaled across presets or batch, more when extrapolated.
The constants are measured: see ``benchmarks/estimate_accuracy.py`` and docs/guides/estimates.md.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any

from wattscale.config import RunConfig
from wattscale.model import count_parameters, flops_per_token

# Relative uncertainties (see the module docstring and benchmarks/results/estimate_accuracy.json).
U_FLOOR = 0.50  # direct calibration of the same preset, batch and seq_len, on a shared machine
U_INTERPOLATED = 0.50  # added when FLOP/s is interpolated between two calibrations
U_EXTRAPOLATED = 1.0  # added when FLOP/s comes from the nearest calibration outside the range ...
U_PER_DECADE = 1.0  # ... plus this much per decade of FLOPs per step above it ...
# ... or below it: a smaller model's steps are dominated by fixed per-step costs that FLOPs do not see, so
# the FLOP/s of a bigger one overstates its speed (measured: a factor 2 to 4 at 0.8 decades).
U_PER_DECADE_BELOW = 3.5
SAVE_FRACTION_OF_CHECKPOINT = 1 / 3  # final weights only; a checkpoint adds AdamW's two moments


@dataclass(frozen=True)
class CalibrationPoint:
    """One calibration row, as the estimate uses it."""

    preset: str
    batch_size: int
    seq_len: int
    flops_per_token: float
    params_total: int
    tokens_per_second: float
    spread: float  # (max - min) / median of the repeats' tokens/s
    warmup_step_seconds: float | None
    eval_tokens_per_second: float | None
    checkpoint_seconds: float | None
    power_w: float | None
    eval_power_w: float | None
    energy_source: str | None
    hostname: str
    device_name: str
    load_average: float | None = None  # the host's 1-minute load average during the calibration
    cpu_count: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CalibrationPoint:
        """From a `Store.list_calibrations()` row."""
        median = row["tokens_per_second"]
        return cls(row["preset"], row["batch_size"], row["seq_len"], row["flops_per_token"], row["params_total"] or 0,
                   median, (row["tokens_per_second_max"] - row["tokens_per_second_min"]) / median,
                   row["warmup_step_seconds"], row["eval_tokens_per_second"], row["checkpoint_seconds"],
                   row["power_w"], row["eval_power_w"], row["energy_source"], row["hostname"], row["device_name"],
                   row.get("load_average"), row.get("cpu_count"))

    @property
    def step_flops(self) -> float:
        """Training FLOPs of one optimiser step."""
        return self.flops_per_token * self.batch_size * self.seq_len

    @property
    def flops_per_second(self) -> float:
        """Achieved training FLOP/s."""
        return self.tokens_per_second * self.flops_per_token


@dataclass(frozen=True)
class CalibratedEstimate:
    """Seconds and joules of a run's remaining tokens, their parts, basis and relative uncertainty."""

    seconds: float
    joules: float | None
    energy_source: str | None
    basis: str
    uncertainty: float
    parts_seconds: dict[str, float]  # train, warmup, eval, checkpoint, save


def choose_points(rows: list[dict[str, Any]], hostname: str | None = None,
                  threads: int | None = None) -> tuple[list[CalibrationPoint], str]:
    """The calibrations to estimate from (rows of one device type and precision): this host's if it has any,
    else the most recently calibrated host's; those measured with `threads` torch threads if there are any;
    the newest per (preset, batch, seq_len). Returns them and where they come from, e.g. ``"vm, AMD EPYC"``."""
    here = hostname or socket.gethostname()
    mine = [r for r in rows if r["hostname"] == here]
    if not mine and rows:
        newest = max(rows, key=lambda r: r["measured_at"])
        mine = [r for r in rows if r["hostname"] == newest["hostname"] and r["device_name"] == newest["device_name"]]
    if threads is not None and any(r["threads"] == threads for r in mine):
        mine = [r for r in mine if r["threads"] == threads]
    newest_per_key: dict[tuple, dict[str, Any]] = {}
    for row in sorted(mine, key=lambda r: r["measured_at"]):
        newest_per_key[(row["preset"], row["batch_size"], row["seq_len"])] = row
    points = sorted((CalibrationPoint.from_row(r) for r in newest_per_key.values()), key=lambda p: p.step_flops)
    origin = f"{points[0].hostname}, {points[0].device_name}" if points else ""
    loads = [p.load_average for p in points if p.load_average is not None]
    if loads:
        cpus = f" of {points[0].cpu_count} CPUs" if points[0].cpu_count else ""
        low, high = f"{min(loads):.1f}", f"{max(loads):.1f}"
        span = low if low == high else f"{low}-{high}"
        origin += f", calibrated at load {span}{cpus}"
    return points, origin


def estimate_from_calibration(config: RunConfig, remaining_tokens: int,
                              points: list[CalibrationPoint]) -> CalibratedEstimate | None:
    """The estimate of a run's remaining tokens from `points` (see `choose_points`); None without points."""
    if not points:
        return None
    tc, seq_len = config.train, config.seq_len
    fpt = flops_per_token(config.model, seq_len)
    step_flops = fpt * tc.batch_size * seq_len
    rate, how, u_basis, used = _training_rate(config, step_flops, points)
    fraction = remaining_tokens / tc.tokens
    parts = {"train": remaining_tokens * fpt / rate}
    nearest = min(used, key=lambda p: abs(math.log(p.step_flops / step_flops)))
    if nearest.warmup_step_seconds is not None and fraction > 0:
        steady = nearest.batch_size * nearest.seq_len / nearest.tokens_per_second
        parts["warmup"] = max(0.0, nearest.warmup_step_seconds - steady) * step_flops / nearest.step_flops
    n_evals, n_checkpoints = _evaluations_and_checkpoints(config)
    eval_rates = [(p, p.eval_tokens_per_second * p.flops_per_token) for p in used if p.eval_tokens_per_second]
    if eval_rates:
        eval_flops_per_second = math.exp(sum(math.log(r) for _, r in eval_rates) / len(eval_rates))
        eval_tokens = max(1, tc.eval_tokens // seq_len) * seq_len  # an upper bound: the split may be smaller
        parts["eval"] = math.ceil(n_evals * fraction) * eval_tokens * fpt / eval_flops_per_second
    by_params = min(points, key=lambda p: abs(math.log(max(p.params_total, 1) / count_parameters(config.model).total)))
    if by_params.checkpoint_seconds is not None:
        one = by_params.checkpoint_seconds * count_parameters(config.model).total / max(by_params.params_total, 1)
        parts["checkpoint"] = math.ceil(n_checkpoints * fraction) * one
        parts["save"] = one * SAVE_FRACTION_OF_CHECKPOINT
    joules, source = _energy(parts, used)
    spread = max(p.spread for p in used)
    return CalibratedEstimate(sum(parts.values()), joules, source, how, U_FLOOR + spread + u_basis, parts)


def _training_rate(config: RunConfig, step_flops: float,
                   points: list[CalibrationPoint]) -> tuple[float, str, float, list[CalibrationPoint]]:
    """(training FLOP/s, how it was found, the uncertainty it adds, the calibrations used)."""
    tc = config.train
    for p in points:
        if (p.preset, p.batch_size, p.seq_len) == (config.model.name, tc.batch_size, config.seq_len):
            return p.flops_per_second, "calibration: same preset, batch, seq_len", 0.0, [p]
    x = math.log(step_flops)
    below = [p for p in points if p.step_flops <= step_flops]
    above = [p for p in points if p.step_flops > step_flops]
    if below and above:
        lo, hi = below[-1], above[0]
        w = (x - math.log(lo.step_flops)) / (math.log(hi.step_flops) - math.log(lo.step_flops))
        rate = math.exp((1 - w) * math.log(lo.flops_per_second) + w * math.log(hi.flops_per_second))
        return rate, f"calibration: FLOP-scaled, between {_label(lo)} and {_label(hi)}", U_INTERPOLATED, [lo, hi]
    nearest = below[-1] if below else above[0]
    decades = abs(x - math.log(nearest.step_flops)) / math.log(10)
    per_decade = U_PER_DECADE if below else U_PER_DECADE_BELOW
    return (nearest.flops_per_second, f"calibration: FLOP-scaled from {_label(nearest)}, {decades:.1f} decades "
            f"{'above' if below else 'below'}", U_EXTRAPOLATED + per_decade * decades, [nearest])


def _label(p: CalibrationPoint) -> str:
    return f"{p.preset} {p.batch_size}x{p.seq_len}"


def _evaluations_and_checkpoints(config: RunConfig) -> tuple[int, int]:
    """How many evaluations and intermediate checkpoints the trainer runs for `config` (see train/session.py)."""
    tc = config.train
    steps = -(-tc.tokens // config.tokens_per_step)
    eval_interval = (max(1, tc.tokens // 10) if tc.eval_interval_tokens is None else tc.eval_interval_tokens) or None
    ckpt_interval = (eval_interval if tc.checkpoint_interval_tokens is None else tc.checkpoint_interval_tokens) or None
    n_evals = min(steps, -(-tc.tokens // eval_interval)) if eval_interval else 1
    n_checkpoints = min(steps, -(-tc.tokens // ckpt_interval)) - 1 if ckpt_interval else 0
    return n_evals + int(tc.eval_at_start), max(0, n_checkpoints)


def _energy(parts: dict[str, float], used: list[CalibrationPoint]) -> tuple[float | None, str | None]:
    """Joules of the parts at the calibrated powers (mean over the calibrations used), and their source."""
    powers = [p.power_w for p in used if p.power_w is not None]
    if not powers:
        return None, None
    power = sum(powers) / len(powers)
    evals = [p.eval_power_w for p in used if p.eval_power_w is not None]
    eval_power = sum(evals) / len(evals) if evals else power
    joules = sum(seconds * (eval_power if name == "eval" else power) for name, seconds in parts.items())
    sources = sorted({p.energy_source for p in used if p.energy_source})
    return joules, "/".join(sources) or None
