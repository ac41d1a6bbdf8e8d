"""`wattscale analyze` on a synthetic study in a real store: statistics against statsmodels/scipy, partial data,
bad input, files, hooks; and on a long CSV."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.anova import AnovaRM

from analysis_fixtures import FLOPS_PER_TOKEN, LEVELS, PARAMS, PEAK_FLOPS, energy_j, eval_loss, val_loss, write_study
from wattscale.analysis.study.analysis import analyze_study
from wattscale.analysis.study.data import load_from_store


def _by_metric(result: dict) -> dict:
    return {s["metric"]: s for s in result["statistics"]}


def test_study_statistics_match_statsmodels_and_hand_values(tmp_path: Path) -> None:
    write_study(tmp_path / "s.db", repetitions=5)
    result = analyze_study(load_from_store(str(tmp_path / "s.db"), "toy")).to_dict()
    assert result["factor"] == "tokens_seen" and result["subject"] == "repetition"
    assert result["levels"] == list(LEVELS) and result["missing"]["balanced"]

    run = next(r for r in result["runs"] if r["run_id"] == "r2t2000")
    assert run["tokens_per_joule"] == pytest.approx(2_000 / energy_j(2, 2_000))
    assert run["mfu"] == pytest.approx(FLOPS_PER_TOKEN * 2_000 / (10 * 0.5) / PEAK_FLOPS)
    loss = val_loss(2, 2_000)
    kwh = energy_j(2, 2_000) / 3.6e6
    assert run["ppl_gain_per_kwh"] == pytest.approx((math.exp(loss + 2) - math.exp(loss)) / kwh)  # eval at 0
    assert run["pee"] == pytest.approx(math.exp(-loss) / (PARAMS / 1e6 * kwh))

    # Independent: statsmodels' AnovaRM and scipy's Friedman on the same numbers computed from the formulas.
    long = pd.DataFrame([{"rep": r, "tokens": t, "tpj": t / energy_j(r, t)} for r in range(5) for t in LEVELS])
    sm = AnovaRM(long, "tpj", "rep", within=["tokens"]).fit().anova_table.iloc[0]
    tpj = _by_metric(result)["tokens_per_joule"]
    assert tpj["rm_anova"]["f"] == pytest.approx(sm["F Value"], rel=1e-9)
    assert tpj["rm_anova"]["p"] == pytest.approx(sm["Pr > F"], rel=1e-9)
    wide = long.pivot(index="rep", columns="tokens", values="tpj").to_numpy()
    assert tpj["friedman"]["chi2"] == pytest.approx(sps.friedmanchisquare(*wide.T).statistic)
    anova = tpj["rm_anova"]
    if anova["sphericity_violated"]:  # the sentence then reports the Greenhouse-Geisser dfs and p
        assert tpj["apa"].startswith(f"F({2 * anova['gg_epsilon']:.2f}, {8 * anova['gg_epsilon']:.2f}) = ")
    else:
        assert tpj["apa"].startswith("F(2, 8) = ")
    # Efficiency falls at every step for every repetition: the strict claim rests on Page's L and the pairs.
    assert tpj["monotonic_verdict"].startswith("strictly decreasing")
    assert tpj["mixed_model"] is None  # balanced: no need for the mixed model

    cond = next(c for c in result["conditions"] if c["metric"] == "tokens_per_joule" and c["level"] == 4_000)
    values = [4_000 / energy_j(r, 4_000) for r in range(5)]
    assert cond["n"] == 5 and cond["mean"] == pytest.approx(statistics.fmean(values))
    assert cond["sd"] == pytest.approx(statistics.stdev(values)) and cond["energy_sources"] == ["counter"]

    returns = {r["metric"]: r for r in result["returns"]}
    step = returns["final_val_loss"]["steps"][0]
    gains = [val_loss(r, 1_000) - val_loss(r, 2_000) for r in range(5)]
    assert step["per_doubling"]["mean"] == pytest.approx(statistics.fmean(gains))


def test_dynamics_per_condition_against_hand_values(tmp_path: Path) -> None:
    write_study(tmp_path / "s.db", repetitions=3)
    result = analyze_study(load_from_store(str(tmp_path / "s.db"), "toy")).to_dict()
    assert [d["condition"] for d in result["dynamics"]] == list(LEVELS)
    d = result["dynamics"][0]
    final = d["across_seeds"][-1]
    finals = [val_loss(r, LEVELS[0]) for r in range(3)]
    assert final["val_loss_sd"] == pytest.approx(statistics.stdev(finals))
    assert final["val_loss_cv"] == pytest.approx(statistics.stdev(finals) / statistics.fmean(finals))
    assert all(b["count"] == 0 for b in d["backslides"])  # the curves only fall
    # volatility at interval 3 = SD of the val-loss changes at intervals 1..3.
    curve = [eval_loss(0, LEVELS[0], i, 8) for i in range(8)]
    changes = [curve[i] - curve[i - 1] for i in (1, 2, 3)]
    row3 = next(r for r in d["intervals"] if r["interval"] == 3 and r["run_id"] == "r0t1000")
    assert row3["volatility"] == pytest.approx(statistics.stdev(changes))
    assert set(d["rm_anova"]) == {"val_loss", "val_ppl", "volatility"}


def test_partial_study_says_what_is_missing_and_which_tests_apply(tmp_path: Path) -> None:
    write_study(tmp_path / "s.db", repetitions=4, skip=((3, 4_000),), unfinished=((1, 2_000),))
    result = analyze_study(load_from_store(str(tmp_path / "s.db"), "toy")).to_dict()
    missing = {(m["run_id"], m["status"]) for m in result["missing"]["not_finished"]}
    assert missing == {("r3t4000", "not started"), ("r1t2000", "running")}
    assert result["missing"]["levels_with_fewer_runs"] == {"2000": 3, "4000": 3} and not result["missing"]["balanced"]
    assert result["design_note"].startswith("unbalanced: 2 of 4 subjects")
    tpj = _by_metric(result)["tokens_per_joule"]
    assert tpj["n_subjects_complete"] == 2 and tpj["dropped_subjects"] == [1, 3]
    assert tpj["mixed_model"] is not None and tpj["mixed_model"]["n_observations"] == 10


def _study_store(tmp_path: Path, **kwargs) -> None:
    write_study(tmp_path / "s.db", **kwargs)


def test_cli_json_out_files_and_terminal(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    _study_store(tmp_path, repetitions=4)
    res = run_cli("--store", "s.db", "analyze", "--experiment", "toy", "--json", "--out", "out")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    tpj = _by_metric(result)["tokens_per_joule"]
    for key in ("f", "df1", "df2", "p", "p_gg", "ng2", "mauchly_w", "sphericity_violated", "gg_epsilon"):
        assert key in tpj["rm_anova"]
    assert {"p_bonferroni", "p_holm", "cohen_dz", "ci95_low"} <= set(tpj["pairwise"][0])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(["analysis.json", "runs.csv", "conditions.csv", "statistics.csv", "pairwise.csv",
                              "returns.csv", "dynamics_intervals.csv", "dynamics_across_seeds.csv"])
    stats_csv = pd.read_csv(tmp_path / "out" / "statistics.csv")
    assert stats_csv.loc[stats_csv.metric == "tokens_per_joule", "f"].item() == pytest.approx(tpj["rm_anova"]["f"])
    text = run_cli("--store", "s.db", "analyze", "--experiment", "toy", "--metric", "tokens_per_joule")
    assert text.returncode == 0 and "strictly decreasing" in text.stdout and "RM-ANOVA: F(" in text.stdout


@pytest.mark.parametrize(("args", "field"), [
    (["--metric", "nope"], "--metric"),
    (["--by", "nope"], "--by"),
    (["--subject", "nope"], "--subject"),
    (["--experiment", "absent"], "--experiment"),
    (["--factor", "x"], "--factor"),
    (["--alpha", "2"], "alpha"),
])
def test_cli_bad_input_is_one_line_exit_2(run_cli_in_process, tmp_path: Path, args: list[str], field: str) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    _study_store(tmp_path, repetitions=2)
    before = (tmp_path / "s.db").read_bytes()
    res = run_cli("--store", "s.db", "analyze", *(["--experiment", "toy"] if "--experiment" not in args else []),
                  *args)
    assert res.returncode == 2 and field in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (tmp_path / "s.db").read_bytes() == before


def test_cli_one_level_factor_and_one_subject_are_marked_not_computable(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    _study_store(tmp_path, repetitions=1)
    res = run_cli("--store", "s.db", "analyze", "--experiment", "toy", "--json", "--metric", "tokens_per_joule")
    assert res.returncode == 0, res.stderr
    (tpj,) = json.loads(res.stdout)["statistics"]
    assert tpj["rm_anova"] is None and "at least 2 are needed" in tpj["not_computable"]["rm_anova"]
    one = run_cli("--store", "s.db", "analyze", "--experiment", "toy", "--json", "--by", "preset", "--no-dynamics")
    assert one.returncode == 0, one.stderr
    assert all("1 level(s)" in s["not_computable"]["rm_anova"] for s in json.loads(one.stdout)["statistics"])


def test_metrics_hook_and_runs_export(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    _study_store(tmp_path, repetitions=3)
    (tmp_path / "hook.py").write_text("METRICS = {'tokens_per_second': lambda run: run['tokens_seen'] / "
                                      "run['wall_seconds']}\n")
    res = run_cli("--store", "s.db", "analyze", "--experiment", "toy", "--metrics-hook", "hook.py", "--json",
                  "--metric", "tokens_per_second", "--no-dynamics")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    run = next(r for r in result["runs"] if r["run_id"] == "r1t4000")
    assert run["tokens_per_second"] == pytest.approx(4_000 / (8.0 + 1))
    assert result["statistics"][0]["rm_anova"]["f"] > 0
    (tmp_path / "bad_hook.py").write_text("raise RuntimeError('boom')\n")
    bad = run_cli("--store", "s.db", "analyze", "--metrics-hook", "bad_hook.py")
    assert bad.returncode == 2 and "--metrics-hook" in bad.stderr and "boom" in bad.stderr

    assert run_cli("--store", "s.db", "export", "runs.parquet").returncode == 0
    from_file = run_cli("analyze", "--runs-file", "runs.parquet", "--by", "tokens_seen", "--json",
                        "--metric", "tokens_per_joule")
    assert from_file.returncode == 0, from_file.stderr
    exported = json.loads(from_file.stdout)
    assert exported["subject"] == "seed" and exported["dynamics"] == []
    assert "dynamics need the store" in exported["not_computable"]["dynamics"]
    from_store = run_cli("--store", "s.db", "analyze", "--experiment", "toy", "--json", "--metric", "tokens_per_joule")
    assert exported["statistics"][0]["rm_anova"]["f"] == pytest.approx(
        json.loads(from_store.stdout)["statistics"][0]["rm_anova"]["f"])


def test_long_csv_against_statsmodels_scipy_and_bad_columns(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    rng = np.random.default_rng(11)
    wide = rng.normal(0, 1, (8, 4)) + rng.normal(0, 2, (8, 1)) + np.array([0.0, 0.4, 0.9, 1.6])
    long = pd.DataFrame([{"who": s, "dose": d, "score": wide[s, j]} for s in range(8)
                         for j, d in enumerate((10, 20, 40, 80))])
    long.to_csv(tmp_path / "long.csv", index=False)
    res = run_cli("analyze", "--csv", "long.csv", "--metric", "score", "--factor", "dose", "--subject", "who",
                  "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    sm = AnovaRM(long, "score", "who", within=["dose"]).fit().anova_table.iloc[0]
    assert out["statistics"]["rm_anova"]["f"] == pytest.approx(sm["F Value"], rel=1e-9)
    assert out["statistics"]["rm_anova"]["p"] == pytest.approx(sm["Pr > F"], rel=1e-9)
    assert out["statistics"]["friedman"]["p"] == pytest.approx(sps.friedmanchisquare(*wide.T).pvalue)
    page = sps.page_trend_test(wide)
    assert out["statistics"]["trend_increasing"]["page_l"] == pytest.approx(page.statistic)
    assert [lv["mean"] for lv in out["levels"]] == pytest.approx(list(wide.mean(axis=0)))
    assert len(out["statistics"]["pairwise"]) == 6

    for args, field in ((["--metric", "nope", "--factor", "dose", "--subject", "who"], "--metric"),
                        (["--metric", "score", "--factor", "dose"], "--subject"),
                        (["--metric", "score", "--factor", "dose", "--subject", "missing"], "--subject")):
        bad = run_cli("analyze", "--csv", "long.csv", *args)
        assert bad.returncode == 2 and field in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    long[long.who == 0].to_csv(tmp_path / "one.csv", index=False)
    one = run_cli("analyze", "--csv", "one.csv", "--metric", "score", "--factor", "dose", "--subject", "who", "--json")
    assert one.returncode == 0 and "at least 2 are needed" in json.loads(one.stdout)["statistics"]["not_computable"][
        "rm_anova"]
