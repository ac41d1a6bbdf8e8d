"""Carbon and cost where energy is shown: `runs`, `energy`, `analyze` and `report` through the CLI, the
experiment file's [footprint] table, precedence (flags > WATTSCALE_* > file) and bad inputs.

Runs are written through the store API with known start and end times and energies, so every CO2e and cost
has a reference worked out by hand; `energy` reads a run measured by the public Monitor with a fake meter.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wattscale import Monitor
from wattscale.errors import ConfigError
from wattscale.experiment import load_experiment
from wattscale.store import open_store

sys.path.insert(0, str(Path(__file__).parent))
from test_monitor import busy, gpu  # noqa: E402  (the fake meter of the Monitor tests)

KWH = 3.6e6
GRID = "timestamp,g_per_kwh\n2026-01-01T00:00:00Z,100\n2026-01-01T01:00:00Z,300\n2026-01-01T02:00:00Z,500\n"
# run_id: (start, end, job energy J, training-phase energy J, train tokens, seed); times on 2026-01-01 UTC.
RUNS = {"a": ((0, 30), (1, 30), 1 * KWH, 0.5 * KWH, 1000, 0),  # grid mean (100 + 300) / 2 = 200
        "b": ((1, 0), (2, 0), 2 * KWH, 1.0 * KWH, 1000, 1)}  # grid mean 300


def _at(hour_minute: tuple[int, int]) -> datetime:
    return datetime(2026, 1, 1, *hour_minute, tzinfo=UTC)


def _write_runs(path: Path, experiment: str = "toy", runs: dict = RUNS) -> None:
    with open_store(str(path)) as store:
        for run_id, (start, end, job_j, train_j, tokens, seed) in runs.items():
            store.create_run({"run_id": run_id, "experiment": experiment, "preset": "llama-tiny", "seed": seed,
                              "tokens_budget": tokens, "config_json": json.dumps({"model": {"vocab_size": 64}}),
                              "config_hash": run_id})
            store.mark_running(run_id, _at(start), resumed=False)
            store.finish_run(run_id, "finished", {
                "finished_at": _at(end), "wall_seconds": (_at(end) - _at(start)).total_seconds(),
                "tokens_seen": tokens, "steps": 10, "final_val_loss": 3.0, "final_val_ppl": 20.0,
                "energy_j": job_j, "energy_source": "counter", "train_energy_j": train_j,
                "train_seconds": 600.0, "train_tokens": tokens})


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "fp.db"
    _write_runs(path)
    (tmp_path / "grid.csv").write_text(GRID)
    return path


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _study_file(folder: Path, footprint: str, name: str = "toy") -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "study.toml"
    path.write_text(f'[experiment]\nname = "{name}"\n[model]\npreset = "llama-tiny"\n[footprint]\n{footprint}\n')
    return path


def test_runs_json_and_table_state_co2e_cost_and_their_inputs(store_path: Path, run_cli_in_process) -> None:
    flags = ("--carbon-intensity", "grid.csv", "--pue", "1.5", "--price-per-kwh", "0.2", "--currency", "EUR")
    runs = {r["run_id"]: r["footprint"] for r in _json(run_cli_in_process("--store", str(store_path), "runs",
                                                                          "--json", *flags))}
    a, b = runs["a"], runs["b"]
    assert a["facility_energy_j"] == pytest.approx(1.5 * KWH) and a["energy_source"] == "counter"
    assert a["carbon_intensity_g_per_kwh"] == pytest.approx(200) and a["co2e_g"] == pytest.approx(1.5 * 200)
    assert b["co2e_g"] == pytest.approx(3.0 * 300) and b["cost"] == pytest.approx(3.0 * 0.2)
    assert a["cost"] == pytest.approx(0.3) and a["currency"] == "EUR"
    assert a["inputs"] == "PUE 1.50; gCO2e/kWh from grid.csv; 0.2 EUR/kWh"
    assert "time-weighted mean over the run, 200.0 gCO2e/kWh" in a["carbon_basis"]
    table = run_cli_in_process("--store", str(store_path), "runs", *flags)
    assert table.returncode == 0, table.stderr
    shown = " ".join(table.stdout.split())  # rich wraps long lines at the console's width
    assert "co2e_g" in shown and "cost_EUR" in shown and "900" in shown
    assert "inputs: PUE 1.50; gCO2e/kWh from grid.csv; 0.2 EUR/kWh" in shown
    assert "grid.csv: time-weighted mean over the run" in shown
    plain = run_cli_in_process("--store", str(store_path), "runs")
    assert plain.returncode == 0 and "co2e_g" not in plain.stdout and "cost" not in plain.stdout
    bare = _json(run_cli_in_process("--store", str(store_path), "runs", "--json"))
    assert bare[0]["footprint"]["co2e_g"] is None and bare[0]["footprint"]["inputs"].endswith("no price")


def test_a_run_outside_the_series_has_no_co2e_and_says_why(tmp_path: Path, run_cli_in_process) -> None:
    _write_runs(tmp_path / "late.db", runs={"c": ((5, 0), (6, 0), KWH, KWH, 100, 0)})
    (tmp_path / "grid.csv").write_text(GRID)  # its last value holds to 03:00
    (run,) = _json(run_cli_in_process("--store", str(tmp_path / "late.db"), "runs", "--json",
                                      "--carbon-intensity", "grid.csv"))
    assert run["footprint"]["co2e_g"] is None
    assert run["footprint"]["carbon_basis"] == ("grid.csv covers 2026-01-01 00:00 to 2026-01-01 03:00 UTC, not the "
                                                "run (2026-01-01 05:00 to 2026-01-01 06:00)")


def test_flags_beat_environment_beat_the_experiment_file(store_path: Path, tmp_path: Path,
                                                         run_cli_in_process) -> None:
    study = _study_file(tmp_path / "study", 'carbon_intensity_g_per_kwh = 100\nprice_per_kwh = 0.1\ncurrency = "USD"')

    def footprint(*extra: str, env: dict | None = None) -> dict:
        runs = _json(run_cli_in_process("--store", str(store_path), "runs", str(study), "--json", *extra, env=env))
        return {r["run_id"]: r["footprint"] for r in runs}["a"]

    from_file = footprint()
    assert from_file["co2e_g"] == pytest.approx(100) and from_file["cost"] == pytest.approx(0.1)
    from_env = footprint(env={"WATTSCALE_CARBON_INTENSITY": "250", "WATTSCALE_CURRENCY": "EUR"})
    assert from_env["co2e_g"] == pytest.approx(250) and from_env["currency"] == "EUR"
    from_flag = footprint("--carbon-intensity", "400", env={"WATTSCALE_CARBON_INTENSITY": "250"})
    assert from_flag["co2e_g"] == pytest.approx(400) and from_flag["cost"] == pytest.approx(0.1)


def test_a_relative_csv_in_the_file_is_read_from_the_files_folder(store_path: Path, tmp_path: Path,
                                                                  run_cli_in_process) -> None:
    folder = tmp_path / "study"
    study = _study_file(folder, 'carbon_intensity_csv = "grid.csv"\npue = 1.2')
    (folder / "grid.csv").write_text(GRID.replace(",100\n", ",700\n"))  # not the cwd's grid.csv
    spec = load_experiment(study)
    assert spec.footprint == {"carbon_intensity_csv": str(folder / "grid.csv"), "pue": 1.2}
    runs = {r["run_id"]: r["footprint"] for r in _json(run_cli_in_process("--store", str(store_path), "runs",
                                                                          str(study), "--json"))}
    assert runs["a"]["co2e_g"] == pytest.approx(1.2 * (700 + 300) / 2)


def test_the_footprint_table_is_checked_and_is_no_part_of_the_study(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "study.toml").write_text('[experiment]\nname = "toy"\n[model]\npreset = "llama-tiny"\n')
    with_table = _study_file(tmp_path / "with", "carbon_intensity_g_per_kwh = 50\npue = 1.3")
    assert load_experiment(with_table).spec_hash() == load_experiment(plain / "study.toml").spec_hash()
    assert load_experiment(plain / "study.toml").footprint == {}
    assert load_experiment(with_table, settings=["footprint.pue=1.1"]).footprint["pue"] == 1.1
    swapped = load_experiment(with_table, settings=["footprint.carbon_intensity_csv=g.csv"]).footprint
    assert swapped == {"carbon_intensity_csv": str(tmp_path / "g.csv"), "pue": 1.3}  # --set paths: from the cwd
    variant = tmp_path / "variant" / "study.toml"
    variant.parent.mkdir()
    variant.write_text(with_table.read_text() + "[variants.cloud.footprint]\npue = 1.1\nprice_per_kwh = 0.2\n"
                       'currency = "USD"\n')
    assert load_experiment(variant, variant="cloud").footprint == {
        "carbon_intensity_g_per_kwh": 50.0, "pue": 1.1, "price_per_kwh": 0.2, "currency": "USD"}
    for text, message in (("price_per_kw = 0.3", "footprint.price_per_kw: unknown key; did you mean "
                                                 "footprint.price_per_kwh?"),
                          ('pue = "high"', "footprint.pue: 'high' is not a number"),
                          ("pue = 0.5", "footprint.pue: 0.5 is outside 1.0 to 5.0"),
                          ('carbon_intensity_g_per_kwh = 1\ncarbon_intensity_csv = "g.csv"', "not both")):
        path = _study_file(tmp_path / "bad", text)
        with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
            load_experiment(path)
    # A price without a currency in the file may take its currency from a flag or the environment.
    assert load_experiment(_study_file(tmp_path / "price", "price_per_kwh = 0.3")).footprint == {"price_per_kwh": 0.3}


def test_energy_states_facility_energy_co2e_cost_inputs_and_source(tmp_path: Path, run_cli_in_process) -> None:
    store = tmp_path / "m.db"
    with Monitor(meters=[gpu(250.0)], sample_hz=50, idle_seconds=0, warmup_steps=0, store=str(store),
                 name="fine-tune", host_registry=None) as m:
        for _ in range(2):
            with m.phase("train"):
                busy(0.05)
                m.step(tokens=128)
    job_j, train_j = m.result.job.energy_j, m.result.phase("train").energy_j
    report = _json(run_cli_in_process("--store", str(store), "energy", m.run_id, "--json", "--carbon-intensity",
                                      "360", "--pue", "1.25", "--price-per-kwh", "0.4", "--currency", "EUR"))
    job, train = report["footprint"], report["train_footprint"]
    assert job["energy_j"] == pytest.approx(job_j) and job["energy_source"] == "counter"
    assert job["facility_energy_j"] == pytest.approx(1.25 * job_j)
    assert job["co2e_g"] == pytest.approx(1.25 * job_j / KWH * 360) and report["co2e_g"] == job["co2e_g"]
    assert job["cost"] == pytest.approx(1.25 * job_j / KWH * 0.4) and job["currency"] == "EUR"
    assert train["co2e_g"] == pytest.approx(1.25 * train_j / KWH * 360)
    assert job["inputs"] == "PUE 1.25; 360 gCO2e/kWh (constant); 0.4 EUR/kWh"
    assert job["carbon_basis"] == "360 gCO2e/kWh (constant)"
    text = run_cli_in_process("--store", str(store), "energy", m.run_id, "--carbon-intensity", "360")
    assert text.returncode == 0, text.stderr
    shown = " ".join(text.stdout.split())  # rich wraps long lines at the console's width
    assert "facility energy:" in shown and "source counter, x PUE 1.00" in shown
    assert "inputs: PUE 1.00; 360 gCO2e/kWh (constant); no price; carbon basis: 360 gCO2e/kWh" in shown
    assert "cost: not computed (give --price-per-kwh and --currency" in shown
    old = _json(run_cli_in_process("--store", str(store), "energy", m.run_id, "--json", "--grid-gco2e-per-kwh", "100"))
    assert old["co2e_g"] == pytest.approx(job_j / KWH * 100) and old["grid_gco2e_per_kwh"] == 100


def test_analyze_gains_co2e_and_cost_metrics_with_their_inputs(store_path: Path, run_cli_in_process) -> None:
    result = _json(run_cli_in_process("--store", str(store_path), "analyze", "--json", "--no-dynamics",
                                      "--carbon-intensity", "grid.csv", "--price-per-kwh", "0.2", "--currency",
                                      "EUR"))
    assert result["footprint"]["configured"] and result["footprint"]["metrics"] == {
        "co2e_g": "gCO2e", "co2e_g_per_token": "gCO2e/token", "cost": "EUR"}
    runs = {r["run_id"]: r for r in result["runs"]}
    a = runs["a"]  # the training phase's 0.5 kWh at the run's 200 gCO2e/kWh over 1000 tokens
    assert a["co2e_g"] == pytest.approx(100) and a["co2e_g_per_token"] == pytest.approx(0.1)
    assert a["cost"] == pytest.approx(0.1) and a["currency"] == "EUR" and a["energy_basis"] == "train"
    assert "time-weighted mean over the run" in a["carbon_basis"] and a["footprint_inputs"].startswith("PUE 1.00")
    assert runs["b"]["co2e_g"] == pytest.approx(300)
    means = {c["metric"]: c["mean"] for c in result["conditions"]}
    assert means["co2e_g"] == pytest.approx(200) and means["cost"] == pytest.approx(0.15)
    job = _json(run_cli_in_process("--store", str(store_path), "analyze", "--json", "--no-dynamics",
                                   "--energy-basis", "job", "--carbon-intensity", "100"))
    assert {r["run_id"]: r["co2e_g"] for r in job["runs"]} == pytest.approx({"a": 100, "b": 200})
    plain = _json(run_cli_in_process("--store", str(store_path), "analyze", "--json", "--no-dynamics"))
    assert not plain["footprint"]["configured"] and "co2e_g" not in plain["runs"][0]
    text = run_cli_in_process("--store", str(store_path), "analyze", "--no-dynamics", "--metric", "co2e_g",
                              "--carbon-intensity", "100")
    assert text.returncode == 0, text.stderr
    shown = " ".join(text.stdout.split())  # rich wraps long lines at the console's width
    assert "co2e_g (gCO2e)" in shown and "inputs: PUE 1.00; 100 gCO2e/kWh (constant); no price" in shown


def test_report_shows_carbon_and_cost_or_how_to_configure_them(store_path: Path, tmp_path: Path,
                                                               run_cli_in_process) -> None:
    out = tmp_path / "r.html"
    result = run_cli_in_process("--store", str(store_path), "report", "-o", str(out), "--carbon-intensity", "400",
                                "--price-per-kwh", "0.25", "--currency", "EUR")
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "<h3>Carbon and cost</h3>" in html and "cost (EUR): mean [95% CI]" in html
    assert "inputs: PUE 1.00; 400 gCO2e/kWh (constant); 0.25 EUR/kWh; carbon basis: 400 gCO2e/kWh" in html
    plain = run_cli_in_process("--store", str(store_path), "report", "-o", str(tmp_path / "plain.html"))
    assert plain.returncode == 0, plain.stderr
    assert "CO2e and cost are not shown: give `wattscale report` --carbon-intensity" in (
        tmp_path / "plain.html").read_text()


@pytest.mark.parametrize("command", [("runs",), ("analyze", "--no-dynamics"), ("report", "-o", "bad.html")])
def test_a_bad_csv_is_one_line_exit_2_and_nothing_written(store_path: Path, tmp_path: Path, run_cli_in_process,
                                                          command: tuple[str, ...]) -> None:
    (tmp_path / "bad.csv").write_text("timestamp,g_per_kwh\n2026-01-01T00:00:00Z,lots\n")
    result = run_cli_in_process("--store", str(store_path), *command, "--carbon-intensity", "bad.csv")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "wattscale: error: footprint.carbon_intensity_csv: bad.csv line 2: expected an ISO 8601 time and a number, "
        "got '2026-01-01T00:00:00Z', 'lots'"]
    assert not (tmp_path / "bad.html").exists()


def test_bad_values_from_the_environment_or_flags_are_one_line(store_path: Path, run_cli_in_process) -> None:
    result = run_cli_in_process("--store", str(store_path), "runs", env={"WATTSCALE_PUE": "lots"})
    assert result.returncode == 2
    assert result.stderr.strip() == "wattscale: error: $WATTSCALE_PUE: 'lots' is not a number"
    result = run_cli_in_process("--store", str(store_path), "runs", "--price-per-kwh", "0.3")
    assert result.returncode == 2 and "footprint.currency: a price per kWh needs a currency" in result.stderr
    result = run_cli_in_process("--store", str(store_path), "runs", "--carbon-intensity", "missing.csv")
    assert result.returncode == 2 and "cannot read missing.csv (No such file or directory)" in result.stderr
    study = _study_file(store_path.parent / "study", 'carbon_intensity_csv = "none.csv"')
    result = run_cli_in_process("--store", str(store_path), "runs", str(study))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"cannot read {study.parent / 'none.csv'} (No such file or directory)" in result.stderr
    assert f"(from the [footprint] table of {study})" in result.stderr

