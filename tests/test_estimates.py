"""Estimates before running: `wattscale calibrate`, the calibration basis of `plan` and `train --dry-run`.

The estimate arithmetic is checked against hand-computed values from made-up calibration rows; the end-to-end
tests calibrate this machine for real (tiny preset, few steps) and then train the estimated run.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path

import pytest

from wattscale.config import build_run_config
from wattscale.experiment.calibrated import (
    U_EXTRAPOLATED,
    U_FLOOR,
    U_INTERPOLATED,
    U_PER_DECADE,
    U_PER_DECADE_BELOW,
    choose_points,
    estimate_from_calibration,
)
from wattscale.experiment.estimate import EstimateInputs, estimate_run
from wattscale.footprint import FootprintSettings
from wattscale.model import ModelConfig, count_parameters, flops_per_token
from wattscale.store import open_store

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "token_scale_energy.toml"
HOST = socket.gethostname()


def calibration_row(preset: str, batch: int, seq_len: int, tokens_per_second: float, *, spread: float = 0.1,
                    power_w: float | None = 20.0, hostname: str = HOST, precision: str = "fp32",
                    device_type: str = "cpu", measured_at: str = "2026-01-01T00:00:00+00:00",
                    threads: int | None = None, **overrides) -> dict:
    """A calibrations row as Store.list_calibrations() returns it."""
    model = ModelConfig.from_name(preset)
    fpt = flops_per_token(model, seq_len)
    row = {"calibration_id": f"{preset}-{batch}-{seq_len}", "measured_at": measured_at, "hostname": hostname,
           "cpu_model": "Test CPU", "device_type": device_type, "device_name": "Test CPU", "threads": threads,
           "torch_version": "2", "wattscale_version": "0", "preset": preset, "precision": precision,
           "batch_size": batch, "seq_len": seq_len, "params_total": count_parameters(model).total,
           "flops_per_token": fpt, "steps_per_repeat": 5, "warmup_steps": 1, "repeats": 3,
           "tokens_per_second": tokens_per_second, "tokens_per_second_min": tokens_per_second * (1 - spread / 2),
           "tokens_per_second_max": tokens_per_second * (1 + spread / 2), "tokens_per_second_json": "[]",
           "flops_per_second": tokens_per_second * fpt, "warmup_step_seconds": None,
           "eval_tokens_per_second": None, "checkpoint_seconds": None, "checkpoint_bytes": None,
           "power_w": power_w, "power_w_json": None, "eval_power_w": None,
           "energy_source": "estimated" if power_w is not None else None, "details_json": None}
    row.update(overrides)
    return row


def run_config(preset: str, tokens: int, batch: int, seq_len: int, **train) -> object:
    return build_run_config(overrides={"model": {"preset": preset}, "train": {
        "tokens": tokens, "batch_size": batch, "seq_len": seq_len, "device": "cpu", "precision": "fp32",
        "eval_interval_tokens": 0, "checkpoint_interval_tokens": 0, **train}})


# --- the arithmetic, by hand ------------------------------------------------------------------------------


def test_same_preset_uses_its_tokens_per_second_and_power() -> None:
    points, origin = choose_points([calibration_row("llama-tiny", 4, 32, 10_000.0, spread=0.2, power_w=25.0)])
    est = estimate_from_calibration(run_config("llama-tiny", 50_000, 4, 32), 50_000, points)
    assert origin == f"{HOST}, Test CPU"
    assert est.parts_seconds == {"train": pytest.approx(5.0)}  # no warm-up, evaluation or checkpoint measured
    assert est.seconds == pytest.approx(5.0) and est.joules == pytest.approx(125.0)
    assert est.basis == "calibration: same preset, batch, seq_len"
    assert est.uncertainty == pytest.approx(U_FLOOR + 0.2)  # the floor plus the repeats' spread


def test_other_presets_are_scaled_by_flops_interpolated_in_log_space() -> None:
    lo = calibration_row("llama-tiny", 8, 64, 40_000.0, power_w=20.0)
    hi = calibration_row("llama-4m", 8, 64, 2_000.0, power_w=30.0)
    points, _ = choose_points([hi, lo])
    config = run_config("llama-1m", 100_000, 8, 64)
    est = estimate_from_calibration(config, 100_000, points)
    step = {r["preset"]: r["flops_per_token"] * 8 * 64 for r in (lo, hi)}
    fpt = flops_per_token(config.model, 64)
    w = math.log(fpt * 8 * 64 / step["llama-tiny"]) / math.log(step["llama-4m"] / step["llama-tiny"])
    flops_per_second = math.exp((1 - w) * math.log(lo["flops_per_second"]) + w * math.log(hi["flops_per_second"]))
    assert est.seconds == pytest.approx(100_000 * fpt / flops_per_second)
    assert est.joules == pytest.approx(est.seconds * 25.0)  # the mean power of the two calibrations used
    assert est.basis == "calibration: FLOP-scaled, between llama-tiny 8x64 and llama-4m 8x64"
    assert est.uncertainty == pytest.approx(U_FLOOR + 0.1 + U_INTERPOLATED)


def test_extrapolation_widens_the_uncertainty_with_distance() -> None:
    points, _ = choose_points([calibration_row("llama-tiny", 8, 64, 40_000.0)])
    near = estimate_from_calibration(run_config("llama-tiny", 10_000, 16, 64), 10_000, points)
    far = estimate_from_calibration(run_config("llama-4m", 10_000, 16, 64), 10_000, points)
    decades = math.log10(flops_per_token(ModelConfig.from_name("llama-4m"), 64) * 16 /
                         (points[0].flops_per_token * 8))
    assert far.uncertainty == pytest.approx(U_FLOOR + 0.1 + U_EXTRAPOLATED + U_PER_DECADE * decades)
    assert near.uncertainty < far.uncertainty and "decades above" in far.basis
    # Below the calibrated range the uncertainty grows faster: small models' fixed per-step costs.
    points_4m, _ = choose_points([calibration_row("llama-4m", 16, 64, 2_000.0)])
    small = estimate_from_calibration(run_config("llama-tiny", 10_000, 16, 64), 10_000, points_4m)
    below = math.log10(points_4m[0].flops_per_token / flops_per_token(ModelConfig.from_name("llama-tiny"), 64))
    assert small.uncertainty == pytest.approx(U_FLOOR + 0.1 + U_EXTRAPOLATED + U_PER_DECADE_BELOW * below)
    assert "decades below" in small.basis
    # Same FLOP/s as the calibration: seconds scale with training FLOPs.
    assert far.seconds == pytest.approx(10_000 * flops_per_token(ModelConfig.from_name("llama-4m"), 64)
                                        / points[0].flops_per_second)


def test_evaluations_checkpoints_save_and_warmup_are_added() -> None:
    row = calibration_row("llama-tiny", 4, 32, 1_000.0, warmup_step_seconds=0.328, eval_tokens_per_second=4_000.0,
                          checkpoint_seconds=0.3, eval_power_w=10.0, power_w=20.0)
    points, _ = choose_points([row])
    # 10,240 tokens in 128-token steps (80 steps), evaluations every 2,048 tokens -> 5, each of 1,024 tokens;
    # checkpoints at the evaluation interval but not at the end -> 4; one final save.
    config = run_config("llama-tiny", 10_240, 4, 32, eval_interval_tokens=2_048, eval_tokens=1_024,
                        checkpoint_interval_tokens=None)
    est = estimate_from_calibration(config, 10_240, points)
    assert est.parts_seconds == pytest.approx({"train": 10.24, "warmup": 0.2, "eval": 5 * 1_024 / 4_000.0,
                                               "checkpoint": 4 * 0.3, "save": 0.1})
    assert est.joules == pytest.approx(20.0 * (10.24 + 0.2 + 1.2 + 0.1) + 10.0 * 1.28)


def test_basis_order_and_reasons() -> None:
    config = run_config("llama-tiny", 4_096, 4, 32)
    calibrations = [calibration_row("llama-tiny", 4, 32, 1_000.0)]
    finished = {"run_id": "other", "status": "finished", "tokens_seen": 2_048, "wall_seconds": 1.0,
                "energy_j": 8.0, "energy_source": "estimated", "preset": "llama-tiny", "device": "cpu",
                "config_json": json.dumps(config.to_dict())}
    footprint = FootprintSettings(carbon_intensity_g_per_kwh=360.0, price_per_kwh=0.5, currency="EUR", pue=1.5)
    from_runs = estimate_run(config, "r1", EstimateInputs([finished], calibrations, footprint))
    assert from_runs.basis == "finished runs: same preset, batch, seq_len, device (1 runs)"
    assert from_runs.seconds == pytest.approx(2.0) and from_runs.joules == pytest.approx(16.0)
    assert from_runs.footprint.co2e_g == pytest.approx(16.0 * 1.5 / 3.6e6 * 360.0)
    assert from_runs.footprint.cost == pytest.approx(16.0 * 1.5 / 3.6e6 * 0.5)
    calibrated = estimate_run(config, "r1", EstimateInputs([], calibrations, footprint))
    assert calibrated.basis.startswith("calibration:") and calibrated.seconds == pytest.approx(4.096)
    assert calibrated.footprint.currency == "EUR" and calibrated.calibrated_on == f"{HOST}, Test CPU, fp32"
    done = estimate_run(config, "r1", EstimateInputs([{**finished, "run_id": "r1"}], calibrations, footprint))
    assert (done.basis, done.seconds) == ("done", 0.0)
    # Another precision or device type is no basis: no estimate, and why.
    for rows in ([], [calibration_row("llama-tiny", 4, 32, 1_000.0, precision="bf16")],
                 [calibration_row("llama-tiny", 4, 32, 1_000.0, device_type="cuda")]):
        none = estimate_run(config, "r1", EstimateInputs([], rows))
        assert none.seconds is None and none.joules is None and none.footprint is None
        assert none.basis.startswith("none: no matching finished run and no calibration for cpu fp32")


def test_this_host_and_thread_count_are_preferred() -> None:
    mine = calibration_row("llama-tiny", 4, 32, 1_000.0, threads=1)
    mine_two = calibration_row("llama-tiny", 4, 32, 1_900.0, threads=2)
    other = calibration_row("llama-tiny", 4, 32, 5_000.0, hostname="elsewhere", measured_at="2027-01-01T00:00:00")
    points, origin = choose_points([other, mine, mine_two], threads=1)
    assert [p.tokens_per_second for p in points] == [1_000.0] and origin.startswith(HOST)
    points, origin = choose_points([other], threads=1)  # only another host: its calibrations, named
    assert [p.tokens_per_second for p in points] == [5_000.0] and origin == "elsewhere, Test CPU"


# --- the command, the store, the acceptance checks ---------------------------------------------------------


def test_calibrate_stores_a_real_measurement(run_cli_in_process, tmp_path: Path) -> None:
    result = run_cli_in_process("--store", "cal.db", "calibrate", "--preset", "llama-tiny", "--batch-size", "4",
                                "--seq-len", "32", "--steps", "3", "--repeats", "2", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["calibrations"]
    fpt = flops_per_token(ModelConfig.from_name("llama-tiny"), 32)
    assert (row["preset"], row["precision"], row["batch_size"], row["seq_len"], row["threads"]) == (
        "llama-tiny", "fp32", 4, 32, 1)
    repeats = json.loads(row["tokens_per_second_json"])
    assert len(repeats) == 2 and row["tokens_per_second_min"] <= row["tokens_per_second"] <= row[
        "tokens_per_second_max"]
    assert row["flops_per_second"] == pytest.approx(row["tokens_per_second"] * fpt)
    assert row["steps_per_repeat"] >= 3 and row["warmup_step_seconds"] > 0 and row["eval_tokens_per_second"] > 0
    assert row["checkpoint_seconds"] > 0 and row["checkpoint_bytes"] > 4 * count_parameters(
        ModelConfig.from_name("llama-tiny")).total
    assert row["power_w"] > 0 and row["energy_source"] in ("estimated", "counter", "mixed")
    assert json.loads(row["power_w_json"])  # by component
    with open_store(tmp_path / "cal.db") as store:
        (stored,) = store.list_calibrations()
    assert stored["calibration_id"] == row["calibration_id"] and stored["tokens_per_second"] == row[
        "tokens_per_second"]


@pytest.mark.parametrize(("args", "message"), [
    (("--repeats", "1"), "--repeats: 1 must be a whole number from 2 to 100"),
    (("--steps", "0"), "--steps: 0 must be a whole number from 1"),
    (("--variant", "smoke"), "--variant/--set: only with an experiment FILE"),
    ((str(SMOKE),), "train.device: 'cuda' requested but CUDA is not available"),
])
def test_calibrate_refuses_bad_input_in_one_line(run_cli_in_process, args, message) -> None:
    if args == (str(SMOKE),):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = run_cli_in_process("--store", "cal.db", "calibrate", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_after_calibrate_plan_estimates_every_run_of_the_smoke_study(run_cli_in_process, tmp_path: Path,
                                                                     cache_dir: Path) -> None:
    common = ("--store", "fresh.db")
    before = json.loads(run_cli_in_process(*common, "plan", str(SMOKE), "--variant", "smoke", "--cache-dir",
                                           str(cache_dir), "--json").stdout)
    assert before["runs_without_time_estimate"] == before["total_runs"] == 9
    assert all(r["est_basis"].startswith("none: ") for r in before["runs"])
    calibrated = run_cli_in_process(*common, "calibrate", str(SMOKE), "--variant", "smoke", "--steps", "3",
                                    "--repeats", "2", "--cache-dir", str(cache_dir), "--json")
    assert calibrated.returncode == 0, calibrated.stderr
    (row,) = json.loads(calibrated.stdout)["calibrations"]  # the study trains one preset at one batch
    assert (row["preset"], row["batch_size"], row["seq_len"], row["precision"]) == ("llama-tiny", 4, 64, "fp32")
    planned = run_cli_in_process(*common, "plan", str(SMOKE), "--variant", "smoke", "--cache-dir", str(cache_dir),
                                 "--carbon-intensity", "350", "--price-per-kwh", "0.25", "--currency", "EUR",
                                 "--json")
    after = json.loads(planned.stdout)
    assert after["runs_without_time_estimate"] == after["runs_without_energy_estimate"] == 0
    for run in after["runs"]:
        assert run["est_basis"] == "calibration: same preset, batch, seq_len"
        assert run["est_seconds"] > 0 and run["est_joules"] > 0 and run["est_uncertainty"] >= U_FLOOR
        assert run["est_co2e_g"] == pytest.approx(run["est_joules"] / 3.6e6 * 350)
        assert run["est_cost"] == pytest.approx(run["est_joules"] / 3.6e6 * 0.25) and run["est_currency"] == "EUR"
    assert after["est_remaining_seconds"] == pytest.approx(sum(r["est_seconds"] for r in after["runs"]))
    # Bigger training sets take longer.
    by_tokens = {r["tokens"]: r["est_seconds"] for r in after["runs"]}
    assert by_tokens[2048] < by_tokens[4096] < by_tokens[8192]
    text = run_cli_in_process(*common, "plan", str(SMOKE), "--variant", "smoke", "--cache-dir", str(cache_dir),
                              env={"WATTSCALE_CARBON_INTENSITY": "350"})
    assert "calibration: same preset" in text.stdout and "350 gCO2e/kWh" in text.stdout


def test_dry_run_writes_nothing_and_its_estimate_holds_for_the_real_run(run_cli_in_process, tmp_path: Path,
                                                                          cache_dir: Path) -> None:
    run = ("--preset", "llama-tiny", "--tokens", "40960", "--batch-size", "8", "--seq-len", "64", "--threads", "1",
           "--eval-interval-tokens", "0", "--checkpoint-interval-tokens", "0", "--eval-tokens", "4096",
           "--idle-seconds", "0", "--device", "cpu", "--cache-dir", str(cache_dir), "--synthetic-mb", "0.3")
    dry = run_cli_in_process("--store", "s.db", "train", *run, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["estimate"]["basis"].startswith("none: no matching finished run")
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "wattscale_runs").exists()

    # A calibration holds while the machine is as busy as when it was measured. On a shared test machine
    # another process may start between the calibration and the run: then calibrate again and retry, once.
    misses = []
    for attempt in range(2):
        calibrated = run_cli_in_process("--store", "s.db", "calibrate", "--preset", "llama-tiny", "--batch-size",
                                        "8", "--seq-len", "64", "--threads", "1", "--steps", "3", "--repeats", "2",
                                        "--json")
        assert calibrated.returncode == 0, calibrated.stderr
        shutil.copy(tmp_path / "s.db", tmp_path / "before.db")
        this_run = (*run, "--repeat", str(attempt))  # a new run each attempt
        dry = json.loads(run_cli_in_process("--store", "s.db", "train", *this_run, "--dry-run", "--json").stdout)
        assert (tmp_path / "s.db").read_bytes() == (tmp_path / "before.db").read_bytes()  # read, never written
        estimate = dry["estimate"]
        assert estimate["basis"] == "calibration: same preset, batch, seq_len"
        assert dry["tokens"] == 40960 and estimate["flops"] == pytest.approx(40960 * dry["flops_per_token"])
        assert estimate["uncertainty"] >= U_FLOOR

        trained = run_cli_in_process("--store", "s.db", "train", *this_run, "--no-progress", "--json")
        assert trained.returncode == 0, trained.stderr
        result = json.loads(trained.stdout)
        assert result["run_id"] == dry["run_id"]
        if (estimate["seconds_low"] <= result["wall_seconds"] <= estimate["seconds_high"]
                and estimate["energy_j_low"] <= result["energy_j"] <= estimate["energy_j_high"]):
            return
        misses.append((estimate, result))
    pytest.fail(f"the real run fell outside the stated uncertainty twice: {misses}")
