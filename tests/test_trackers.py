"""Trackers: a real MLflow (SQLite and file stores) and real TensorBoard event files, fed live by a Monitor and
by `wattscale train --track`, and from the store by `wattscale export --to ...`; every value read back is
compared with the store's rows (or, for the fake meter, with watts x seconds).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fake_meters import ConstantMeter
from wattscale import Monitor
from wattscale.cli import main
from wattscale.store import open_store
from wattscale.trackers import MonitorFeed, TrackerError, TrackerSpec, open_trackers, parse_spec, tracker_from_spec

# mlflow and tensorboard are imported by the tests that use them, not when every xdist worker collects this file.
if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("tensorboard") is None:
    pytest.skip("mlflow or tensorboard is not installed: pip install -e '.[mlflow,tensorboard]'",
                allow_module_level=True)


def MlflowClient(tracking_uri: str) -> Any:  # noqa: N802 - mlflow's class, imported on first use
    from mlflow import MlflowClient as client_class

    return client_class(tracking_uri)


def EventAccumulator(path: str) -> Any:  # noqa: N802 - tensorboard's class, imported on first use
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator as accumulator_class

    return accumulator_class(path)

TINY = ["--preset", "llama-tiny", "--batch-size", "4", "--seq-len", "32", "--data", "synthetic", "--synthetic-mb",
        "0.3", "--eval-tokens", "1024", "--idle-seconds", "0", "--tokens", "1536", "--eval-interval-tokens", "512",
        "--no-progress"]




class ListTracker:
    """A tracker that keeps what it is given (the Tracker protocol, nothing more)."""

    def __init__(self, fail: bool = False) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.closed, self.fail = 0, fail

    def log_params(self, params: Any) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Any, step: int) -> None:
        if self.fail:
            raise OSError("disk full")
        self.metrics.append((step, dict(metrics)))

    def close(self) -> None:
        self.closed += 1


def _cli(*args: str) -> tuple[int, str, str]:
    """`wattscale ARGS` in this process (module fixtures cannot use capsys): (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    """One tiny run trained with --track to MLflow (SQLite) and TensorBoard: 3 intervals of 512 tokens."""
    root = tmp_path_factory.mktemp("tracked")
    db = root / "mlflow.db"
    code, out, err = _cli("--store", str(root / "w.db"), "train", *TINY, "--run-root", str(root / "runs"),
                          "--cache-dir", str(cache_dir), "--name", "tiny", "--track", f"mlflow:sqlite:///{db}",
                          "--track", f"tensorboard:{root / 'tb'}", "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    with open_store(str(root / "w.db")) as store:
        return {"root": root, "db": db, "run_id": run_id, "store": str(root / "w.db"), "record": store.get_run(run_id),
                "rows": store.energy_measurements(run_id), "evaluations": store.evaluations(run_id),
                "samples": store.power_samples(run_id)}


def _history(client: Any, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _only_run(client: Any, experiment: str) -> Any:
    found = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([found.experiment_id])
    return run


def _measured_components(rows: list[dict]) -> bool:
    return any(r["component"] != "cpu_estimate" for r in rows if r["scope"] == "run")


def test_train_track_logs_each_evaluation_live_to_mlflow(trained: dict) -> None:
    client = MlflowClient(f"sqlite:///{trained['db']}")
    run = _only_run(client, "wattscale")
    record = trained["record"]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    params = run.data.params
    assert params["run_id"] == trained["run_id"] and params["preset"] == "llama-tiny"
    assert params["energy_source/job"] == record["energy_source"] and params["config.train.tokens"] == "1536"
    assert _history(client, run.info.run_id, "val_loss") == {
        e["tokens_seen"]: pytest.approx(e["val_loss"], rel=1e-12) for e in trained["evaluations"]}
    if record["energy_j"] is None:
        pytest.skip("no meter usable here: nothing to compare energy with")
    # The trainer's interval rows and the live feed end at the same evaluation: the train phase's energy agrees.
    stored = _intervals_by_total_rule(trained["rows"], "train")
    assert sorted(stored) == [512, 1024, 1536]
    assert _history(client, run.info.run_id, "energy_j/train") == {k: pytest.approx(v, rel=1e-9)
                                                                    for k, v in stored.items()}
    assert run.data.metrics["total/energy_j/job"] == pytest.approx(record["energy_j"], rel=1e-9)
    assert run.data.metrics["total/energy_j/train"] == pytest.approx(record["train_energy_j"], rel=1e-9)


def _intervals_by_total_rule(rows: list[dict], phase: str) -> dict[int, float]:
    """Per interval, `phase`'s energy as the run's total rule adds it (measured components, else the estimate)."""
    measured = _measured_components(rows)
    out: dict[int, float] = {}
    for row in rows:
        if row["scope"] != "interval" or row["phase"] != phase:
            continue
        if measured and row["source"] == "estimated":
            continue
        out[row["end_tokens"]] = out.get(row["end_tokens"], 0.0) + row["energy_j"]
    return out


def test_train_track_writes_tensorboard_events(trained: dict) -> None:
    (folder,) = (trained["root"] / "tb").iterdir()
    assert folder.name == "tiny"
    events = EventAccumulator(str(folder))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("val_loss")}
    assert losses == {e["tokens_seen"]: pytest.approx(e["val_loss"], rel=1e-6) for e in trained["evaluations"]}
    text = events.Tensors("params/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert f"| run_id | {trained['run_id']} |" in text and "| preset | llama-tiny |" in text
    assert events.Tensors("status/text_summary")[-1].tensor_proto.string_val[0].decode() == "finished"


def test_export_to_mlflow_replays_the_store(trained: dict) -> None:
    code, out, err = _cli("--store", trained["store"], "export", "--to", "mlflow", "--tracking-uri",
                          f"sqlite:///{trained['db']}", "--mlflow-experiment", "replayed", "--max-points", "5",
                          "--json")
    assert code == 0, err
    (summary,) = json.loads(out)["runs"]
    assert summary["run_id"] == trained["run_id"] and summary["intervals"] == 3 and summary["evaluations"] == 3
    client = MlflowClient(f"sqlite:///{trained['db']}")
    run = _only_run(client, "replayed")
    assert run.info.run_id == summary["tracker"]["run_id"] and run.info.status == "FINISHED"
    record, params = trained["record"], run.data.params
    assert params["status"] == "finished" and params["kind"] == "train" and params["totals_basis"] == "phase rows"
    assert params["config.train.batch_size"] == "4"
    assert _history(client, run.info.run_id, "val_ppl") == {
        e["tokens_seen"]: pytest.approx(e["val_ppl"], rel=1e-12) for e in trained["evaluations"]}
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) <= 5
    for device in {s["device"] for s in trained["samples"]}:
        assert 1 <= len(client.get_metric_history(run.info.run_id, f"sampled_power_w/{device}")) <= 5
    if record["energy_j"] is None:
        return
    assert params["energy_source/job"] == record["energy_source"]
    assert all(params[f"source/{r['device']}"] == r["source"] for r in trained["rows"] if r["scope"] == "run")
    assert _history(client, run.info.run_id, "energy_j/eval") == {
        k: pytest.approx(v, rel=1e-9) for k, v in _intervals_by_total_rule(trained["rows"], "eval").items()}
    metrics = run.data.metrics
    assert metrics["total/energy_j/job"] == pytest.approx(record["energy_j"], rel=1e-9)
    assert metrics["total/seconds/train"] == pytest.approx(record["train_seconds"], rel=1e-9)
    assert metrics["total/joules_per_token/train"] == pytest.approx(record["train_energy_j"] / record["train_tokens"])
    # The cumulative energy at the last interval is every interval's energy added up.
    last = _history(client, run.info.run_id, "cumulative_energy_j/job")[1536]
    assert last == pytest.approx(sum(_history(client, run.info.run_id, "energy_j/job").values()), rel=1e-9)


def test_export_to_an_mlflow_folder_and_to_tensorboard(trained: dict, tmp_path: Path) -> None:
    code, out, err = _cli("--store", trained["store"], "export", "--to", "mlflow", "--tracking-uri",
                          str(tmp_path / "mlruns"), trained["run_id"])
    assert code == 0, err
    assert f"logged 1 run(s) to mlflow {tmp_path / 'mlruns'}" in out
    run = _only_run(MlflowClient((tmp_path / "mlruns").as_uri()), "wattscale")
    assert run.data.params["run_id"] == trained["run_id"]
    assert run.data.metrics["val_loss"] == pytest.approx(trained["record"]["final_val_loss"], rel=1e-12)

    code, out, err = _cli("--store", trained["store"], "export", "--to", "tensorboard", "-o", str(tmp_path / "tb"),
                          "--json")
    assert code == 0, err
    (summary,) = json.loads(out)["runs"]
    events = EventAccumulator(summary["tracker"]["log_dir"])
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("val_loss")} == {
        e["tokens_seen"]: pytest.approx(e["val_loss"], rel=1e-6) for e in trained["evaluations"]}
    if trained["record"]["energy_j"] is not None:
        (total,) = events.Scalars("total/energy_j/job")
        assert total.step == 1536 and total.value == pytest.approx(trained["record"]["energy_j"], rel=1e-6)


def test_monitor_feed_logs_energy_since_the_last_call(tmp_path: Path) -> None:
    tracker, broken = ListTracker(), ListTracker(fail=True)
    with Monitor(meters=[ConstantMeter(100.0)], sample_hz=200, idle_seconds=0, warmup_steps=0,
                 host_registry=str(tmp_path / "host")) as m:
        feed = MonitorFeed(m, [tracker, broken])
        feed.log_params({"lr": 3e-4})
        for step in (1, 2):
            with m.phase("train"):
                time.sleep(0.2)
                m.step(tokens=1000)
            logged = feed.log(step, {"train_loss": 2.0 / step})
            # One 100 W counter: each interval's train energy is 100 W x its train seconds.
            assert logged["energy_j/train"] == pytest.approx(100.0 * logged["seconds/train"], rel=1e-3)
            assert logged["seconds/train"] == pytest.approx(0.2, abs=0.05)
            assert logged["power_w/train"] == pytest.approx(100.0, rel=1e-3)
            assert logged["joules_per_token/train"] == pytest.approx(logged["energy_j/train"] / 1000)
    feed.close()
    assert tracker.params["lr"] == 3e-4 and tracker.params["energy_source/job"] == "counter"
    assert tracker.params["status"] == "finished" and tracker.closed == 1 and broken.closed == 0
    steps = [step for step, _ in tracker.metrics]
    assert steps == [1, 2, 2]  # two intervals, then the totals at the last step
    first, second, totals = (metrics for _, metrics in tracker.metrics)
    assert second["cumulative_energy_j/train"] == pytest.approx(first["energy_j/train"] + second["energy_j/train"])
    assert totals["total/energy_j/job"] == pytest.approx(m.result.job.energy_j)
    assert totals["total/tokens/train"] == 2000 and second["train_loss"] == 1.0


def test_a_tracker_that_fails_is_dropped_and_the_run_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good, broken = ListTracker(), ListTracker(fail=True)
    with Monitor(meters=[ConstantMeter(50.0)], sample_hz=100, idle_seconds=0,
                 host_registry=str(tmp_path / "host")) as m:
        feed = MonitorFeed(m, [broken, good])
        feed.log(1)
        feed.log(2)
    feed.close()
    err = capsys.readouterr().err
    assert err.count("tracker ListTracker failed") == 1 and "disk full" in err
    assert [s for s, _ in good.metrics] == [1, 2, 2]


def test_an_interrupted_measurement_is_replayed_with_its_status(tmp_path: Path) -> None:
    store_path = tmp_path / "m.db"
    with pytest.raises(KeyboardInterrupt), Monitor(meters=[ConstantMeter(80.0)], sample_hz=100, idle_seconds=0,
                                                   store=str(store_path), name="cut",
                                                   host_registry=str(tmp_path / "host")) as m:
        with m.phase("train"):
            time.sleep(0.1)
            m.step(tokens=500)
        raise KeyboardInterrupt
    from wattscale.trackers import replay_run

    tracker = ListTracker()
    with open_store(str(store_path)) as store:
        summary = replay_run(store, m.run_id, tracker, max_points=3)
        record = store.get_run(m.run_id)
    assert record["status"] == "interrupted" and summary.status == "interrupted"
    assert tracker.params["kind"] == "measured" and tracker.params["status"] == "interrupted"
    assert tracker.params["source/gpu0"] == "counter" and tracker.params["component/gpu0"] == "gpu"
    totals = {k: v for _, metrics in tracker.metrics for k, v in metrics.items() if k.startswith("total/")}
    assert totals["total/energy_j/job"] == pytest.approx(record["energy_j"], rel=1e-9)
    assert totals["total/energy_j/train"] == pytest.approx(80.0 * totals["total/seconds/train"], rel=1e-3)
    assert 1 <= summary.power_points <= 3 and tracker.closed == 1


def test_a_run_cut_short_totals_its_intervals(trained: dict, tmp_path: Path) -> None:
    """A run killed after two evaluations has interval rows but no phase rows: its totals add the intervals."""
    from wattscale.trackers import replay_run

    if trained["record"]["energy_j"] is None:
        pytest.skip("no meter usable here: no interval rows")
    second_end = sorted({r["end_seconds"] for r in trained["rows"] if r["scope"] == "interval"})[1]
    with open_store(trained["store"]) as source, open_store(str(tmp_path / "cut.db")) as store:
        store.copy_run_from(source, trained["run_id"])
        store.truncate_energy_after(trained["run_id"], second_end)  # what a resume does: phase and run rows go
        rows = store.energy_measurements(trained["run_id"])
        tracker = ListTracker()
        summary = replay_run(store, trained["run_id"], tracker)
    assert summary.intervals == 2 and summary.totals_basis == "intervals"
    assert tracker.params["totals_basis"] == "intervals"
    (totals,) = [m for _, m in tracker.metrics if "total/energy_j/job" in m]
    by_rule = _intervals_by_total_rule(rows, "train")
    assert sorted(by_rule) == [512, 1024]
    assert totals["total/energy_j/train"] == pytest.approx(sum(by_rule.values()), rel=1e-9)


def test_specs_name_the_tracker_its_target_and_the_mlflow_experiment() -> None:
    assert parse_spec("mlflow:sqlite:///a/b.db") == TrackerSpec("mlflow", "sqlite:///a/b.db", "wattscale")
    assert parse_spec("MLflow:./mlruns#study") == TrackerSpec("mlflow", "./mlruns", "study")
    assert parse_spec("tensorboard:runs/tb#1") == TrackerSpec("tensorboard", "runs/tb#1")
    assert str(parse_spec("mlflow:sqlite:///x.db#s")) == "mlflow:sqlite:///x.db#s"


@pytest.mark.parametrize(("spec", "words"), [
    ("wandb:run", "not a tracker spec"), ("mlflow", "not a tracker spec"), ("mlflow:", "gives no target"),
    ("tensorboard:  ", "gives no target"), ("mlflow:sqlite:///x.db#", "empty MLflow experiment"),
])
def test_a_bad_spec_is_one_line_naming_the_flag(spec: str, words: str) -> None:
    with pytest.raises(TrackerError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert message.startswith("--track: ") and words in message and "\n" not in message


def test_bad_track_and_export_flags_exit_2_in_one_line(trained: dict, tmp_path: Path) -> None:
    cases = [
        (["train", *TINY, "--track", "wandb:x"], "train.track: 'wandb:x' is not a tracker spec"),
        (["--store", trained["store"], "export", "--to", "mlflow"], "--tracking-uri: missing"),
        (["--store", trained["store"], "export", "--to", "tensorboard"], "-o/--output: missing"),
        (["--store", trained["store"], "export", "--to", "mlflow", "--tracking-uri", "ftp://x/y"], "unknown scheme"),
        (["--store", trained["store"], "export", "--to", "tensorboard", "-o", str(tmp_path / "tb"), "nope"],
         "no run 'nope'"),
        (["--store", trained["store"], "export", "-o", str(tmp_path / "r.csv"), trained["run_id"], "x"],
         "RUN_ID: --to table"),
    ]
    for args, words in cases:
        code, out, err = _cli(*args)
        assert code == 2, (args, err)
        assert words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "tb").exists()


def test_a_missing_tracker_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(TrackerError, match=r"pip install 'wattscale\[mlflow\]'"):
        tracker_from_spec(f"mlflow:sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TrackerError, match=r"pip install 'wattscale\[tensorboard\]'"):
        open_trackers([f"tensorboard:{tmp_path / 'tb'}"])
