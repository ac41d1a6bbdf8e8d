"""Energy recorded by real training runs: a RAPL counter driven at a known wattage, a meter that dies
mid-run, the idle baseline, intervals that add up to the run, and resume without duplicated energy."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from wattscale.config import build_run_config
from wattscale.store import open_store
from wattscale.train import train

MAX_RANGE_UJ = 262_143_328_850


class DrivenRaplCounter:
    """A fake powercap package zone whose energy_uj rises at `watts`, written atomically from a thread."""

    def __init__(self, root: Path, watts: float) -> None:
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
        self.watts = watts
        self.t0 = time.monotonic()
        self._write(0)
        self._stop = threading.Event()
        self._vanish = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def vanish(self) -> None:
        """Delete the counter file, as a driver unload would, and stop writing it (the writer's last act)."""
        self._vanish.set()
        self._thread.join()

    def _write(self, energy_uj: int) -> None:
        tmp = self.zone / "energy_uj.tmp"
        tmp.write_text(f"{energy_uj % MAX_RANGE_UJ}\n")
        os.replace(tmp, self.zone / "energy_uj")

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            if self._vanish.is_set():
                (self.zone / "energy_uj").unlink(missing_ok=True)
                return
            self._write(int((time.monotonic() - self.t0) * self.watts * 1e6))

    def __enter__(self) -> DrivenRaplCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _config(tmp_path: Path, powercap: Path, idle_seconds: float = 0.0, tokens: int = 16_384):
    return build_run_config(overrides={
        "model": {"preset": "llama-tiny"},
        "train": {"tokens": tokens, "batch_size": 4, "seq_len": 32, "eval_interval_tokens": tokens // 4,
                  "eval_tokens": 2048, "run_root": str(tmp_path / "runs")},
        "data": {"source": "synthetic", "synthetic_mb": 0.3},
        "meter": {"kinds": ["rapl"], "powercap_root": str(powercap), "sample_hz": 100.0,
                  "idle_seconds": idle_seconds}})


def test_counter_energy_of_a_run_at_a_known_wattage(tmp_path: Path, cache_dir: Path) -> None:
    watts = 50.0
    with DrivenRaplCounter(tmp_path / "powercap", watts):
        result = train(_config(tmp_path, tmp_path / "powercap", idle_seconds=0.5), str(tmp_path / "w.db"),
                       show_progress=False, cache_dir=cache_dir)
    assert result.status == "finished" and result.energy_source == "counter"
    with open_store(str(tmp_path / "w.db")) as store:
        rows = store.energy_measurements(result.run_id)
        samples = store.power_samples(result.run_id)
        record = store.get_run(result.run_id)
    (run_row,) = [r for r in rows if r["scope"] == "run"]
    (idle_row,) = [r for r in rows if r["scope"] == "idle"]
    intervals = [r for r in rows if r["scope"] == "interval"]
    phases = {r["phase"]: r for r in rows if r["scope"] == "phase"}
    # The counter rises at exactly `watts`: energy = watts x measured window length (ms-level write lag).
    run_seconds = run_row["end_seconds"] - run_row["start_seconds"]
    assert run_row["energy_j"] == pytest.approx(watts * run_seconds, rel=0.05, abs=0.1)
    # The idle baseline lasts at least the 0.5 s asked (longer on a loaded machine): watts x its measured length.
    assert idle_row["phase_seconds"] > 0.45 and idle_row["phase"] == "idle"
    assert idle_row["energy_j"] == pytest.approx(watts * idle_row["phase_seconds"], rel=0.05)
    assert record["energy_j"] == pytest.approx(run_row["energy_j"]) and record["energy_source"] == "counter"
    assert run_row["component"] == "cpu_package" and run_row["phase"] is None
    # Intervals end at each evaluation, split by phase; each holds its training steps and its evaluation.
    by_interval: dict[tuple, dict[str, float]] = {}
    for r in intervals:
        by_interval.setdefault((r["start_tokens"], r["end_tokens"]), {})[r["phase"]] = r["energy_j"]
    assert sorted(by_interval) == [(0, 4096), (4096, 8192), (8192, 12288), (12288, 16384)]
    assert all({"train", "eval"} <= set(split) for split in by_interval.values())
    # The phases add up to the job exactly (one reading ends a phase and starts the next), and the intervals
    # to the job but for what ran after the last evaluation (the final save).
    assert set(phases) == {"warmup", "train", "eval", "checkpoint", "save", "other"}
    assert sum(r["energy_j"] for r in phases.values()) == pytest.approx(run_row["energy_j"], rel=1e-9)
    assert sum(r["phase_seconds"] for r in phases.values()) == pytest.approx(run_seconds, rel=1e-9)
    after_last = phases["save"]["energy_j"]
    assert sum(r["energy_j"] for r in intervals) == pytest.approx(run_row["energy_j"] - after_last, rel=0.02, abs=0.5)
    # The run's training-phase figures: energy at the driven wattage over the training phase's seconds.
    assert record["train_seconds"] == pytest.approx(phases["train"]["phase_seconds"])
    assert record["train_energy_j"] == pytest.approx(phases["train"]["energy_j"])
    assert record["train_energy_j"] == pytest.approx(watts * record["train_seconds"], rel=0.05, abs=0.2)
    assert record["train_tokens"] == 16_384 - 4 * 32  # the first step of the session is the warm-up
    assert all(r["complete"] for r in rows)
    # The trace: samples of the package at ~watts, inside the run's time frame.
    assert samples and {s["device"] for s in samples} == {"package-0"}
    late = [s["power_w"] for s in samples if s["t_seconds"] > 0.05]
    assert sorted(late)[len(late) // 2] == pytest.approx(watts, rel=0.2)
    assert all(-1e-6 <= s["t_seconds"] <= run_row["end_seconds"] + 0.05 for s in samples)


def test_meter_that_vanishes_mid_run_does_not_stop_training(tmp_path: Path, cache_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import wattscale.energy.rapl as rapl

    counter = DrivenRaplCounter(tmp_path / "powercap", 30.0)
    real_read, reads = rapl.RaplMeter._read_counters, []

    def read_then_vanish(meter: rapl.RaplMeter) -> dict[str, int]:
        # The zone goes at the meter's 30th read (about 0.3 s into the run's 100 Hz sampling), counted in reads rather
        # than seconds so that a slow start on a loaded machine cannot make it vanish before the run opens the meter.
        reads.append(None)
        if len(reads) == 30:
            counter.vanish()
        return real_read(meter)

    monkeypatch.setattr(rapl.RaplMeter, "_read_counters", read_then_vanish)
    with counter:
        result = train(_config(tmp_path, tmp_path / "powercap", tokens=40_960), str(tmp_path / "w.db"),
                       show_progress=False, cache_dir=cache_dir)
    assert result.status == "finished" and result.tokens_seen == 40_960
    assert result.message and "energy incomplete" in result.message
    with open_store(str(tmp_path / "w.db")) as store:
        rows = store.energy_measurements(result.run_id)
    (run_row,) = [r for r in rows if r["scope"] == "run"]
    assert not run_row["complete"]
    assert '"gaps": [[' in run_row["details_json"]


def test_no_meters_means_no_energy_not_zero(run_cli_in_process, tmp_path: Path, cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    from conftest import TINY_DATA

    res = run_cli("train", "--preset", "llama-tiny", "--batch-size", "4", "--seq-len", "32", *TINY_DATA,
                  "--tokens", "1024", "--meters", "none", "--no-progress", "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    with open_store(str(tmp_path / "wattscale.db")) as store:
        (run,) = store.list_runs()
        assert run["joules"] is None and run["energy_source"] is None
        assert store.energy_measurements(run["run_id"]) == []


def test_bad_meter_setting_is_a_one_line_error(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    res = run_cli("train", "--preset", "llama-tiny", "--tokens", "10000", "--sample-hz", "5000")
    assert res.returncode == 2 and "meter.sample_hz" in res.stderr and not (tmp_path / "wattscale.db").exists()


def test_energy_command_reports_kwh_power_co2e_and_resampling(run_cli_in_process, tmp_path: Path,
                                                              cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    import json

    watts = 40.0
    with DrivenRaplCounter(tmp_path / "powercap", watts):
        result = train(_config(tmp_path, tmp_path / "powercap", idle_seconds=0.3), str(tmp_path / "w.db"),
                       show_progress=False, cache_dir=cache_dir)
    res = run_cli("--store", "w.db", "energy", result.run_id, "--json", "--grid-gco2e-per-kwh", "400")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    (device,) = report["devices"]
    assert device["device"] == "package-0" and device["source"] == "counter" and device["complete"]
    assert report["energy_j"] == pytest.approx(result.energy_j)
    assert report["energy_kwh"] == pytest.approx(result.energy_j / 3.6e6)
    assert report["co2e_g"] == pytest.approx(report["energy_kwh"] * 400)
    assert device["mean_power_w"] == pytest.approx(watts, rel=0.05)
    assert device["idle_power_w"] == pytest.approx(watts, rel=0.05)
    assert device["peak_power_w"] >= device["mean_power_w"] * 0.95
    by_rate = {r["rate_hz"]: r for r in report["resampled"]}
    assert by_rate[1000.0]["energy_j"] is None and "skipped" in by_rate[1000.0]["note"]
    # A constant 40 W: the fastest rate the trace supports reproduces the full trace's energy. (That is 100 Hz
    # normally; a heavily loaded machine can hold the 100 Hz sampler under its rate, and that row is then skipped.)
    fastest = max(rate for rate, row in by_rate.items() if row["energy_j"] is not None)
    assert fastest >= 10.0
    assert by_rate[fastest]["rel_error_vs_full"] == pytest.approx(0.0, abs=0.02)
    assert by_rate[fastest]["rel_error_vs_counter"] is not None
    assert report["sampling"]["achieved_hz"] > 50
    table = run_cli("--store", "w.db", "energy", result.run_id)
    assert table.returncode == 0 and "package-0" in table.stdout and "CO2e: not computed" in table.stdout
    missing = run_cli("--store", "w.db", "energy", "0000000000000000")
    assert missing.returncode == 2 and "run_id" in missing.stderr


def test_requested_meter_missing_is_said_not_silent(tmp_path: Path, cache_dir: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    result = train(_config(tmp_path, tmp_path / "empty", tokens=1024), str(tmp_path / "w.db"),
                   show_progress=True, cache_dir=cache_dir)
    err = capsys.readouterr().err
    assert "energy not measured, no usable meter" in err and "rapl:" in err
    assert result.energy_j is None and result.energy_source is None
