"""`wattscale fit`, `plan-compute`, `plan-energy` through the CLI's main(), from a store and from CSV files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from law_fixtures import SEQ_LEN, TRUTH, write_law_store


@pytest.fixture
def run_cli(run_cli_in_process):
    """In this process: the commands' output and exit codes are under test, not the interpreter."""
    return run_cli_in_process


@pytest.fixture(scope="module")
def law_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_law_store(tmp_path_factory.mktemp("laws") / "laws.db")


def test_store_points_runs_checkpoints_and_parameter_counting(law_store):
    from wattscale.analysis.laws.data import law_data_from_store

    finals = law_data_from_store(str(law_store), "laws")
    assert len(finals) == 60 and finals.n_runs == 60 and finals.param_counting == "non_embedding"
    assert finals.batch_tokens.min() == 16 * SEQ_LEN and finals.energy_source == "estimated"
    with_checkpoints = law_data_from_store(str(law_store), "laws", checkpoints=True, param_counting="total")
    assert len(with_checkpoints) == 66 and with_checkpoints.n_runs == 60  # 6 checkpoints cluster with their runs
    assert with_checkpoints.params.max() == pytest.approx(1.1e9, rel=1e-6)
    assert np.isnan(with_checkpoints.energy_j[with_checkpoints.tokens < 4e9]).all()  # no energy on checkpoints


def test_fit_three_term_from_store_json(run_cli, law_store, tmp_path):
    res = run_cli("--store", str(law_store), "fit", "--form", "three-term", "--from-store", "--grid", "coarse",
                  "--boot", "20", "--compare", "chinchilla", "--plot", str(tmp_path / "fit.png"), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["data"]["n_points"] == 60 and out["fit"]["param_counting"] == "non_embedding"
    exponent = TRUTH["gamma"] / (TRUTH["beta"] + TRUTH["gamma"])
    coef = (TRUTH["beta"] * TRUTH["B"] / (TRUTH["gamma"] * TRUTH["C"])) ** (1 / (TRUTH["beta"] + TRUTH["gamma"]))
    assert out["batch_law"]["exponent"]["value"] == pytest.approx(exponent, rel=0.03)
    assert out["batch_law"]["coefficient"]["value"] == pytest.approx(coef, rel=0.3)
    assert out["batch_law"]["exponent"]["ci_low"] < out["batch_law"]["exponent"]["ci_high"]
    assert {"E", "A", "B", "alpha", "beta"} == set(out["batch_law"]["implied_chinchilla"])
    assert out["bootstrap"]["n_boot"] == 20 and set(out["bootstrap"]["params"]) == set(TRUTH)
    assert out["validation"]["n_test"] >= 12  # the largest size's runs
    assert [c["form"] for c in out["comparison"]][0] == "three-term"  # the true form wins on AIC
    assert out["batch_optima"] and out["compute_optima"]
    assert Path(out["plot"]).stat().st_size > 10_000


def test_plan_compute_matches_implied_chinchilla(law_store, capsys):
    """In this process through main() (plan-compute's subprocess path is test_human_readable_tables)."""
    from wattscale.cli import main

    code = main(["--store", str(law_store), "plan-compute", "--form", "three-term", "--flops", "1e20", "--json",
                 "--grid", "coarse", "--boot", "0"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    p = out["fit"]["params"]
    # Independent reference: the implied Chinchilla law at M* (DESIGN.md), then Hoffmann's N*(C) formula.
    k = (p["beta"] * p["B"] / (p["gamma"] * p["C"])) ** (1 / (p["beta"] + p["gamma"]))
    b2, beta2 = p["B"] * k ** -p["beta"] + p["C"] * k ** p["gamma"], p["beta"] * p["gamma"] / (p["beta"] + p["gamma"])
    g = (p["alpha"] * p["A"] / (beta2 * b2)) ** (1 / (p["alpha"] + beta2))
    n_star = g * (1e20 / 6) ** (beta2 / (p["alpha"] + beta2))
    assert out["compute_optima"][0]["params"]["value"] == pytest.approx(n_star, rel=1e-9)
    d_star = out["compute_optima"][0]["tokens"]["value"]
    assert out["batch_at_optimum"][0]["batch_tokens"]["value"] == pytest.approx(k * d_star ** (
        p["gamma"] / (p["beta"] + p["gamma"])), rel=1e-9)


def test_plan_energy_from_store(run_cli, law_store):
    res = run_cli("--store", str(law_store), "plan-energy", "--form", "three-term", "--kwh", "50", "--loss", "3.5",
                  "--json", "--grid", "coarse", "--boot", "30")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    model = out["energy_model"]
    assert model["coef_log_params"] == pytest.approx(1.0, abs=1e-6)  # joules were made proportional to 6N
    assert model["coef_log_batch"] == pytest.approx(-0.1, abs=1e-6)
    assert model["energy_source"] == "estimated" and model["n_runs"] == 60
    plan = out["plans"][0]
    assert plan["energy_kwh"] == 50 and plan["loss"]["ci_low"] <= plan["loss"]["value"] <= plan["loss"]["ci_high"]
    joules = plan["tokens"]["value"] * plan["joules_per_token"]["value"]
    assert joules == pytest.approx(50 * 3.6e6, rel=1e-9)  # the plan spends exactly the budget
    target = out["loss_targets"][0]
    assert 0 < target["energy_kwh"]["value"] < float("inf")


def test_human_readable_tables(run_cli, law_store):
    res = run_cli("--store", str(law_store), "plan-compute", "--form", "three-term", "--grid", "coarse", "--boot", "20",
                  "--flops", "1e19", "1e20", "--loss", "3.0")
    assert res.returncode == 0, res.stderr
    for text in ("95% bootstrap over runs", "compute-optimal allocation", "compute to reach a loss",
                 "optimal batch size (band"):
        assert text in res.stdout


def test_fit_tables_and_csv_with_column_mapping(tmp_path, monkeypatch, capsys):
    """In this process through main() (the subprocess path is covered above): tables, then CSV name mapping."""
    from wattscale.cli import main

    rng = np.random.default_rng(5)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 6), np.geomspace(1e8, 1e11, 6)))
    loss = (1.7 + 400.0 / n**0.34 + 1500.0 / d**0.30) * np.exp(rng.normal(0, 0.002, n.shape))
    pd.DataFrame({"N": n, "C": 6 * n * d, "L": loss}).to_csv(tmp_path / "points.csv", index=False)
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--csv", "points.csv", "--column", "params=N", "--column", "flops=C", "--column", "loss=L",
            "--grid", "coarse", "--no-plot", "--compare", "none"]
    assert main([*base, "--boot", "20", "--loss", "2.5"]) == 0
    out = capsys.readouterr().out
    for text in ("parameters (95% CI, 20/20", "starts reached it", "leave-largest-out", "compute to reach a loss"):
        assert text in out
    assert main([*base, "--boot", "0", "--no-validate", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert fit["params"]["alpha"] == pytest.approx(0.34, rel=0.03)
    assert fit["params"]["beta"] == pytest.approx(0.30, rel=0.03)


def write_bad_csvs(folder: Path) -> None:
    ok = pd.DataFrame({"params": [1e7, 1e8, 1e9, 1e7], "tokens": [1e9, 1e9, 1e9, 1e10], "loss": [3.0, 2.8, 2.6, 2.7]})
    ok.to_csv(folder / "ok.csv", index=False)
    ok.drop(columns="loss").to_csv(folder / "bad.csv", index=False)
    ok.assign(params=[1e7, 0.0, 1e9, 1e7]).to_csv(folder / "neg.csv", index=False)


BAD_INPUT = [
    (["fit", "--csv", "bad.csv"], "loss: no column 'loss'"),
    (["fit", "--csv", "neg.csv"], "params: 1 value(s) are not finite and > 0"),
    (["fit", "--csv", "ok.csv", "--form", "nope"], "argument --form: invalid choice: 'nope'"),  # choices since #14
    (["plan-energy", "--csv", "ok.csv", "--kwh", "1"], "energy_j: no measured energy"),
    (["plan-energy", "--csv", "ok.csv", "--kwh", "0"], "--kwh: energy budgets must be > 0"),
    (["fit", "--csv", "ok.csv", "--form", "three-term"], "batch_tokens"),
    (["fit", "--csv", "missing.csv"], "--csv: no file"),
    (["fit", "--csv", "ok.csv", "--column", "params"], "--column: 'params' is not NAME=HEADER"),
    (["plan-compute", "--csv", "ok.csv", "--flops", "-1"], "flops: every compute budget must be > 0"),
    (["fit", "--store", "nothing.db"], "store"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT[:3])
def test_bad_input_exits_2_with_one_line(run_cli, tmp_path, args, message):
    write_bad_csvs(tmp_path)
    res = run_cli(*args, "--boot", "0", *(["--no-plot"] if args[0] == "fit" else []))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("wattscale: error: ", "wattscale fit: error: ")), res.stderr
    assert message in lines[0], res.stderr


def test_more_bad_input_in_process(tmp_path, monkeypatch, capsys):
    """The same contract through main() in this process (no interpreter start per case)."""
    from wattscale.cli import main

    write_bad_csvs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for args, message in BAD_INPUT[3:]:
        code = main([*args, "--boot", "0", *(["--no-plot"] if args[0] == "fit" else [])])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
