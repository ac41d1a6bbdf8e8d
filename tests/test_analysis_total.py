"""Every analysis entry point is total (issue 13): on any store or table that passes validation, `analyze`, `fit`
and `report` give a result, or say which test is not computable and why; never an exception.

Hypothesis draws small stores (written through the public Store API by `analysis_fixtures._write_run`: no
training) and long tables (CSV files for ``analyze --csv`` and ``fit --csv``) with the shapes that broke before:
zero runs, one run, one subject, unbalanced designs, duplicated runs, constant metrics, runs without energy,
unfinished runs, missing cells, NaN, inf, text in number columns. Each is run through the CLI's `main` in this
process, and the properties are: the exit code is 0 or 2; exit 2 comes with one line on stderr; exit 0 with a
skipped test says "not computable" in what it prints (or writes, for the report). Derandomised, so the examples
are the same on every run; sized so the file takes well under a minute on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from analysis_fixtures import LEVELS, _write_run
from wattscale.cli import main
from wattscale.store import open_store

FAST = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def run(*args: str) -> Outcome:
    """`wattscale ARGS` in this process; an exception escaping `main` fails the test as it should."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_clean_exit(res: Outcome) -> None:
    """Exit 0, or exit 2 with exactly one line naming the problem."""
    assert res.code in (0, 2), (res.code, res.stderr)
    event(f"exit {res.code}" + (f": {res.stderr.split(':')[2].strip()}" if res.code else ""))
    if res.code == 2:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wattscale: error: "), res.stderr


def skipped_tests(analysis: dict) -> list[str]:
    """Every 'not computable' reason anywhere in an analysis result."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "not_computable" and isinstance(inner, dict):
                    found.extend(inner.values())
                else:
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(analysis)
    return found


# --- stores ---------------------------------------------------------------------------------------------------

RUN = st.fixed_dictionaries({
    "rep": st.integers(0, 2),  # the subject
    "level": st.sampled_from(LEVELS),
    "loss": st.one_of(st.none(), st.floats(0.5, 8.0)),  # None: the fixture's known value
    "energy": st.sampled_from(["default", "default", None, 5_000.0]),  # None: no energy measured
    "finished": st.sampled_from([True, True, True, False]),
    "n_evals": st.sampled_from([2, 3, 5]),
    "params": st.sampled_from([None, 1_000_000, 4_000_000, 16_000_000]),
})
STORES = st.tuples(st.sampled_from([None, "toy"]), st.booleans(), st.lists(RUN, max_size=6))


def write_store(path: Path, experiment: str | None, constant: bool, runs: list[dict]) -> Path:
    """Runs as drawn (same rep and level twice: a duplicated run); ``constant``: every metric the same."""
    with open_store(str(path)) as store:
        for i, r in enumerate(runs):
            _write_run(store, f"run{i}", r["rep"], r["level"], experiment, r["n_evals"], r["finished"],
                       final_loss=3.0 if constant else r["loss"], energy=5_000.0 if constant else r["energy"],
                       params_non_embedding=r["params"])
    return path


@settings(FAST, max_examples=14)
@given(STORES)
def test_analyze_and_fit_on_any_store_give_a_result_or_a_reason(drawn) -> None:
    experiment, constant, runs = drawn
    with tempfile.TemporaryDirectory() as tmp:
        db = write_store(Path(tmp) / "s.db", experiment, constant, runs)
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        res = run("--store", str(db), "analyze", "--out", f"{tmp}/out")
        assert_clean_exit(res)
        if res.code == 0:
            skipped = skipped_tests(json.loads(Path(tmp, "out", "analysis.json").read_text()))
            assert bool(skipped) == ("not computable" in res.stdout)
        else:
            assert not any(r["finished"] for r in runs), res.stderr  # only a store without finished runs fails
        fit = run("--store", str(db), "fit", "--boot", "3", "--grid", "coarse", "--no-plot")
        assert_clean_exit(fit)
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # analysis only reads the store


@settings(FAST, max_examples=4)
@given(STORES)
def test_report_on_any_store_is_written_and_says_what_is_not_computable(drawn) -> None:
    experiment, constant, runs = drawn
    with tempfile.TemporaryDirectory() as tmp:
        db = write_store(Path(tmp) / "s.db", experiment, constant, runs)
        res = run("--store", str(db), "report", "-o", f"{tmp}/r.html")
        assert_clean_exit(res)
        assert res.code == 0, res.stderr  # any readable store gets a report
        analysis = run("--store", str(db), "analyze", "--json")
        if analysis.code == 0 and skipped_tests(json.loads(analysis.stdout)):
            assert "not computable" in Path(tmp, "r.html").read_text().lower()


def test_report_examples_include_the_thin_shapes() -> None:
    """The four derandomised report examples are few; these stores are the ones that matter most, always run."""
    shapes = {"zero runs": [], "one run": [{"rep": 0, "level": 1_000}],
              "one subject": [{"rep": 0, "level": lv} for lv in LEVELS],
              "one run per subject": [{"rep": 0, "level": 1_000}, {"rep": 1, "level": 2_000}]}
    for name, runs in shapes.items():
        full = [{"loss": None, "energy": "default", "finished": True, "n_evals": 3, "params": None, **r} for r in runs]
        with tempfile.TemporaryDirectory() as tmp:
            db = write_store(Path(tmp) / "s.db", None, False, full)
            res = run("--store", str(db), "report", "-o", f"{tmp}/r.html")
            assert res.code == 0, (name, res.stderr)
            assert "not computable" in Path(tmp, "r.html").read_text().lower(), name


# --- long tables for analyze --csv ----------------------------------------------------------------------------

def corrupted(rows: st.SearchStrategy, width: int, bad_cells: list[str]) -> st.SearchStrategy:
    """Clean rows, then maybe one cell replaced by a bad one (so most tables are valid and reach the tests)."""
    @st.composite
    def build(draw):
        table = [list(r) for r in draw(rows)]
        if table and draw(st.sampled_from([False, False, True])):  # a third of the tables
            i, j = draw(st.integers(0, len(table) - 1)), draw(st.integers(0, width - 1))
            table[i][j] = draw(st.sampled_from(bad_cells))
        return [tuple(r) for r in table]

    return build()


LONG_ROW = st.tuples(st.integers(0, 3), st.sampled_from(["1", "2", "4"]),
                     st.one_of(st.floats(-5.0, 5.0).map(lambda x: f"{x:.4g}"), st.just("1.5")))
LONG_TABLES = corrupted(st.lists(LONG_ROW, max_size=14), 3, ["", "NaN", "abc", "inf", "x"])


@settings(FAST, max_examples=40)
@given(LONG_TABLES)
def test_analyze_csv_on_any_long_table_gives_a_result_or_one_line(rows) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text("who,dose,score\n" + "".join(f"{s},{d},{v}\n" for s, d, v in rows))
        res = run("analyze", "--csv", str(path), "--metric", "score", "--factor", "dose", "--subject", "who",
                  "--out", f"{tmp}/out")
        assert_clean_exit(res)
        if res.code == 0:
            result = json.loads(Path(tmp, "out", "analysis.json").read_text())
            assert bool(skipped_tests(result)) == ("not computable" in res.stdout)
        if any(v in ("abc", "inf", "x") for _, _, v in rows):
            assert res.code == 2 and "not a finite number" in res.stderr


# --- tables for fit --csv -------------------------------------------------------------------------------------

LAW_ROW = st.tuples(st.sampled_from(["1e6", "3e6", "1e7", "3e7"]), st.sampled_from(["1e8", "1e9", "1e10"]),
                    st.floats(1.5, 6.0).map(lambda x: f"{x:.5g}"))
LAW_TABLES = corrupted(st.lists(LAW_ROW, max_size=12), 3, ["", "0", "-1", "abc", "nan", "inf"])


@settings(FAST, max_examples=10)
@given(LAW_TABLES)
def test_fit_csv_on_any_table_gives_a_fit_or_one_line(rows) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.csv"
        path.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{y}\n" for n, d, y in rows))
        # --compare none: a fit takes ~1.5 s here, comparing forms doubles it (tested in test_analysis_errors)
        res = run("fit", "--csv", str(path), "--boot", "3", "--grid", "coarse", "--no-plot", "--compare", "none")
        assert_clean_exit(res)
        distinct = len(set(rows))
        if distinct < 6:
            assert res.code == 2
