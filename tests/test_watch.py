"""`wattscale watch`: snapshots of running runs from the store, and the live loop's exit."""

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
from rich.console import Console

from conftest import TINY_DATA, default_sigint
from report_helpers import add_synthetic_run
from wattscale.report.watch import render_snapshot, watch, watch_snapshot
from wattscale.store import open_store


def running_store(tmp_path: Path) -> Path:
    """An experiment of 3 planned runs: one finished, one running (with two devices), one not started."""
    db = tmp_path / "w.db"
    with open_store(db) as store:
        store.register_experiment(
            {"name": "sweep", "spec_json": "{}", "spec_hash": "s", "order_design": "as-written", "order_seed": 0},
            [{"position": i, "run_id": f"r{i}", "block": 0, "repetition": 0, "condition": f"lr={i}",
              "condition_json": json.dumps({"train.lr": i})} for i in range(3)])
        add_synthetic_run(store, "r0", experiment="sweep")
        add_synthetic_run(store, "r1", experiment="sweep", finished=False, devices=("gpu0", "gpu1"),
                          name="[red]not markup[/red]")
    return db


def test_snapshot_shows_progress_latest_losses_power_and_energy(tmp_path: Path) -> None:
    with open_store(running_store(tmp_path)) as store:
        # The trainer's batched writes: later rows for the running run arrive; the snapshot follows them.
        store.add_power_samples("r1", [{"device": "gpu0", "t_seconds": 60.0, "power_w": 250.0}])
        snapshot = watch_snapshot(store, "sweep")
    assert (snapshot["runs_total"], snapshot["runs_done"], snapshot["runs_running"]) == (3, 1, 1)
    (row,) = snapshot["running"]
    assert row["run_id"] == "r1" and row["condition"] == "lr=1"
    assert row["tokens_seen"] == 10_000 and row["tokens_budget"] == 10_000 and row["progress"] == 1.0
    assert row["step"] == 10 and row["train_loss"] == pytest.approx(4.0)  # the last written step
    assert row["val_loss"] == pytest.approx(4.5) and row["val_tokens"] == 10_000
    last_gpu1 = 100.0 + 10 * math.sin(199 / 7)
    assert row["power_w"] == {"gpu0": 250.0, "gpu1": pytest.approx(last_gpu1)}
    assert row["power_total_w"] == pytest.approx(250.0 + last_gpu1) and row["power_t_seconds"] == 60.0
    assert row["energy_j"] == pytest.approx(2 * sum(1000.0 + k for k in range(5)))
    assert row["energy_sources"] == ["integrated"]


def test_rendered_snapshot_prints_user_strings_as_typed(tmp_path: Path) -> None:
    with open_store(running_store(tmp_path)) as store:
        snapshot = watch_snapshot(store, "sweep")
    console = Console(width=200, record=True, color_system=None)
    console.print(render_snapshot(snapshot))
    out = console.export_text()
    assert "1/3 runs done" in out and "1 running" in out
    assert "r1 [red]not markup[/red]" in out  # rich markup in a run name is not interpreted
    assert "100.0%" in out and "10,020.0 (integrated)" in out


def test_watch_once_cli_and_errors(tmp_path: Path, run_cli_in_process) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    db = running_store(tmp_path)
    result = run_cli("--store", str(db), "watch", "--experiment", "sweep", "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["run_id"] for r in json.loads(result.stdout)["running"]] == ["r1"]
    result = run_cli("--store", str(db), "watch", "--once")
    assert result.returncode == 0 and "r1" in result.stdout and "latest values written" in result.stdout
    result = run_cli("--store", str(db), "watch", "--experiment", "nope", "--once")
    assert result.returncode == 2 and "--experiment: no experiment 'nope'" in result.stderr
    result = run_cli("--store", str(db), "watch", "--interval-s", "0")
    assert result.returncode == 2 and "--interval-s: must be positive" in result.stderr


def test_live_loop_exits_once_nothing_has_run_for_the_grace_period(tmp_path: Path) -> None:
    db = running_store(tmp_path)
    with open_store(db) as store:
        store.finish_run("r1", "finished", {"tokens_seen": 10_000})
    console = Console(file=open(os.devnull, "w"), width=120)  # noqa: SIM115 - closed with the test process
    start = time.monotonic()
    watch(str(db), "sweep", interval_s=0.1, grace_s=0.5, console=console)
    assert 0.5 <= time.monotonic() - start < 10


def test_watch_follows_a_real_training_run(tmp_path: Path, cache_dir: Path) -> None:
    """While `wattscale train` runs, watch --once sees it running with progress; the live view ends after it stops.

    The budget is far more than the test waits for: once seen, the run is interrupted (Ctrl-C), as a user would.
    """
    env = {k: v for k, v in os.environ.items() if k != "WATTSCALE_STORE"}
    train = subprocess.Popen(
        [sys.executable, "-m", "wattscale", "--store", "live.db", "train", "--preset", "llama-tiny",
         "--tokens", "2000000", "--batch-size", "4", "--seq-len", "32", "--eval-interval-tokens", "2048",
         "--threads", "1", "--sample-hz", "20", "--run-root", "runs", "--cache-dir", str(cache_dir),
         "--no-progress", *TINY_DATA], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "train.err").open("w"), preexec_fn=default_sigint)
    seen = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and train.poll() is None:
            if (tmp_path / "live.db").exists():
                snap = subprocess.run([sys.executable, "-m", "wattscale", "--store", "live.db", "watch", "--once",
                                       "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
                running = json.loads(snap.stdout)["running"] if snap.returncode == 0 else []
                if running and all(running[0][k] is not None for k in ("progress", "val_loss", "power_total_w",
                                                                          "energy_j")):
                    seen = running[0]
                    break
            time.sleep(0.5)
        assert seen is not None, ("watch never saw the run running with an evaluation, power and energy",
                                  train.poll(), (tmp_path / "train.err").read_text()[-3000:])
        assert 0 < seen["progress"] < 1 and seen["tokens_budget"] == 2_000_000
        assert seen["power_total_w"] > 0 and seen["energy_j"] > 0 and seen["train_loss"] is not None
        train.send_signal(signal.SIGINT)
        try:
            code = train.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 130, (code, (tmp_path / "train.err").read_text()[-3000:])  # recorded as interrupted
        live = subprocess.run([sys.executable, "-m", "wattscale", "--store", "live.db", "watch", "--interval-s",
                               "0.5", "--grace-s", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=180)
        assert live.returncode == 0, live.stderr
        assert "0 running" in " ".join(live.stdout.split())  # rich wraps at the terminal width, path included
    finally:
        if train.poll() is None:
            train.kill()
            train.wait()
