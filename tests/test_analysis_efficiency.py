"""wattscale.analysis.efficiency against hand arithmetic and scipy; the returns on tokens by hand."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest
from scipy import stats as sps

from wattscale.analysis.efficiency import metric_names, run_efficiency, summarise
from wattscale.analysis.returns import metric_returns
from wattscale.confidence import mean_ci
from wattscale.errors import ConfigError

RECORD = {
    "run_id": "a", "tokens_seen": 8_000, "energy_j": 400.0, "energy_source": "counter", "wall_seconds": 1_800.0,
    "flops_per_token": 3.0e6, "params_total": 4_000_000, "final_val_loss": math.log(20.0), "final_val_ppl": 20.0,
    "step_seconds": 1_200.0, "config_json": json.dumps({"model": {"vocab_size": 256}}),
    "device_info_json": json.dumps({"peak_flops": 1.0e8, "peak_flops_source": "measured"}),
}


def test_every_metric_by_hand() -> None:
    eff = run_efficiency(RECORD)
    m = eff.metrics
    kwh = 400.0 / 3.6e6
    assert m["tokens_per_joule"] == pytest.approx(20.0)
    assert m["joules_per_token"] == pytest.approx(0.05)
    assert m["flops_per_joule"] == pytest.approx(3.0e6 * 8_000 / 400.0)
    assert m["mfu"] == pytest.approx(3.0e6 * 8_000 / 1_200.0 / 1.0e8)  # step time, not wall time
    assert m["wall_s"] == 1_800.0 and m["energy_kwh"] == pytest.approx(kwh)
    # No evaluation at 0 tokens: the initial perplexity is the uniform one, the vocabulary size.
    assert eff.initial_ppl_source.startswith("uniform")
    assert m["ppl_gain_per_kwh"] == pytest.approx((256 - 20) / kwh)
    assert m["pe"] == pytest.approx((1 / 20) / 4.0)
    assert m["pee"] == pytest.approx((1 / 20) / (4.0 * kwh))
    assert m["pee_time"] == pytest.approx((1 / 20) / (4.0 * kwh) / 0.5)  # 1,800 s = half an hour
    assert eff.energy_source == "counter" and eff.not_computable == {}


# A run measured by phase: 6,000 of its 8,000 tokens in the training phase (the rest in the warm-up), 240 J and
# 900 s there; the job took 400 J and 1,800 s with its evaluations, checkpoints and saving.
PHASED = {**RECORD, "train_energy_j": 240.0, "train_tokens": 6_000, "train_seconds": 900.0}


def test_efficiency_uses_the_training_phase_by_default_and_the_job_on_request() -> None:
    train = run_efficiency(PHASED)
    m = train.metrics
    assert train.energy_basis == "train"
    assert m["tokens_per_joule"] == pytest.approx(6_000 / 240.0)
    assert m["joules_per_token"] == pytest.approx(0.04)
    assert m["flops_per_joule"] == pytest.approx(3.0e6 * 6_000 / 240.0)
    assert m["energy_j"] == 240.0 and m["energy_kwh"] == pytest.approx(240.0 / 3.6e6)
    assert m["ppl_gain_per_kwh"] == pytest.approx((256 - 20) / (240.0 / 3.6e6))
    assert m["pee_time"] == pytest.approx((1 / 20) / (4.0 * 240.0 / 3.6e6) / 0.25)  # 900 s of training
    # The whole job stays beside it, and MFU is the training phase's whatever the basis.
    assert m["job_energy_j"] == 400.0 and m["job_joules_per_token"] == pytest.approx(0.05)
    assert m["mfu"] == pytest.approx(3.0e6 * 6_000 / 900.0 / 1.0e8)
    job = run_efficiency(PHASED, energy_basis="job")
    assert job.energy_basis == "job" and job.metrics["joules_per_token"] == pytest.approx(0.05)
    assert job.metrics["mfu"] == m["mfu"] and job.metrics["pee_time"] == pytest.approx(
        (1 / 20) / (4.0 * 400.0 / 3.6e6) / 0.5)
    # A run stored before phases were measured falls back to the job, and says so (the study's warnings list it).
    old = run_efficiency(RECORD)
    assert old.energy_basis == "job" and old.to_dict()["energy_basis"] == "job"
    with pytest.raises(ConfigError, match="energy_basis"):
        run_efficiency(RECORD, energy_basis="wall")


def test_initial_perplexity_from_an_evaluation_at_zero_and_given_peak_wins() -> None:
    eff = run_efficiency({**RECORD, "initial_val_ppl": 300.0}, peak_flops=2.0e8)
    assert eff.initial_ppl_source == "evaluation at 0 tokens"
    assert eff.metrics["ppl_gain_per_kwh"] == pytest.approx(280 / (400 / 3.6e6))
    assert eff.metrics["mfu"] == pytest.approx(3.0e6 * 8_000 / 1_200.0 / 2.0e8) and eff.peak_flops_source.startswith(
        "given")


def test_mfu_uses_the_recorded_peak_of_all_devices_and_scales_old_per_device_records() -> None:
    flops_per_s = 3.0e6 * 8_000 / 1_200.0
    # New records: peak_flops already covers the devices used.
    new = {**RECORD, "device_info_json": json.dumps({
        "world_size": 4, "peak_flops": 4.0e8, "peak_flops_per_device": 1.0e8, "peak_flops_devices": 4,
        "peak_flops_source": "datasheet X bf16 dense"})}
    eff = run_efficiency(new)
    assert eff.metrics["mfu"] == pytest.approx(flops_per_s / 4.0e8) and eff.peak_flops == 4.0e8
    assert eff.peak_flops_source == "datasheet X bf16 dense"
    # Records from before peak_flops_devices: one device's peak, so x world_size, and the source says so.
    old = {**RECORD, "device_info_json": json.dumps({"world_size": 4, "peak_flops": 1.0e8,
                                                     "peak_flops_source": "datasheet X bf16 dense"})}
    eff = run_efficiency(old)
    assert eff.metrics["mfu"] == pytest.approx(flops_per_s / 4.0e8) and eff.peak_flops == 4.0e8
    assert eff.peak_flops_source.startswith("datasheet X bf16 dense; x 4 processes")
    # One process, old or new: unchanged.
    single = {**RECORD, "device_info_json": json.dumps({"world_size": 1, "peak_flops": 1.0e8})}
    assert run_efficiency(single).metrics["mfu"] == pytest.approx(flops_per_s / 1.0e8)
    # A peak given by the user is the run's whole peak and is not scaled.
    assert run_efficiency(old, peak_flops=2.0e8).metrics["mfu"] == pytest.approx(flops_per_s / 2.0e8)


def test_missing_energy_and_peak_are_none_with_reasons_never_zero() -> None:
    record = {**RECORD, "energy_j": None, "energy_source": None, "device_info_json": None}
    eff = run_efficiency(record)
    for name in ("tokens_per_joule", "joules_per_token", "flops_per_joule", "energy_j", "pee", "pee_time",
                 "ppl_gain_per_kwh", "mfu"):
        assert eff.metrics[name] is None, name
    assert "no energy measured" in eff.not_computable["energy"] and "--peak-flops" in eff.not_computable["mfu"]
    assert eff.metrics["pe"] == pytest.approx(1 / 20 / 4.0)  # what needs no energy is still there


def test_user_metrics_and_a_failing_one() -> None:
    extra = {"tokens_per_second": lambda r: r["tokens_seen"] / r["wall_seconds"], "broken": lambda r: r["nope"]}
    eff = run_efficiency(RECORD, extra)
    assert eff.metrics["tokens_per_second"] == pytest.approx(8_000 / 1_800)
    assert eff.metrics["broken"] is None and "KeyError" in eff.not_computable["broken"]
    assert metric_names(extra)[-2:] == ["tokens_per_second", "broken"]
    with pytest.raises(ConfigError, match="built-in"):
        metric_names({"mfu": lambda r: 1.0})


def test_mean_ci_is_scipys_t_interval() -> None:
    values = [3.1, 2.7, 3.9, 3.3, 2.8]
    mean, sd, lo, hi = mean_ci(values)
    expected = sps.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=sps.sem(values))
    assert mean == pytest.approx(statistics.fmean(values)) and sd == pytest.approx(statistics.stdev(values))
    assert (lo, hi) == pytest.approx(expected)
    assert mean_ci([1.0]) == (1.0, None, None, None) and mean_ci([]) == (None, None, None, None)


def test_summarise_counts_missing_values_and_mixed_sources() -> None:
    runs = [run_efficiency({**RECORD, "run_id": "a"}), run_efficiency({**RECORD, "run_id": "b", "energy_j": 800.0,
                                                                         "energy_source": "estimated"}),
            run_efficiency({**RECORD, "run_id": "c", "energy_j": None, "energy_source": None})]
    (row,) = summarise(runs, {"a": 1, "b": 1, "c": 1}, ["tokens_per_joule"])
    assert row.n == 2 and row.mean == pytest.approx(15.0)
    assert "1 of 3 run(s) without a value" in row.note and "mixed: counter, estimated" in row.note


def _returns_frame() -> pd.DataFrame:
    rows = []
    for rep in range(4):
        for i, tokens in enumerate((1_000, 2_000, 8_000)):
            rows.append({"rep": rep, "tokens_seen": tokens, "final_val_loss": 5.0 - 0.4 * i + 0.05 * rep * i,
                         "energy_kwh": tokens * (1 + 0.1 * rep) / 1e6})
    return pd.DataFrame(rows)


def test_returns_on_tokens_by_hand() -> None:
    frame = _returns_frame()
    result = metric_returns(frame, "final_val_loss", "tokens_seen", "rep")
    first, second = result.steps
    # Step 1: 1,000 -> 2,000 tokens is one doubling; gain = 0.4 - 0.05 rep per subject.
    gains = [0.4 - 0.05 * rep for rep in range(4)]
    assert first.kind == "gain" and first.per_doubling.mean == pytest.approx(statistics.fmean(gains))
    extra_kwh = [1_000 * (1 + 0.1 * rep) / 1e6 for rep in range(4)]
    per_kwh = [g / e for g, e in zip(gains, extra_kwh, strict=True)]
    assert first.per_kwh.mean == pytest.approx(statistics.fmean(per_kwh))
    half = sps.t.ppf(0.975, 3) * statistics.stdev(per_kwh) / 2
    assert (first.per_kwh.ci95_low, first.per_kwh.ci95_high) == pytest.approx(
        (statistics.fmean(per_kwh) - half, statistics.fmean(per_kwh) + half))
    # Step 2: 2,000 -> 8,000 tokens is two doublings; the same gain per step, so half of it per doubling.
    assert second.per_doubling.mean == pytest.approx(statistics.fmean(gains) / 2)
    # Two steps: the diminishing-returns test is a paired t-test of the per-doubling gains.
    expected = sps.ttest_rel([g for g in gains], [g / 2 for g in gains])
    assert result.diminishing["p_unc"] == pytest.approx(expected.pvalue)
    assert "falls" in result.note


def test_returns_refuse_a_factor_that_does_not_order_tokens() -> None:
    frame = _returns_frame().assign(preset=lambda f: ["b", "a", "c"] * 4)
    frame["tokens_seen"] = 1_000
    with pytest.raises(ConfigError, match="does not order token counts"):
        metric_returns(frame, "final_val_loss", "preset", "rep")
