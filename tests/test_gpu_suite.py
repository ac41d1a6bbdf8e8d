"""The GPU suite (benchmarks/gpu_suite.py) rehearsed on CPU: its --dry-run runs every section with a fake NVML whose
power is a known synthetic signal, and the power-limit sweep leaves the limit as it found it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_suite  # noqa: E402
import gpu_suite_energy as energy  # noqa: E402
import gpu_suite_fakes as fakes  # noqa: E402
import gpu_suite_sections as sec  # noqa: E402

SECTIONS = ("machine", "throughput_tinyllama", "throughput_llama4m", "nvml_energy", "power_limit_sweep", "resume",
            "bf16_divergence")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One `--dry-run --power-limit-sweep` of the whole suite, as a user starts it; its JSON and stdout."""
    out = tmp_path_factory.mktemp("suite")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run",
                           "--power-limit-sweep", "--out", str(out), "--work-dir", str(out / "work")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_suite_dryrun.json").read_text()), proc.stdout


def test_every_section_ran_with_numbers(dry_run: tuple[dict, str]) -> None:
    record, _ = dry_run
    assert record["dry_run"] and tuple(record["sections"]) == SECTIONS
    assert {name: e["status"] for name, e in record["sections"].items()} == dict.fromkeys(SECTIONS, "ok")
    r = {name: e["result"] for name, e in record["sections"].items()}
    assert r["machine"]["matmul"]["flops_per_second"] > 0
    big = r["throughput_tinyllama"]
    assert big["preset"] == "llama-tiny" and big["batch"] == 4 and big["tokens_per_second"] > 0
    assert 0 < big["mfu_measured_matmul"] and big["mfu_datasheet"] is None  # no datasheet peak for a CPU
    assert big["steady_seconds_per_step"] > 0 and big["timed_steps"] == 3
    assert all(run["tokens_per_second"] > 0 for run in r["throughput_llama4m"]["runs"])


def test_counter_and_sampled_power_agree_on_the_synthetic_signal(dry_run: tuple[dict, str]) -> None:
    """wattscale's NvmlMeter + PowerSampler against a fake whose counter is the exact integral of its power."""
    nvml = dry_run[0]["sections"]["nvml_energy"]["result"]
    assert nvml["sample_hz"] == 100 and nvml["sampler"]["n_samples"] > 20
    for window in ("steady", "on_off"):
        w = nvml[window]
        assert w["counter_j"] == pytest.approx(w["seconds"] * fakes.BASE_W, rel=0.3)
        assert w["rel_diff_meter_power"] < 0.02 and w["rel_diff_power_usage"] < 0.02
        assert w["zeus_j"] is not None and w["rel_diff_zeus"] < 0.02
    assert nvml["zeus_version"] == "fake (dry run)" and nvml["within_target"]


def test_sweep_measured_three_limits_and_restored_the_original(dry_run: tuple[dict, str]) -> None:
    entry = dry_run[0]["sections"]["power_limit_sweep"]
    sweep = entry["result"]
    assert [p["limit_w"] for p in sweep["points"]] == [700.0, 525.0, 385.0]
    assert all(p["limit_read_back_w"] == p["limit_w"] and p["j_per_token"] > 0 for p in sweep["points"])
    assert sweep["restored"] and sweep["limits_after"]["current_w"] == 700.0
    # The card as the runner sees it afterwards: every set call, the last one putting the default back.
    assert entry["runner_restore"]["fake_set_calls_mw"] == [700_000, 525_000, 385_000, 700_000]
    assert entry["runner_restore"]["fake_limit_now_mw"] == 700_000


def test_resume_and_bf16_sections(dry_run: tuple[dict, str]) -> None:
    r = dry_run[0]["sections"]
    resume = r["resume"]["result"]
    for variant in ("default", "deterministic"):
        v = resume[variant]
        assert v["resumed_flag"] and v["stop"].startswith("stopped after step 5")
        assert v["resumed_vs_uninterrupted"]["bit_identical"], v  # exact resume holds on CPU
        assert v["resumed_vs_uninterrupted"]["steps"] == [8, 8]
    assert resume["default"]["repeat_vs_uninterrupted"]["bit_identical"]
    div = r["bf16_divergence"]["result"]
    assert div["status"] == {"fp32": "finished", "bf16": "finished"}
    assert math.isfinite(div["max_rel_gap"]) and div["bf16_diverges"] is False


def test_the_table_is_printed_last(dry_run: tuple[dict, str]) -> None:
    lines = dry_run[1].strip().splitlines()
    assert lines[-len(SECTIONS) - 1].startswith("== gpu_suite (dry run)")
    assert [line.split()[0] for line in lines[-len(SECTIONS):]] == list(SECTIONS)


def test_the_sweep_is_off_unless_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pynvml", "zeus", "zeus.monitor"):  # the runner installs its fakes; put the modules back after
        monkeypatch.setitem(sys.modules, name, None)
    runner = gpu_suite.Runner(gpu_suite.parse_args(["--dry-run", "--out", str(tmp_path), "--work-dir",
                                                    str(tmp_path / "w")]))
    entry = runner._run_one(next(s for s in gpu_suite.SECTIONS if s.name == "power_limit_sweep"))
    assert entry["status"] == "skipped"
    assert entry["reason"].startswith("skipped: this workplace forbids changing the card's power limit")
    assert runner.nvml_fake.set_calls() == []


def test_a_limit_left_set_by_a_killed_sweep_is_restored_once(tmp_path: Path) -> None:
    nvml = fakes.FakeNvml(tmp_path / "card.json")
    journal = tmp_path / "journal.json"
    control = energy.PowerLimits(nvml, 0, journal)
    control.set_w(400)
    control.set_w(300)  # the journal keeps the limit from before the first change
    assert nvml.nvmlDeviceGetPowerManagementLimit(0) == 300_000  # the process dies here
    entry = energy.restore_power_limit(nvml, journal)
    assert entry["restored"] and entry["original_mw"] == fakes.DEFAULT_LIMIT_MW
    assert nvml.nvmlDeviceGetPowerManagementLimit(0) == fakes.DEFAULT_LIMIT_MW
    assert energy.restore_power_limit(nvml, journal)["restored"]
    assert nvml.set_calls() == [400_000, 300_000, fakes.DEFAULT_LIMIT_MW]  # restored once, not twice


def test_the_fake_counter_is_the_integral_of_its_power(tmp_path: Path) -> None:
    nvml = fakes.FakeNvml(tmp_path / "card.json")
    t0 = time.monotonic()
    grid = [t0 + i / 2000 for i in range(4001)]  # 2 s at 2 kHz
    power = [nvml.power_w(t) for t in grid]
    trapezoid = sum((b - a) * (p + q) / 2 for a, b, p, q in zip(grid, grid[1:], power, power[1:], strict=False))
    assert nvml.energy_j(grid[-1]) - nvml.energy_j(grid[0]) == pytest.approx(trapezoid, rel=1e-6)


def test_out_of_memory_falls_back_to_the_next_batch() -> None:
    def attempt(batch: int) -> dict:
        if batch == 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"batch": batch}

    result = sec.first_batch_that_fits((16, 8, 4, 2), attempt, lambda b: 10.0 * b, free_gib=100.0)
    assert result["batch"] == 4
    assert [t["batch"] for t in result["tries"]] == [16, 8]
    assert "estimate 160.0 GiB" in result["tries"][0]["skipped"] and "OutOfMemoryError" in result["tries"][1]["error"]


def test_tinyllama_at_batch_8_fits_an_h200_by_the_estimate() -> None:
    from wattscale.model import ModelConfig

    need = sec.training_memory_gib(ModelConfig.from_name("tinyllama-1.1b"), 8, 2048)
    assert 40 < need < sec.MEMORY_HEADROOM * 139  # 17.6 GB of states + ~30 GiB of activations, not more than fits


def test_a_runner_stopped_mid_sweep_restores_the_limit_and_writes_its_record(tmp_path: Path) -> None:
    """SIGTERM (what `timeout 420` sends) while the sweep holds a lowered limit: the runner stops the section,
    the limit goes back to what it was, and the JSON and the table still come out."""
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run",
                             "--power-limit-sweep", "--sections", "power_limit_sweep", "--out", str(tmp_path),
                             "--work-dir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    card_file, deadline = work / "fake_nvml.json", time.monotonic() + 120

    def limit_mw() -> int:
        return json.loads(card_file.read_text())["limit_mw"] if card_file.exists() else fakes.DEFAULT_LIMIT_MW

    while limit_mw() == fakes.DEFAULT_LIMIT_MW and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)  # until the sweep has lowered the limit (its second point, 525 W)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-2000:]
    record = json.loads((tmp_path / "gpu_suite_dryrun.json").read_text())
    assert record["terminated"].startswith("runner got SIGTERM")
    card = json.loads(card_file.read_text())
    assert card["limit_mw"] == fakes.DEFAULT_LIMIT_MW and card["set_calls"][-1] == fakes.DEFAULT_LIMIT_MW
    assert 525_000 in card["set_calls"] and record["runner_restore_on_terminate"]["restored"]
    lines = stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("== gpu_suite (dry run)"))
    assert [line.split()[0] for line in lines[header + 1:]] == list(SECTIONS[:4])  # skipped; the sweep never ended


def test_a_section_stopped_while_compiling_still_shows_its_eager_figure() -> None:
    partial = {"partial": {"batch": 8, "eager": {"tokens_per_second": 41_000.0, "mfu_datasheet": 0.31}}}
    record = {"sections": {"throughput_tinyllama": {"status": "timed_out", "reason": "stopped at its deadline (140 s)",
                                                    "partial": partial}}}
    ((name, status, text),) = gpu_suite.summary_rows(record)
    assert (name, status) == ("throughput_tinyllama", "timed_out")
    assert text == ("stopped at its deadline (140 s); partial figures in the JSON (eager, batch 8: 41,000 tok/s, "
                    "MFU 31.0% of datasheet)")
