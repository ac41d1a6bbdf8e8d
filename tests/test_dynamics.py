"""Training dynamics checked against hand-computed values (statistics.stdev, numpy ddof=1)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from wattscale.analysis.dynamics import (
    MAD_SCALE,
    DynamicsConfig,
    across_seeds,
    backslides,
    per_seed_intervals,
    spikes,
    stable_phase,
)
from wattscale.errors import ConfigError


def _evals(curves: dict[str, list[float]], tokens_per_eval: int = 1000) -> pd.DataFrame:
    rows = []
    for run_id, losses in curves.items():
        for i, loss in enumerate(losses):
            rows.append((run_id, 10 * i, tokens_per_eval * i, loss, math.exp(loss)))
    return pd.DataFrame(rows, columns=["run_id", "step", "tokens_seen", "val_loss", "val_ppl"])


def _steps(run_id: str, losses: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": run_id,
            "step": range(len(losses)),
            "tokens_seen": [64 * i for i in range(len(losses))],
            "loss": losses,
        }
    )


CURVE = [4.0, 3.5, 3.2, 3.3, 3.0, 3.05]  # backslides at 3 (3.3 > 3.2) and 5 (3.05 > 3.0)


def test_six_evaluation_curve_by_hand():
    # rows typed in reverse order: the module must sort by tokens_seen
    rows = per_seed_intervals(_evals({"a": CURVE}).iloc[::-1], DynamicsConfig(volatility_window=3))["a"]
    deltas = [-0.5, -0.3, 0.1, -0.3, 0.05]
    assert [r.delta_loss for r in rows][0] is None
    assert [r.delta_loss for r in rows][1:] == pytest.approx(deltas)
    assert [r.volatility for r in rows][:3] == [None, None, None]
    assert rows[3].volatility == pytest.approx(statistics.stdev([-0.5, -0.3, 0.1]))
    assert rows[4].volatility == pytest.approx(statistics.stdev([-0.3, 0.1, -0.3]))
    assert rows[5].volatility == pytest.approx(statistics.stdev([0.1, -0.3, 0.05]))
    assert [r.best_so_far for r in rows] == [4.0, 3.5, 3.2, 3.2, 3.0, 3.0]
    assert [r.backslide for r in rows] == [False, False, False, True, False, True]
    assert [r.backslide_depth for r in rows] == pytest.approx([0, 0, 0, 0.1, 0, 0.05])
    assert [r.tokens_seen for r in rows] == [0, 1000, 2000, 3000, 4000, 5000]
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.as_dict().values())

    summary = backslides(_evals({"a": CURVE}))["a"]
    assert (summary.count, summary.intervals, summary.tokens_seen) == (2, (3, 5), (3000, 5000))
    assert summary.max_depth == pytest.approx(0.1)
    assert summary.mean_depth == pytest.approx(0.075)


def test_backslide_tolerance_and_no_backslides():
    summary = backslides(_evals({"a": CURVE}), DynamicsConfig(backslide_tolerance_nats=0.06))["a"]
    assert summary.intervals == (3,)  # 0.05 is within the tolerance, 0.1 is not
    none = backslides(_evals({"m": [3.0, 2.9, 2.8]}))["m"]
    assert (none.count, none.max_depth, none.mean_depth) == (0, None, None)


def test_short_run_is_not_computable_not_an_error():
    rows = per_seed_intervals(_evals({"one": [3.0]}))["one"]
    assert len(rows) == 1 and rows[0].volatility is None and rows[0].delta_loss is None


def test_two_injected_spikes_on_a_periodic_noise_floor():
    # period-5 floor: every 25-step window holds each offset 5 times -> median 2.0, MAD = 1.4826 * 0.005
    pattern = [-0.01, 0.0, 0.01, 0.005, -0.005]
    losses = [2.0 + pattern[i % 5] for i in range(200)]
    losses[80] += 0.5
    losses[150] += 0.3
    result = spikes(_steps("r", losses), DynamicsConfig(spike_k=3.0, spike_window=25))["r"]
    assert result.steps == (80, 150)
    assert result.count == 2 and result.steps_tested == 175
    assert result.excess_nats == pytest.approx([losses[80] - 2.0, losses[150] - 2.0])
    mad = MAD_SCALE * 0.005
    assert result.size_mads == pytest.approx([(losses[80] - 2.0) / mad, (losses[150] - 2.0) / mad])


def test_constant_series_with_zero_mad_flags_a_jump():
    losses = [2.0] * 30 + [2.5] + [2.0] * 5
    result = spikes(_steps("c", losses))["c"]
    assert result.steps == (30,)
    assert result.excess_nats == pytest.approx([0.5])
    assert result.size_mads == (None,)


def test_across_seeds_matches_numpy():
    rng = np.random.default_rng(0)
    curves = {f"s{i}": list(3.0 - 0.2 * np.arange(4) + rng.normal(0, 0.05, 4)) for i in range(3)}
    spread = across_seeds(per_seed_intervals(_evals(curves), seeds={"s0": 0, "s1": 1, "s2": 2}))
    matrix = np.array([curves[f"s{i}"] for i in range(3)])  # shape (seeds, intervals)
    assert len(spread) == 4
    for i, row in enumerate(spread):
        assert row.n_seeds == 3 and row.tokens_seen == 1000 * i
        assert row.val_loss_mean == pytest.approx(np.mean(matrix[:, i]))
        assert row.val_loss_sd == pytest.approx(np.std(matrix[:, i], ddof=1))
        assert row.val_loss_cv == pytest.approx(np.std(matrix[:, i], ddof=1) / np.mean(matrix[:, i]))
        ppl = np.exp(matrix[:, i])
        assert row.val_ppl_mean == pytest.approx(np.mean(ppl))
        assert row.val_ppl_sd == pytest.approx(np.std(ppl, ddof=1))
        assert row.val_ppl_cv == pytest.approx(np.std(ppl, ddof=1) / np.mean(ppl))


def test_across_seeds_single_seed_has_no_sd():
    (row,) = across_seeds(per_seed_intervals(_evals({"a": [3.0]})))
    assert (row.n_seeds, row.val_loss_sd, row.val_loss_cv) == (1, None, None)


def test_across_seeds_disagreeing_tokens_names_them():
    frame = _evals({"a": [3.0, 2.9, 2.8], "b": [3.1, 2.95, 2.85]})
    frame.loc[(frame.run_id == "b") & (frame.tokens_seen == 2000), "tokens_seen"] = 2048
    with pytest.raises(ConfigError, match=r"tokens_seen \[2000, 2048\].*run\(s\) a, b"):
        across_seeds(per_seed_intervals(frame))


SETTLES = [5.0, 4.0, 3.99, 3.98, 3.97, 3.96, 3.95]  # w=2: vol[2] = sd(-1, -0.01) large, vol[3:] ~ 0


def test_stable_phase_settles_after_interval_3():
    config = DynamicsConfig(volatility_window=2, stable_volatility_nats=0.01)
    report = stable_phase(per_seed_intervals(_evals({"a": SETTLES}), config), config)
    assert report.per_run["a"].interval == 3
    assert report.per_run["a"].tokens_seen == 3000
    assert report.across_seeds.interval == 3


def test_stable_phase_late_backslide_is_none_with_reason():
    config = DynamicsConfig(volatility_window=2, stable_volatility_nats=0.01)
    late = SETTLES[:-1] + [3.975]  # last eval 0.015 above the best (3.96)
    report = stable_phase(per_seed_intervals(_evals({"a": SETTLES, "b": late}), config), config)
    assert report.per_run["a"].interval == 3
    b = report.per_run["b"]
    assert b.interval is None and b.tokens_seen is None
    assert "backslide of 0.015" in b.reason and "interval 6" in b.reason
    assert report.across_seeds.interval is None and "b" in report.across_seeds.reason


def test_stable_phase_across_seeds_is_latest_start():
    config = DynamicsConfig(volatility_window=2, stable_volatility_nats=0.01)
    later = [5.0, 4.0, 3.5, 3.0, 2.99, 2.98, 2.97]  # vol[4] = sd(-0.5, -0.01) large -> stable from 5
    report = stable_phase(per_seed_intervals(_evals({"a": SETTLES, "b": later}), config), config)
    assert (report.per_run["a"].interval, report.per_run["b"].interval) == (3, 5)
    assert report.across_seeds.interval == 5


def test_bad_input_raises_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="missing column.*val_ppl"):
        per_seed_intervals(_evals({"a": CURVE}).drop(columns="val_ppl"))
    nan = _evals({"a": CURVE})
    nan.loc[2, "val_loss"] = float("nan")
    with pytest.raises(ConfigError, match=r"evaluations\.val_loss .*run 'a'.*tokens_seen 2000"):
        per_seed_intervals(nan)
    with pytest.raises(ConfigError, match="duplicate"):
        per_seed_intervals(pd.concat([_evals({"a": CURVE}), _evals({"a": CURVE})]))
    with pytest.raises(ConfigError, match="train_steps is missing column.*loss"):
        spikes(_steps("r", [1.0, 2.0]).drop(columns="loss"))
    with pytest.raises(ConfigError, match="seeds has no entry for run.*b"):
        per_seed_intervals(_evals({"a": CURVE, "b": CURVE}), seeds={"a": 0})
    with pytest.raises(ConfigError, match="volatility_window.*spike_k"):
        DynamicsConfig(volatility_window=1, spike_k=0)
