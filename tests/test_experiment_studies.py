"""The shipped studies' smoke variants, run end to end through the CLI (what CI runs on CPU)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.anova import AnovaRM

from conftest import SHARED_DATA
from wattscale.model import PRESETS

REPO = Path(__file__).resolve().parents[1]


def run_smoke(run_cli, cache_dir: Path, study: str, *settings: str) -> list[dict]:
    """Run `study`'s smoke variant (with `--set SETTINGS`, if any) into a store of its own; its runs in run order."""
    # The smoke variants leave threads unset: each xdist worker's share of the CPUs (conftest) applies.
    result = run_cli("--store", f"{study}.db", "run", str(REPO / "experiments" / f"{study}.toml"), "--variant",
                     "smoke", "--cache-dir", str(cache_dir), "--no-progress",
                     *(("--set", *settings) if settings else ()), timeout=900)
    assert result.returncode == 0, result.stderr
    listed = run_cli("--store", f"{study}.db", "runs", "--experiment", f"{study}-smoke", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_dynamics_4m_smoke(run_cli_in_process, tmp_path: Path, cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    # The smoke's design (6 seeds, 21 intervals of 2 steps, one evaluation at 0 tokens) on llama-tiny, a quarter of
    # its tokens: the variant itself (llama-1m, 43,008 tokens) is what docs/guides/analysis.md shows.
    runs = run_smoke(run_cli, cache_dir, "dynamics_4m", "model.preset=llama-tiny", "train.tokens=10752",
                     "train.batch_size=4", "train.seq_len=64", "train.eval_interval_tokens=512")
    assert len(runs) == 6 and {r["seed"] for r in runs} == set(range(6))
    assert all(r["status"] == "finished" and r["tokens_seen"] == 10_752 for r in runs)
    with_evals = run_cli("--store", "dynamics_4m.db", "export", "evals.csv", "--table", "evaluations")
    assert with_evals.returncode == 0
    rows = (tmp_path / "evals.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 6 * 22  # 21 intervals per seed, closed by an evaluation, plus one at 0 tokens
    # Six seeds: six different runs, each learning (below the uniform 6.24 nats of a 512-token vocabulary).
    losses = [r["final_val_loss"] for r in runs]
    assert len(set(losses)) == 6 and max(losses) < 6.0

    # The analysis of the real runs: one condition, dynamics over 22 evaluations, spread across the six seeds.
    res = run_cli("--store", "dynamics_4m.db", "analyze", "--experiment", "dynamics_4m-smoke", "--json")
    assert res.returncode == 0, res.stderr
    analysis = json.loads(res.stdout)
    assert analysis["factor"] is None and "one condition" in analysis["not_computable"]["statistics"]
    (dynamics,) = analysis["dynamics"]
    assert len(dynamics["run_ids"]) == 6 and len(dynamics["across_seeds"]) == 22
    assert dynamics["across_seeds"][-1]["val_loss_sd"] == pytest.approx(statistics.stdev(losses))
    assert dynamics["rm_anova"]["val_loss"]["df1"] == 21 and dynamics["rm_anova"]["val_loss"]["apa"].startswith("F(")
    assert dynamics["stable_phase"]["across_seeds"]["reason"]


def test_three_term_law_smoke(run_cli_in_process, cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    # The smoke grid's corners (2 x 2 x 2 of its 3 x 4 x 4 cells): the whole grid trains 48 runs for the same checks.
    runs = run_smoke(run_cli, cache_dir, "three_term_law", "grid.model.n_layers=[1,4]", "grid.train.batch_size=[4,32]",
                     "grid.train.steps=[8,64]")
    assert len(runs) == 8 and all(r["status"] == "finished" for r in runs)
    cells = {(json.loads(r["condition_json"])["model.n_layers"], json.loads(r["condition_json"])["train.batch_size"],
              json.loads(r["condition_json"])["train.steps"]) for r in runs}
    assert len(cells) == 8
    for r in runs:  # every run trained exactly its steps x batch x seq_len tokens
        condition = json.loads(r["condition_json"])
        assert r["tokens_seen"] == condition["train.steps"] * condition["train.batch_size"] * 64
        assert r["steps"] == condition["train.steps"]
    # More data helps: at every size and batch, the longest run beats the shortest.
    by_cell = {(json.loads(r["condition_json"])["model.n_layers"], json.loads(r["condition_json"])["train.batch_size"],
                json.loads(r["condition_json"])["train.steps"]): r["final_val_loss"] for r in runs}
    for layers in (1, 4):
        for batch in (4, 32):
            assert by_cell[(layers, batch, 64)] < by_cell[(layers, batch, 8)]


def test_token_scale_energy_smoke(run_cli_in_process, cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    runs = run_smoke(run_cli, cache_dir, "token_scale_energy")
    assert len(runs) == 9
    assert sorted(r["data_tokens"] for r in runs) == [2_048] * 3 + [4_096] * 3 + [8_192] * 3
    assert all(r["status"] == "finished" and r["tokens_seen"] == r["data_tokens"] and r["epochs"] == 1.0 for r in runs)
    assert all(r["joules"] is not None and r["energy_source"] for r in runs), "every run's energy, with its source"
    # What the study measures: the training phase, one evaluation at the end, no intermediate checkpoint.
    for r in runs:
        assert r["train_energy_j"] is not None and 0 < r["train_energy_j"] < r["joules"]
        assert "checkpoint" not in r["phases"] and r["phases"]["eval"]["seconds"] > 0
        assert sum(p["joules"] for name, p in r["phases"].items() if name != "idle") == pytest.approx(r["joules"])
        assert json.loads(r["config_json"])["resolved"]["eval_interval_tokens"] is None
    blocks = {}
    for r in runs:
        blocks.setdefault(r["block"], []).append(r["data_tokens"])
    assert all(sorted(b) == [2_048, 4_096, 8_192] for b in blocks.values())  # each block holds every condition

    # The analysis of the real runs, checked against statsmodels on the numbers `runs --json` printed: tokens
    # per joule of the training phase, the default basis.
    res = run_cli("--store", "token_scale_energy.db", "analyze", "--experiment", "token_scale_energy-smoke", "--json")
    assert res.returncode == 0, res.stderr
    analysis = json.loads(res.stdout)
    assert analysis["factor"] == "tokens_seen" and analysis["levels"] == [2_048, 4_096, 8_192]
    assert analysis["energy_basis"] == "train" and {r["energy_basis"] for r in analysis["runs"]} == {"train"}
    long = pd.DataFrame({"rep": [r["repetition"] for r in runs], "tokens": [r["tokens_seen"] for r in runs],
                         "tpj": [r["train_tokens"] / r["train_energy_j"] for r in runs]})
    expected = AnovaRM(long, "tpj", "rep", within=["tokens"]).fit().anova_table.iloc[0]
    tpj = next(s for s in analysis["statistics"] if s["metric"] == "tokens_per_joule")
    assert tpj["rm_anova"]["f"] == pytest.approx(expected["F Value"], rel=1e-9)
    assert all(run["mfu"] is not None and 0 < run["mfu"] for run in analysis["runs"])  # each run recorded its peak
    assert {r["metric"] for r in analysis["returns"]} == {"final_val_loss", "final_val_ppl", "tokens_per_joule",
                                                           "pee"}


# The TinyStories studies read the real text through links in experiments/data/tinystories_train/ (they dangle in a
# checkout without the workplace's shared data next to it).
TINYSTORIES_TRAIN = REPO / "experiments" / "data" / "tinystories_train"
needs_tinystories = pytest.mark.skipif(not (TINYSTORIES_TRAIN / "1_train_sample_2MiB.txt").exists(),
                                       reason=f"the links in {TINYSTORIES_TRAIN} dangle here (no shared TinyStories)")


@needs_tinystories
def test_tinystories_dynamics_smoke(run_cli_in_process, cache_dir: Path) -> None:
    run_cli = run_cli_in_process
    runs = run_smoke(run_cli, cache_dir, "tinystories_dynamics")
    assert len(runs) == 6 and {r["seed"] for r in runs} == set(range(6))
    assert all(r["status"] == "finished" and r["tokens_seen"] == 10_752 for r in runs)
    config = json.loads(runs[0]["config_json"])
    assert config["resolved"]["precision"] == "fp32" and config["data"]["source"].endswith("tinystories_train")
    # Real text: a 512-token vocabulary starts at ln(512) = 6.24 nats; 42 steps of real stories go well below it.
    assert max(r["final_val_loss"] for r in runs) < 6.0 and len({r["final_val_loss"] for r in runs}) == 6
    res = run_cli("--store", "tinystories_dynamics.db", "analyze", "--experiment", "tinystories_dynamics-smoke",
                  "--json")
    assert res.returncode == 0, res.stderr
    (dynamics,) = json.loads(res.stdout)["dynamics"]
    assert len(dynamics["run_ids"]) == 6 and len(dynamics["across_seeds"]) == 22  # 21 intervals + the start
    assert dynamics["rm_anova"]["val_loss"]["df1"] == 21


@needs_tinystories
def test_tinystories_three_term_design_is_identifiable(run_cli_in_process, tmp_path: Path) -> None:
    """The full design, as planned, passes the fitter's data checks: losses from a known law, no training.

    The file's promise (spans of 10x or more, 3+ values, no collinearity, 3+ points per parameter) is about
    the design alone, so it is checked on the planned runs with synthetic losses from paper-3-like
    coefficients (E 1.2 + 30/N^0.3 + 5/M^0.3 + 20/K^0.5, 1% noise), through the same `fit --csv` a user
    would run; the fit must also recover the law closely enough to be worth running.
    """
    run_cli = run_cli_in_process
    res = run_cli("plan", str(REPO / "experiments" / "tinystories_three_term.toml"), "--cache-dir",
                  str(tmp_path / "c"), "--json")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    assert len(runs) == 36
    base = PRESETS["llama-4m"]
    embedding = base.vocab_size * base.d_model  # tied: counted once
    rng = np.random.default_rng(0)
    rows = []
    for r in runs:
        n, m, k = r["params"] - embedding, r["batch_tokens"], r["steps"]
        loss = (1.2 + 30 / n ** 0.3 + 5 / m ** 0.3 + 20 / k ** 0.5) * (1 + 0.01 * rng.standard_normal())
        rows.append({"params": n, "tokens": r["tokens"], "batch_tokens": m, "steps": k, "loss": loss})
    assert len({row["params"] for row in rows}) == 4 and max(x["params"] for x in rows) / min(
        x["params"] for x in rows) > 10
    pd.DataFrame(rows).to_csv(tmp_path / "design.csv", index=False)
    res = run_cli("fit", "--csv", str(tmp_path / "design.csv"), "--form", "three-term", "--boot", "0",
                  "--param-counting", "non_embedding", "--no-validate", "--json")
    assert res.returncode == 0, res.stderr
    fit = json.loads(res.stdout)
    assert fit["fit"]["n_points"] == 36
    data_words = ("spans", "distinct value", "collinear", "points for")
    assert not [w for w in fit["warnings"] if any(word in w for word in data_words)], fit["warnings"]


@needs_tinystories
def test_tinystories_token_scale_smoke(run_cli_in_process, cache_dir: Path) -> None:
    run_cli = run_cli_in_process
    runs = run_smoke(run_cli, cache_dir, "tinystories_token_scale")
    assert sorted(r["data_tokens"] for r in runs) == [2_048] * 3 + [4_096] * 3 + [8_192] * 3
    assert all(r["status"] == "finished" and r["epochs"] == 1.0 and r["train_energy_j"] for r in runs)
    orders = {}
    for r in runs:
        orders.setdefault(r["block"], []).append(r["data_tokens"])
    assert len({tuple(o) for o in orders.values()}) == 3  # williams: each block its own order of the three sets
    res = run_cli("--store", "tinystories_token_scale.db", "analyze", "--experiment", "tinystories_token_scale-smoke",
                  "--json")
    assert res.returncode == 0, res.stderr
    analysis = json.loads(res.stdout)
    assert analysis["factor"] == "tokens_seen" and analysis["energy_basis"] == "train"
    long = pd.DataFrame({"rep": [r["repetition"] for r in runs], "tokens": [r["tokens_seen"] for r in runs],
                         "tpj": [r["train_tokens"] / r["train_energy_j"] for r in runs]})
    expected = AnovaRM(long, "tpj", "rep", within=["tokens"]).fit().anova_table.iloc[0]
    tpj = next(s for s in analysis["statistics"] if s["metric"] == "tokens_per_joule")
    assert tpj["rm_anova"]["f"] == pytest.approx(expected["F Value"], rel=1e-9)


@pytest.mark.parametrize("study", ["dynamics_4m", "three_term_law", "token_scale_energy", "tinystories_dynamics",
                                   "tinystories_three_term", "tinystories_token_scale"])
def test_full_studies_plan_on_this_machine(run_cli_in_process, tmp_path: Path, study: str) -> None:
    """From any working directory: the file's data paths are relative to the file."""
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    if study == "dynamics_4m" and not (SHARED_DATA / "tinystories").is_dir():
        pytest.skip(f"dynamics_4m reads TinyStories from {SHARED_DATA / 'tinystories'}, absent here")
    if study.startswith("tinystories_") and not (TINYSTORIES_TRAIN / "1_train_sample_2MiB.txt").exists():
        pytest.skip(f"{study} reads TinyStories through {TINYSTORIES_TRAIN}, whose links dangle here")
    result = run_cli("plan", str(REPO / "experiments" / f"{study}.toml"), "--cache-dir", str(tmp_path / "c"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["experiment"] == study


def test_precision_parity_smoke(run_cli_in_process, tmp_path: Path, cache_dir: Path) -> None:
    runs = run_smoke(run_cli_in_process, cache_dir, "precision_parity")
    assert len(runs) == 4 and all(r["status"] == "finished" for r in runs)
    by_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        config = json.loads(r["config_json"]) if "config_json" in r else None
        precision = config["train"]["precision"] if config else r["condition"].split("=")[1]
        by_seed.setdefault(r["seed"], {})[precision] = r["final_val_loss"]
    assert set(by_seed) == {0, 1} and all(set(p) == {"fp32", "bf16"} for p in by_seed.values())
    # Same seed, same batches: bf16 autocast lands close to fp32 even after 32 steps of a tiny model.
    for losses in by_seed.values():
        assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 0.05, losses
