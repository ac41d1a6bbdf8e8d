"""Training dynamics per token interval: volatility, backslides, spikes, seed spread, stable phase.

Inputs are DataFrames shaped like the store's tables:

- ``evaluations``: one row per (run_id, tokens_seen) with columns ``run_id, step, tokens_seen,
  val_loss, val_ppl`` (loss in nats per token, perplexity = exp(loss)).
- ``train_steps``: one row per (run_id, step) with columns ``run_id, step, tokens_seen, loss``.

Definitions (DESIGN.md, "Training dynamics"); every window and threshold is a field of
`DynamicsConfig`:

- **Interval** i of a run is its i-th evaluation ordered by ``tokens_seen`` (i = 0, 1, ...);
  interval i covers the training between evaluation i-1 and evaluation i. Interval 0 is the
  first evaluation and has no change (``delta_loss`` is None).
- **delta_loss** at i = val_loss[i] - val_loss[i-1] (nats).
- **Rolling volatility** at i = sample standard deviation (ddof=1) of the last
  ``volatility_window`` changes delta_loss[i-w+1 .. i]; None ("not computable") while fewer than
  w changes exist, i.e. for i < w. Default w = 3 changes (spanning 4 evaluations).
- **best_so_far** at i = min(val_loss[0 .. i]).
- **Backslide** at i >= 1: val_loss[i] > min(val_loss[0 .. i-1]) + ``backslide_tolerance_nats``;
  its depth is val_loss[i] - min(val_loss[0 .. i-1]) (nats; 0.0 when not a backslide).
  Default tolerance 0.0 nats: any evaluation above the best before it counts.
- **Spike**: a training step whose loss exceeds the median of the previous ``spike_window`` steps
  (the step itself excluded) by more than ``spike_k`` scaled MADs, where
  MAD = 1.4826 * median(|x - median|) (the 1.4826 makes it estimate the SD of normal data).
  The first ``spike_window`` steps of a run have no full window and are not tested. When the
  window's MAD is 0 (a constant window) the threshold is 0: any loss above the median is a spike,
  and its size in MADs is None (infinite). Defaults: k = 3, window = 25 steps.
- **Between-seed variability** per interval: mean, SD (ddof=1) and CV = SD / mean of val_loss and
  val_ppl across runs (seeds); SD and CV are None with fewer than 2 seeds.
- **Stable phase** of a run: the first interval s such that for every interval i >= s up to the
  last, volatility is computable and < ``stable_volatility_nats`` and i is not a backslide.
  Default threshold 0.01 nats. Across seeds, the stable phase starts at the latest per-seed start
  (the first interval from which every seed is stable); None if any seed has none.

Non-finite losses (a diverged run stores NULL/NaN) are rejected with a `ConfigError` naming the
run: filter diverged runs out before analysing dynamics.

Example::

    rows = per_seed_intervals(evaluations, DynamicsConfig(), seeds={"run-a": 0, "run-b": 1})
    spread = across_seeds(rows)
    phase = stable_phase(rows, DynamicsConfig())
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import pandas as pd

from wattscale.errors import ConfigError

MAD_SCALE = 1.4826
EVALUATION_COLUMNS = ("run_id", "step", "tokens_seen", "val_loss", "val_ppl")
TRAIN_STEP_COLUMNS = ("run_id", "step", "tokens_seen", "loss")


@dataclass(frozen=True)
class DynamicsConfig:
    """Windows and thresholds of the dynamics definitions (see the module docstring).

    volatility_window: number of successive val-loss changes in the rolling SD (>= 2); default 3.
    backslide_tolerance_nats: how far above the best-so-far loss an eval must be (>= 0); default 0.0.
    spike_k: threshold in scaled rolling MADs (> 0); default 3.0.
    spike_window: number of previous training steps in the rolling median/MAD (>= 2); default 25.
    stable_volatility_nats: volatility below which an interval counts as stable (> 0); default 0.01.
    """

    volatility_window: int = 3
    backslide_tolerance_nats: float = 0.0
    spike_k: float = 3.0
    spike_window: int = 25
    stable_volatility_nats: float = 0.01

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.volatility_window, int) or self.volatility_window < 2:
            problems.append(f"volatility_window must be an integer >= 2, got {self.volatility_window!r}")
        if not _finite(self.backslide_tolerance_nats) or self.backslide_tolerance_nats < 0:
            problems.append(f"backslide_tolerance_nats must be >= 0, got {self.backslide_tolerance_nats!r}")
        if not _finite(self.spike_k) or self.spike_k <= 0:
            problems.append(f"spike_k must be > 0, got {self.spike_k!r}")
        if not isinstance(self.spike_window, int) or self.spike_window < 2:
            problems.append(f"spike_window must be an integer >= 2, got {self.spike_window!r}")
        if not _finite(self.stable_volatility_nats) or self.stable_volatility_nats <= 0:
            problems.append(f"stable_volatility_nats must be > 0, got {self.stable_volatility_nats!r}")
        if problems:
            raise ConfigError("DynamicsConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class IntervalDynamics:
    """One run at one interval. Losses in nats; None means "not computable", never NaN."""

    run_id: str
    seed: int | None
    interval: int
    step: int
    tokens_seen: int
    val_loss: float
    val_ppl: float
    delta_loss: float | None
    volatility: float | None
    best_so_far: float
    backslide: bool
    backslide_depth: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BackslideSummary:
    """Backslides of one run; depths in nats, None when there are none."""

    run_id: str
    count: int
    max_depth: float | None
    mean_depth: float | None
    intervals: tuple[int, ...]
    tokens_seen: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SpikeSummary:
    """Spikes of one run. ``excess_nats`` = loss - rolling median; ``size_mads`` = excess / MAD (None if MAD 0)."""

    run_id: str
    count: int
    steps_tested: int
    steps: tuple[int, ...]
    excess_nats: tuple[float, ...]
    size_mads: tuple[float | None, ...]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SeedSpread:
    """Between-seed variability at one interval; SD and CV are None with fewer than 2 seeds."""

    interval: int
    tokens_seen: int
    n_seeds: int
    val_loss_mean: float
    val_loss_sd: float | None
    val_loss_cv: float | None
    val_ppl_mean: float
    val_ppl_sd: float | None
    val_ppl_cv: float | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StablePhase:
    """Where a stable phase starts (run_id None = across seeds), or None with the reason."""

    run_id: str | None
    interval: int | None
    tokens_seen: int | None
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StablePhaseReport:
    per_run: dict[str, StablePhase]
    across_seeds: StablePhase


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_frame(frame: pd.DataFrame, name: str, columns: tuple[str, ...], keys: tuple[str, str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{name} is missing column(s): {', '.join(missing)}")
    if frame.empty:
        raise ConfigError(f"{name} has no rows")
    dup = frame[frame.duplicated(list(keys), keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise ConfigError(f"{name} has duplicate ({', '.join(keys)}) rows, e.g. {first[keys[0]]!r}, {first[keys[1]]}")
    for col in columns[1:]:
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        bad = frame[~values.map(math.isfinite)]
        if not bad.empty:
            row = bad.iloc[0]
            raise ConfigError(
                f"{name}.{col} is missing or not finite for run {row['run_id']!r} at {keys[1]} {row[keys[1]]}"
                " (drop diverged runs before analysing dynamics)"
            )


def per_seed_intervals(
    evaluations: pd.DataFrame, config: DynamicsConfig | None = None, seeds: Mapping[str, int] | None = None
) -> dict[str, tuple[IntervalDynamics, ...]]:
    """Per run (keyed by run_id, in sorted order): one `IntervalDynamics` per evaluation, by tokens_seen.

    ``seeds`` maps run_id -> seed; when given it must cover every run and no seed may repeat.
    A run with fewer than w + 1 evaluations has volatility None at every interval.
    """
    config = config or DynamicsConfig()
    _check_frame(evaluations, "evaluations", EVALUATION_COLUMNS, ("run_id", "tokens_seen"))
    run_ids = sorted(str(r) for r in evaluations["run_id"].unique())
    if seeds is not None:
        missing = [r for r in run_ids if r not in seeds]
        if missing:
            raise ConfigError(f"seeds has no entry for run(s): {', '.join(missing)}")
        used = [seeds[r] for r in run_ids]
        repeated = sorted({s for s in used if used.count(s) > 1})
        if repeated:
            raise ConfigError(f"seeds: seed(s) {repeated} belong to more than one run")
    out = {}
    for run_id in run_ids:
        run = evaluations[evaluations["run_id"].astype(str) == run_id].sort_values("tokens_seen")
        seed = None if seeds is None else int(seeds[run_id])
        out[run_id] = _run_intervals(run_id, seed, run, config)
    return out


def _run_intervals(run_id: str, seed: int | None, run: pd.DataFrame, config: DynamicsConfig) -> tuple:
    losses = [float(x) for x in run["val_loss"]]
    ppls = [float(x) for x in run["val_ppl"]]
    steps = [int(x) for x in run["step"]]
    tokens = [int(x) for x in run["tokens_seen"]]
    w = config.volatility_window
    deltas: list[float | None] = [None] + [losses[i] - losses[i - 1] for i in range(1, len(losses))]
    rows = []
    best_before = math.inf
    for i, loss in enumerate(losses):
        volatility = statistics.stdev(deltas[i - w + 1 : i + 1]) if i >= w else None
        backslide = i > 0 and loss > best_before + config.backslide_tolerance_nats
        depth = loss - best_before if backslide else 0.0
        best_before = min(best_before, loss)
        rows.append(
            IntervalDynamics(
                run_id=run_id,
                seed=seed,
                interval=i,
                step=steps[i],
                tokens_seen=tokens[i],
                val_loss=loss,
                val_ppl=ppls[i],
                delta_loss=deltas[i],
                volatility=volatility,
                best_so_far=best_before,
                backslide=backslide,
                backslide_depth=depth,
            )
        )
    return tuple(rows)


def backslides(evaluations: pd.DataFrame, config: DynamicsConfig | None = None) -> dict[str, BackslideSummary]:
    """Per run: number of backslides, max and mean depth (nats), and where (interval, tokens_seen)."""
    out = {}
    for run_id, rows in per_seed_intervals(evaluations, config).items():
        hits = [r for r in rows if r.backslide]
        depths = [r.backslide_depth for r in hits]
        out[run_id] = BackslideSummary(
            run_id=run_id,
            count=len(hits),
            max_depth=max(depths) if depths else None,
            mean_depth=statistics.fmean(depths) if depths else None,
            intervals=tuple(r.interval for r in hits),
            tokens_seen=tuple(r.tokens_seen for r in hits),
        )
    return out


def spikes(train_steps: pd.DataFrame, config: DynamicsConfig | None = None) -> dict[str, SpikeSummary]:
    """Per run: training steps whose loss exceeds the rolling median of the previous steps by > k MADs."""
    config = config or DynamicsConfig()
    _check_frame(train_steps, "train_steps", TRAIN_STEP_COLUMNS, ("run_id", "step"))
    out = {}
    for run_id in sorted(str(r) for r in train_steps["run_id"].unique()):
        run = train_steps[train_steps["run_id"].astype(str) == run_id].sort_values("step")
        losses = [float(x) for x in run["loss"]]
        step_ids = [int(x) for x in run["step"]]
        n = config.spike_window
        hit_steps, excesses, sizes = [], [], []
        for j in range(n, len(losses)):
            window = losses[j - n : j]
            median = statistics.median(window)
            mad = MAD_SCALE * statistics.median(abs(x - median) for x in window)
            excess = losses[j] - median
            if excess > config.spike_k * mad:  # with mad == 0: any rise above the median
                hit_steps.append(step_ids[j])
                excesses.append(excess)
                sizes.append(excess / mad if mad > 0 else None)
        out[run_id] = SpikeSummary(
            run_id=run_id,
            count=len(hit_steps),
            steps_tested=max(0, len(losses) - n),
            steps=tuple(hit_steps),
            excess_nats=tuple(excesses),
            size_mads=tuple(sizes),
        )
    return out


def across_seeds(per_seed: Mapping[str, tuple[IntervalDynamics, ...]]) -> tuple[SeedSpread, ...]:
    """Per interval, matched by tokens_seen: mean, SD (ddof=1) and CV of val_loss and val_ppl across runs.

    Every run must have evaluations at the same tokens_seen; otherwise a `ConfigError` names the
    tokens_seen values that not every run has.
    """
    if not per_seed:
        raise ConfigError("across_seeds: per_seed has no runs")
    grids = {run_id: [r.tokens_seen for r in rows] for run_id, rows in per_seed.items()}
    all_tokens = sorted({t for grid in grids.values() for t in grid})
    if any(grid != all_tokens for grid in grids.values()):
        partial = [t for t in all_tokens if any(t not in grid for grid in grids.values())]
        lacking = sorted(r for r, grid in grids.items() if any(t not in grid for t in partial))
        raise ConfigError(
            f"across_seeds: seeds disagree on tokens_seen {partial[:10]} (missing in run(s) {', '.join(lacking)})"
        )
    out = []
    for i, tokens in enumerate(all_tokens):
        losses = [rows[i].val_loss for rows in per_seed.values()]
        ppls = [rows[i].val_ppl for rows in per_seed.values()]
        loss_mean, loss_sd, loss_cv = _spread(losses)
        ppl_mean, ppl_sd, ppl_cv = _spread(ppls)
        out.append(SeedSpread(i, tokens, len(losses), loss_mean, loss_sd, loss_cv, ppl_mean, ppl_sd, ppl_cv))
    return tuple(out)


def _spread(values: list[float]) -> tuple[float, float | None, float | None]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    sd = statistics.stdev(values)
    return mean, sd, (sd / mean if mean != 0 else None)


def stable_phase(
    per_seed: Mapping[str, tuple[IntervalDynamics, ...]], config: DynamicsConfig | None = None
) -> StablePhaseReport:
    """Per run and across seeds: first interval from which the curve stays stable to the end, or None + reason.

    Volatility and backslides are read from ``per_seed`` as computed by `per_seed_intervals`
    (so with the window and tolerance given there); only ``stable_volatility_nats`` is taken
    from ``config``. Pass the same config to both.
    """
    config = config or DynamicsConfig()
    if not per_seed:
        raise ConfigError("stable_phase: per_seed has no runs")
    per_run = {run_id: _run_stable_phase(run_id, rows, config) for run_id, rows in per_seed.items()}
    unstable = sorted(r for r, p in per_run.items() if p.interval is None)
    if unstable:
        across = StablePhase(None, None, None, f"no stable phase: run(s) {', '.join(unstable)} never settle")
    else:
        latest = max(per_run.values(), key=lambda p: p.interval)
        across = StablePhase(
            None,
            latest.interval,
            latest.tokens_seen,
            f"every seed is stable from interval {latest.interval} (latest start: run {latest.run_id})",
        )
    return StablePhaseReport(per_run=per_run, across_seeds=across)


def _violations(row: IntervalDynamics, threshold: float) -> list[str]:
    found = []
    if row.volatility is None:
        found.append("volatility not computable (fewer than volatility_window changes)")
    elif row.volatility >= threshold:
        found.append(f"volatility {row.volatility:.6g} >= {threshold:g} nats")
    if row.backslide:
        found.append(f"backslide of {row.backslide_depth:.6g} nats")
    return found


def _run_stable_phase(run_id: str, rows: tuple[IntervalDynamics, ...], config: DynamicsConfig) -> StablePhase:
    if not rows:
        return StablePhase(run_id, None, None, "no stable phase: run has no evaluations")
    threshold = config.stable_volatility_nats
    start = len(rows)
    for row in reversed(rows):
        if _violations(row, threshold):
            break
        start = row.interval
    if start == len(rows):
        last = rows[-1]
        why = "; ".join(_violations(last, threshold))
        return StablePhase(
            run_id,
            None,
            None,
            f"no stable phase: last interval {last.interval} (tokens_seen {last.tokens_seen}): {why}",
        )
    first = rows[start]
    return StablePhase(
        run_id,
        start,
        first.tokens_seen,
        f"volatility < {threshold:g} nats and no backslide from interval {start} to the end",
    )
