"""Issue 13, analysis entry points: numerical failures are "not computable", bad tables and output paths fail
with one line before the work, thin law data say how many points a fit needs, stored runs without --seq-len fit.

Every exit-2 case also checks that the store file is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis_fixtures import _write_run, write_study
from wattscale.store import open_store


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(res, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wattscale: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _two_seed_store(path: Path) -> Path:
    """The issue's store: two runs outside any experiment, different token counts and seeds (one run per seed)."""
    with open_store(str(path)) as store:
        _write_run(store, "a", 0, 1_000, None, 6, True)
        _write_run(store, "b", 1, 2_000, None, 6, True)
    return path


# --- item 1: numerical failures of the tests ------------------------------------------------------------------


def test_analyze_and_report_on_two_runs_with_one_run_per_seed_say_not_computable(run_cli_in_process,
                                                                                   tmp_path: Path) -> None:
    db = _two_seed_store(tmp_path / "r.db")
    res = run_cli_in_process("--store", str(db), "analyze", "--no-dynamics")
    assert res.returncode == 0, res.stderr
    assert "not computable mixed_model: mixed model not computable: every subject ('seed') has one observation" \
        in res.stdout
    out = json.loads(run_cli_in_process("--store", str(db), "analyze", "--json").stdout)
    assert all("mixed_model" in s["not_computable"] for s in out["statistics"] if s["n_runs"])
    res = run_cli_in_process("--store", str(db), "report", "-o", str(tmp_path / "r.html"))
    assert res.returncode == 0, res.stderr
    assert "mixed model not computable" in (tmp_path / "r.html").read_text()


def _unbalanced_frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = [{"s": s, "lvl": lvl, "y": float(rng.normal(lvl, 1))} for s in range(5) for lvl in (1, 2, 3)]
    return pd.DataFrame(rows[:-1])  # subject 4 lacks level 3: the mixed model runs


def test_a_singular_matrix_or_pingouin_error_inside_a_test_is_not_computable(monkeypatch) -> None:
    import pingouin
    import statsmodels.regression.mixed_linear_model as mlm

    from wattscale.analysis.comparisons import compare_metric

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    def pingouin_assert(*args, **kwargs):
        raise AssertionError("Data must be balanced")

    monkeypatch.setattr(mlm.MixedLM, "fit", singular)
    monkeypatch.setattr(pingouin, "friedman", pingouin_assert)
    res = compare_metric(_unbalanced_frame(), "y", "lvl", "s")
    assert res.not_computable["mixed_model"] == ("mixed model not computable on these data (LinAlgError: "
                                                 "Singular matrix)")
    assert res.not_computable["friedman"].startswith("Friedman test not computable on these data (AssertionError")
    assert res.rm_anova is not None and res.pairwise  # the other tests still ran


def test_a_nan_statistic_is_not_computable(monkeypatch) -> None:
    from scipy import stats as sps

    from wattscale.analysis.comparisons import compare_metric

    real = sps.page_trend_test
    monkeypatch.setattr(sps, "page_trend_test", lambda data: type(real(data))(float("nan"), float("nan"), "exact"))
    res = compare_metric(_unbalanced_frame(), "y", "lvl", "s")
    assert "Page's L trend test not computable on these data: L, p came out nan" in res.not_computable[
        "trend_increasing"]
    assert res.monotonic_verdict is None


# --- item 2: analyze --csv with cells that are not numbers ----------------------------------------------------


def _long_csv(path: Path, score_cells: list[str]) -> Path:
    lines = ["who,dose,score"] + [f"{i // 2},{1 + i % 2},{cell}" for i, cell in enumerate(score_cells)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_analyze_csv_fails_on_a_non_number_naming_file_line_and_column(run_cli_in_process, tmp_path: Path) -> None:
    _long_csv(tmp_path / "t.csv", ["1.5", "2.5", "1.1", "abc", "1.0", "2.0", "2", "3.3"])
    args = ("analyze", "--csv", "t.csv", "--metric", "score", "--factor", "dose", "--subject", "who")
    _one_line_error(run_cli_in_process(*args), "t.csv, line 5, column 'score': 'abc' is not a finite number")
    _long_csv(tmp_path / "t.csv", ["1.5", "2.5", "1.1", "inf", "1.0", "2.0", "2", "3.3"])
    _one_line_error(run_cli_in_process(*args), "line 5", "inf")


def test_analyze_csv_treats_empty_cells_as_missing_and_says_so(run_cli_in_process, tmp_path: Path) -> None:
    _long_csv(tmp_path / "t.csv", ["1.5", "2.5", "1.1", "", "1.0", "2.1", "2", "3.3", "0.7", "1.9"])
    args = ("analyze", "--csv", "t.csv", "--metric", "score", "--factor", "dose", "--subject", "who")
    res = run_cli_in_process(*args)
    assert res.returncode == 0, res.stderr
    assert "1 of 10 row(s) have an empty 'score' cell: left out as missing" in res.stdout
    out = json.loads(run_cli_in_process(*args, "--json").stdout)
    assert out["n_rows"] == 10 and [lv["n"] for lv in out["levels"]] == [5, 4]
    (tmp_path / "t.csv").write_text("who,dose,score\n0,1,1\n,2,2\n")
    _one_line_error(run_cli_in_process(*args), "--subject", "t.csv, line 3, column 'who' is empty")


# --- item 3: fit on too few or degenerate points --------------------------------------------------------------


@pytest.mark.parametrize(("rows", "needles"), [
    (["1e6,1e8,3.0"], ["needs at least 6 distinct points", "got 1 row(s)"]),
    (["1e6,1e8,3.0", "2e6,2e8,2.8"], ["needs at least 6 distinct points", "got 2 row(s), 2 distinct"]),
    (["1e6,1e8,3.0"] * 8, ["all 8 rows are identical"]),
    (["1e6,1e8,3.0", "2e6,2e8,-2.8"], ["loss:", "data row 2 of", "-2.8", "takes logs"]),
    (["1e6,1e8,3.0", "2e6,0,2.8"], ["tokens:", "data row 2"]),
    (["1e6,1e8,3.0", "2e6,nan,2.8"], ["tokens:", "nan"]),
    (["1e6,1e8,3.0", "inf,1e9,2.8"], ["params:", "inf"]),
    (["1e6,1e8,3.0", "2e6,2e8,abc"], ["loss: 'abc' at data row 2 of", "is not a number"]),
])
def test_fit_csv_with_too_few_or_degenerate_rows_fails_in_one_line(run_cli_in_process, tmp_path: Path, rows,
                                                                   needles) -> None:
    (tmp_path / "p.csv").write_text("params,tokens,loss\n" + "\n".join(rows) + "\n")
    res = run_cli_in_process("fit", "--csv", "p.csv", "--boot", "0", "--no-plot")
    _one_line_error(res, *needles)
    assert not list(tmp_path.glob("*.png"))


def test_fit_compares_only_the_forms_the_points_allow(run_cli_in_process, tmp_path: Path) -> None:
    n, d = np.meshgrid([1e6, 3e6, 1e7], [1e8, 1e9])  # 6 points: chinchilla (5) fits, three-term (7) cannot
    loss = 1.8 + 300 / n.ravel() ** 0.3 + 400 / d.ravel() ** 0.3
    pd.DataFrame({"params": n.ravel(), "tokens": d.ravel(), "loss": loss, "batch_tokens": 1e4}).to_csv(
        tmp_path / "p.csv", index=False)
    res = run_cli_in_process("fit", "--csv", "p.csv", "--boot", "0", "--no-plot", "--grid", "coarse", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert any(w.startswith("form three-term not compared: points: a three-term fit has 7 parameters")
               for w in out["warnings"])


# --- item 4: fit from stored runs trained without --seq-len ---------------------------------------------------


def test_fit_from_store_uses_the_context_length_when_seq_len_is_null(tmp_path: Path) -> None:
    from wattscale.analysis.laws.data import law_data_from_store

    with open_store(str(tmp_path / "s.db")) as store:
        for i, (n, tokens) in enumerate([(1e6, 1e8), (2e6, 2e8)]):
            config = {"model": {"context_length": 64}, "train": {"batch_size": 4, "seq_len": None}}
            store.create_run({"run_id": f"r{i}", "preset": "llama-tiny", "seed": i, "config_json": json.dumps(config),
                              "config_hash": f"h{i}", "tokens_budget": int(tokens), "params_total": int(n),
                              "params_non_embedding": int(n)})
            store.finish_run(f"r{i}", "finished", {"tokens_seen": int(tokens), "final_val_loss": 3.0 - i})
    data = law_data_from_store(str(tmp_path / "s.db"))
    assert len(data) == 2 and data.batch_tokens.tolist() == [256.0, 256.0] and not data.notes


# --- item 5: output paths, checked before the work ------------------------------------------------------------


@pytest.fixture
def study_db(tmp_path: Path) -> Path:
    write_study(tmp_path / "s.db", repetitions=3, n_evals=4)
    return tmp_path / "s.db"


@pytest.mark.parametrize(("command", "flag"), [
    (["fit", "--boot", "0", "--plot"], "-o/--output"),  # the old spelling; messages name -o/--output
    (["fit", "--boot", "0", "-o"], "-o/--output"),
    (["report", "-o"], "--output"),
    (["analyze", "--no-dynamics", "--out"], "-o/--output"),
    (["analyze", "--no-dynamics", "-o"], "-o/--output"),
])
@pytest.mark.parametrize("where", ["/proc/x.png", "a_file/x.png", "a_dir"])
def test_unwritable_output_paths_fail_before_the_work(run_cli_in_process, tmp_path: Path, study_db: Path, command,
                                                      flag, where, monkeypatch) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_dir").mkdir()
    if command[0] == "analyze" and where == "a_dir":
        where = "a_file"  # a folder is what --out wants; a file is the wrong kind
    import wattscale.analysis.study.analysis as study
    import wattscale.report.build as build

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(study, "analyze_study", no_work)
    monkeypatch.setattr(build, "open_store", no_work)
    monkeypatch.setattr("wattscale.analysis.laws.data.law_data_from_store", no_work)
    before = _digest(study_db)
    res = run_cli_in_process("--store", str(study_db), *command, where)
    _one_line_error(res, flag)
    assert _digest(study_db) == before


def test_a_write_error_after_the_fit_is_one_line(run_cli_in_process, tmp_path: Path, monkeypatch) -> None:
    import matplotlib.figure

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    n, d = np.meshgrid([1e6, 3e6, 1e7], [1e8, 1e9, 1e10])
    pd.DataFrame({"params": n.ravel(), "tokens": d.ravel(),
                  "loss": 1.8 + 300 / n.ravel() ** 0.3 + 400 / d.ravel() ** 0.3}).to_csv(tmp_path / "p.csv",
                                                                                      index=False)
    res = run_cli_in_process("fit", "--csv", "p.csv", "--boot", "0", "--grid", "coarse", "--compare", "none",
                             "--no-validate", "-o", "f.png")
    _one_line_error(res, "-o/--output: cannot write 'f.png' (No space left on device)")
