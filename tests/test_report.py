"""The HTML report without a browser: escaping, summaries against scipy, downsampling, sections, CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from report_helpers import XSS_PAYLOADS, XSS_RUN_NAME, add_synthetic_run, embedded_figures, real_study_store, xss_store
from wattscale.confidence import mean_ci_summary as mean_ci
from wattscale.report import build_report, write_report
from wattscale.report.html import plot_text, script_json, text
from wattscale.report.summary import band_across_runs, minmax_downsample
from wattscale.store import open_store


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return real_study_store(tmp_path_factory, cache_dir)


# --- escaping ---------------------------------------------------------------------------------------


def test_script_json_cannot_close_its_script_element_and_round_trips() -> None:
    value = {"name": "</script><script>alert(1)</script> & <!-- \u2028\u2029", "x": [1.5, float("nan"), math.inf]}
    encoded = script_json(value)
    for forbidden in ("<", ">", "&", "\u2028", "\u2029"):
        assert forbidden not in encoded
    assert json.loads(encoded) == {"name": value["name"], "x": [1.5, None, None]}


def test_text_and_plot_text_escape_markup() -> None:
    assert text('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    # Plotly draws &lt; as <, and only understands a few entities: quotes stay as typed.
    assert plot_text('<b>"x"</b> & y') == '&lt;b&gt;"x"&lt;/b&gt; &amp; y'
    assert text(None) == ""


def test_every_user_string_is_escaped_in_html_attributes_and_embedded_json(tmp_path: Path) -> None:
    db = xss_store(tmp_path)
    result = write_report(db, tmp_path / "r.html", experiment=XSS_PAYLOADS["experiment"])
    html = result.path.read_text(encoding="utf-8")
    body = html[:html.index('<script type="application/json"')]
    for payload in XSS_PAYLOADS.values():
        assert payload not in html  # never verbatim, anywhere
    for tag in ("<img", "<svg", "<b ", "<script>window"):
        assert tag not in body
    assert text(XSS_PAYLOADS["experiment"]) in body  # shown as text (title, design section)
    assert text(XSS_PAYLOADS["run_name"]) in body  # runs table
    assert text(XSS_PAYLOADS["message"]) in body  # the run's note
    assert text(XSS_PAYLOADS["data_source"]) in body  # data paths
    assert text(XSS_PAYLOADS["condition"]) in body
    # Figure labels reach Plotly escaped for its pseudo-HTML, which draws them as the user's text.
    figures = embedded_figures(html)
    names = {trace.get("name") for fig in figures.values() for trace in fig["data"]}
    assert plot_text(XSS_PAYLOADS["condition"]) in names
    assert plot_text(XSS_PAYLOADS["run_name"]) in names  # the power trace's device name
    assert plot_text(f"Power: run r0 ({XSS_PAYLOADS['run_name']})") == figures["fig-power"]["layout"]["title"]["text"]
    assert XSS_PAYLOADS["run_name"] not in json.dumps(figures)


# --- summaries, bands, downsampling -----------------------------------------------------------------


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [10.5, 9.25, 11.0, 12.75, 8.5, 10.0], [3.0, 3.0]])
def test_mean_ci_matches_scipy_t_interval(values: list[float]) -> None:
    got = mean_ci(values + [None, float("nan")])  # missing and non-finite values are left out
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)) \
        if np.std(values) > 0 else (np.mean(values), np.mean(values))
    assert got["n"] == len(values)
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["sd"] == pytest.approx(np.std(values, ddof=1))
    assert got["ci_low"] == pytest.approx(low) and got["ci_high"] == pytest.approx(high)


def test_mean_ci_with_too_few_values() -> None:
    assert mean_ci([]) == {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    assert mean_ci([2.5]) == {"n": 1, "mean": 2.5, "sd": None, "ci_low": None, "ci_high": None}


def test_band_across_runs_groups_by_tokens() -> None:
    rows = band_across_runs({"a": [(100, 5.0), (200, 4.0)], "b": [(100, 6.0), (200, None)], "c": [(100, 4.0)]})
    assert rows == [{"x": 100, "n": 3, "mean": 5.0, "min": 4.0, "max": 6.0},
                    {"x": 200, "n": 1, "mean": 4.0, "min": 4.0, "max": 4.0}]


def test_minmax_downsample_keeps_extremes_in_time_order_and_leaves_input_alone() -> None:
    t = [i * 0.1 for i in range(10_001)]
    y = [100 + 20 * math.sin(i / 50) for i in range(10_001)]
    y[4_321] = 500.0  # a one-sample spike must survive
    y[7_777] = -3.0
    original = list(y)
    shown_t, shown_y = minmax_downsample(t, y, 400)
    assert len(shown_t) == len(shown_y) <= 400
    assert shown_t == sorted(shown_t) and set(shown_t) <= set(t)
    assert max(shown_y) == 500.0 and min(shown_y) == -3.0
    assert y == original
    assert minmax_downsample(t[:50], y[:50], 400) == (t[:50], y[:50])


# --- the report over a real study ----------------------------------------------------------------------


def test_report_cli_over_a_real_study(study_db: Path, run_cli_in_process) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    result = run_cli("--store", str(study_db), "report", "--experiment", "report-study", "-o", "out/r.html", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["runs"] == 4 and summary["conditions"] == 2
    assert summary["pending_sections"] == []
    html = Path(summary["path"]).read_text(encoding="utf-8")
    assert summary["size_bytes"] == Path(summary["path"]).stat().st_size
    # Self-contained: no external scripts, styles, images or frames.
    assert not re.search(r"<(script|img|iframe|link)[^>]*\s(src|href)=", html)
    for section in ("design", "runs", "loss", "power", "efficiency", "statistics", "dynamics", "laws"):
        assert f'<section id="{section}"' in html
    assert html.count("Section pending.") == 0
    assert "no law fitted: the runs have 1 model size(s)" in html  # one preset: the law section says why
    # The statistics and dynamics sections are `wattscale analyze` on the same runs.
    analysis = json.loads(run_cli("--store", str(study_db), "analyze", "--experiment", "report-study", "--json").stdout)
    sentences = [f"{s['metric']}: {s['apa']}" for s in analysis["statistics"] if s["apa"]]
    assert sentences and all(text(sentence) in html for sentence in sentences)
    assert text(analysis["dynamics"][0]["stable_phase"]["across_seeds"]["reason"]) in html
    assert "report-study" in html and "random-blocks" in html and "train.data_tokens" in html
    assert "AMD" in html or "cpu" in html  # the machine table
    figures = embedded_figures(html)
    assert {"fig-loss", "fig-power", "fig-interval-energy", "fig-efficiency", "fig-statistics-1",
            "fig-dynamics-1"} <= set(figures)
    means = [t for t in figures["fig-loss"]["data"] if t.get("mode") == "lines+markers"]
    assert [t["name"] for t in means] == ["data_tokens=2048", "data_tokens=4096"]
    assert all(len(t["x"]) >= 5 for t in means)


def test_efficiency_table_matches_an_independent_computation(study_db: Path) -> None:
    with open_store(study_db) as store:
        _, data, sections = build_report(store, "report-study")
        runs = store.list_runs("report-study")
    figure = next(s for s in sections if s.id == "efficiency").figures["fig-efficiency"]
    means = [t for t in figure["data"] if t["name"].startswith("mean")]
    # Panels: energy on the report's basis (the training phase), the whole job's energy, wall time, tokens/J.
    for metric_trace, key in zip(means, ("train_energy_j", "energy_j", "wall_seconds"), strict=False):
        for i, condition in enumerate(("data_tokens=2048", "data_tokens=4096")):
            values = [r[key] for r in runs if r["condition"] == condition]
            assert len(values) == 2
            half = stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / math.sqrt(2)
            assert metric_trace["y"][i] == pytest.approx(np.mean(values), rel=1e-5)
            assert metric_trace["error_y"]["array"][i] == pytest.approx(half, rel=1e-4)


def test_all_runs_report_includes_the_named_run_and_power_of_a_chosen_run(study_db: Path, tmp_path: Path) -> None:
    with open_store(study_db) as store:
        named = next(r for r in store.list_runs() if r["name"] == XSS_RUN_NAME)
        html, data, _ = build_report(store, run_id=named["run_id"])
    assert len(data.runs) == 5 and data.power_run["run_id"] == named["run_id"]
    assert text(XSS_RUN_NAME) in html and XSS_RUN_NAME not in html
    with open_store(study_db) as store:
        samples = store.power_samples(named["run_id"])
    shown = sum(len(p["t_seconds"]) for p in data.power.values())
    assert 0 < shown <= len(samples) and data.intervals


def test_power_trace_is_thinned_for_display_only(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with open_store(db) as store:
        add_synthetic_run(store, "big", n_power=8_000, devices=("rank0/gpu0", "rank1/gpu1"))
        html, data, _ = build_report(store, max_power_points=500)
        assert len(store.power_samples("big")) == 16_000  # the store keeps every sample
    figure = embedded_figures(html)["fig-power"]
    assert [t["name"] for t in figure["data"]] == ["rank0/gpu0", "rank1/gpu1"]
    assert all(len(t["x"]) <= 500 for t in figure["data"])
    assert max(figure["data"][0]["y"]) == pytest.approx(110.0, abs=0.01)
    assert data.power["rank0/gpu0"]["n_samples"] == 8_000


def test_pending_sections_render_the_content_dicts_they_are_given(study_db: Path) -> None:
    statistics = {
        "intro": "Repeated-measures ANOVA over conditions.",
        "sentences": ["F(1, 1) = 3.20, p = .324, eta2_G = .12", "<i>not markup</i>"],
        "tables": [{"title": "RM-ANOVA", "columns": ["source", "F", "p"], "rows": [["condition", 3.2, 0.324]],
                    "note": "Greenhouse–Geisser"}],
        "figures": [{"title": "law", "x_label": "N", "y_label": "loss", "x_log": True,
                     "series": [{"name": "fit", "x": [1e6, 1e7], "y": [3.0, 2.5], "y_low": [2.9, 2.4],
                                 "y_high": [3.1, 2.6], "mode": "lines", "band_label": "95% CI"},
                                {"name": "runs", "x": [1e6, 1e7], "y": [3.05, float("nan")], "mode": "markers"}]}],
        "notes": ["bootstrap over runs"],
    }
    with open_store(study_db) as store:
        html, _, sections = build_report(store, "report-study", statistics=statistics, laws={"intro": "fit"})
    assert [s.id for s in sections if s.pending] == ["dynamics"]
    assert html.count("Section pending.") == 1
    assert "F(1, 1) = 3.20, p = .324, eta2_G = .12" in html and "&lt;i&gt;not markup&lt;/i&gt;" in html
    assert "Greenhouse–Geisser" in html and "bootstrap over runs" in html
    figure = embedded_figures(html)["fig-statistics-1"]
    assert figure["layout"]["xaxis"]["type"] == "log"
    assert [t.get("fill") for t in figure["data"]] == ["toself", None, None]
    assert figure["data"][2]["y"] == [3.05, None]  # NaN becomes a gap, the JSON stays strict


def test_report_cli_errors_are_one_line_with_exit_2(study_db: Path, run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    cases = {("--experiment", "nope"): "--experiment: no experiment 'nope'", ("--run", "nope"): "--run: no run 'nope'",
             ("--max-power-points", "1"): "--max-power-points: must be at least 2"}
    for args, message in cases.items():
        result = run_cli("--store", str(study_db), "report", *args, "-o", "r.html")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    missing = run_cli("--store", str(tmp_path / "none.db"), "report")
    assert missing.returncode == 2 and "wattscale report: error: no store at " in missing.stderr  # read-only: #14
    assert not (tmp_path / "none.db").exists()


def test_quickstart_runs_a_repeated_measures_study_and_reports_every_section(tmp_path: Path, capsys) -> None:
    """The quickstart's study at tiny sizes (llama-tiny, 2-8 steps, 2 seeds): its real runs, store and report."""
    import wattscale.quickstart as quickstart

    out = tmp_path / "qs"
    options = {"budgets_tokens": (1_024, 2_048, 4_096), "seeds": 2, "preset": "llama-tiny",
               "settings": ("train.eval_tokens=512", "data.synthetic_mb=0.3")}
    first = quickstart.run_quickstart(out, show_progress=False, **options)
    printed = capsys.readouterr().out.strip().splitlines()
    assert first.experiment == "quickstart" and len(first.run_ids) == 6 and first.finished_before == 0
    assert printed[-1].startswith("report (") and printed[-1].endswith(str((out / "report.html").resolve()))
    assert any(line.startswith("scaling law:") and "three_term_law.toml" in line and " fit " in line
               for line in printed)
    with open_store(str(out / "wattscale.db")) as store:
        runs = store.list_runs(experiment="quickstart")
    assert [r["run_id"] for r in runs] == list(first.run_ids) and {r["status"] for r in runs} == {"finished"}
    assert sorted(r["tokens_seen"] for r in runs) == [1_024] * 2 + [2_048] * 2 + [4_096] * 2
    assert {r["seed"] for r in runs} == {0, 1}
    for block in (0, 1):  # each seed's block holds every budget once
        assert sorted(r["tokens_seen"] for r in runs if r["block"] == block) == [1_024, 2_048, 4_096]

    page = (out / "report.html").read_text(encoding="utf-8")
    _, _, sections = build_report_for(out / "wattscale.db", "quickstart")
    by_id = {s.id: s for s in sections}
    assert not any(s.pending for s in sections), [s.id for s in sections if s.pending]
    # RM-ANOVA across the budgets with the seeds as subjects (GG-corrected dfs with 2 subjects), Bonferroni pairs.
    assert re.search(r"tokens_per_joule: F\(\d+, \d+\) = \d", by_id["statistics"].html)
    assert "Bonferroni" in by_id["statistics"].html and "Bonferroni" in page
    assert not any(word in s.html for s in sections for word in ("analysis extra", "No module", "wattscale["))
    assert "volatility" in by_id["dynamics"].html.lower()
    assert not any("pip install" in s.html for s in sections)  # no section asks for an extra

    (out / "report.html").unlink()
    again = quickstart.run_quickstart(out, show_progress=False, **options)
    assert again.run_ids == first.run_ids and again.finished_before == 6  # resumed: nothing trained twice
    assert (out / "report.html").is_file()
    assert "6 runs (6 already finished)" in capsys.readouterr().out


def build_report_for(store_path: Path, experiment: str):
    with open_store(str(store_path), create=False) as store:
        return build_report(store, experiment)
