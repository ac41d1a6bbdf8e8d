"""Study exports anyone can re-check: a real smoke study exported, imported into a fresh store and re-analysed value
for value; and every committed studies/*/ folder re-checked against the numbers its findings.json states."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from wattscale.cli import main
from wattscale.studies import resolve_json_path

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (REPO / "studies").glob("*") if (p / "manifest.json").is_file())
TINYSTORIES = REPO / "experiments" / "data" / "tinystories_train" / "1_train_sample_2MiB.txt"  # a link: may dangle
EXPERIMENT = "tinystories_three_term-smoke"
# A 2 x 2 x 2 corner of the three-term smoke grid: 8 real runs, the fewest a three-term fit takes (7 parameters).
SMALL_GRID = ("grid.model.n_layers=[1,2]", "grid.train.batch_size=[1,4]", "grid.train.steps=[3,9]")
TIMING_KEYS = {"seconds", "source"}  # how long a fit took, and which store it read: the only fields that may differ


def wattscale(folder: Path, *args: str) -> tuple[int, str, str]:
    """`wattscale ARGS` in this process, in ``folder``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.chdir(folder)
        mp.delenv("WATTSCALE_STORE", raising=False)
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def json_of(folder: Path, *args: str) -> dict:
    code, out, err = wattscale(folder, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A real study (8 tiny runs on the real TinyStories text) run into a store and exported to study/."""
    if not TINYSTORIES.exists():
        pytest.skip(f"the studies read the TinyStories text through {TINYSTORIES.parent}, whose links dangle here")
    work = tmp_path_factory.mktemp("study")
    code, _, err = wattscale(work, "run", str(REPO / "experiments" / "tinystories_three_term.toml"), "--variant",
                             "smoke", "--set", *SMALL_GRID, "--cache-dir", str(cache_dir), "--no-progress")
    assert code == 0, err
    written = json_of(work, "export-study", "--experiment", EXPERIMENT, "--store", "tinystories_three_term_smoke.db",
                      "-o", "study")
    assert written["runs_finished"] == written["runs_total"] == 8
    return work


def test_export_holds_the_study_and_loads_back_value_for_value(exported: Path) -> None:
    folder = exported / "study"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["experiment"] == EXPERIMENT
    assert set(manifest["figures"]) == {"val_loss.png", "train_loss.png", "final_loss_energy.png"}
    for name, entry in manifest["tables"].items():  # each file holds what the manifest says (read by pandas)
        assert len(pd.read_parquet(folder / entry["file"])) == entry["rows"], name
    assert manifest["tables"]["runs"]["rows"] == 8 and manifest["tables"]["experiment_runs"]["rows"] == 8
    assert "power_samples" not in manifest["tables"]  # figures, not the raw trace
    assert all((folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in manifest["figures"])
    machine = json.loads((folder / "machine.json").read_text())
    assert machine["runs"]["finished"] == 8 and machine["wall_time"]["runs_wall_seconds"] > 0
    assert machine["commands"][0].startswith("wattscale run ") and machine["commands"][0].endswith("--variant smoke")
    assert machine["machines"][0]["device"] == "cpu" and machine["machines"][0]["runs"] == 8
    assert "wattscale import" in (folder / "README.md").read_text()

    loaded = json_of(exported, "import", "study", "--store", "imported.db")
    assert loaded["rows"] == {name: entry["rows"] for name, entry in manifest["tables"].items()}
    for command in (("analyze", "--experiment", EXPERIMENT), ("fit", "--experiment", EXPERIMENT, "--form",
                                                              "three-term", "--boot", "20", "--grid", "coarse")):
        original = json_of(exported, "--store", "tinystories_three_term_smoke.db", *command)
        again = json_of(exported, "--store", "imported.db", *command)
        assert without_timing(again) == without_timing(original), command[0]
    # The analysed numbers are the stored ones: tokens per joule of the training phase, from the Parquet file.
    runs = pd.read_parquet(folder / "runs.parquet").set_index("run_id")
    analysed = json_of(exported, "--store", "imported.db", "analyze", "--experiment", EXPERIMENT)["runs"]
    for run in analysed:
        row = runs.loc[run["run_id"]]
        assert run["final_val_loss"] == row["final_val_loss"]
        if row["train_energy_j"] > 0:
            assert run["tokens_per_joule"] == pytest.approx(row["train_tokens"] / row["train_energy_j"], rel=1e-12)
        else:  # a training phase of a few ms can read 0 J at the CPU estimate's 10 ms resolution: no ratio
            assert run["tokens_per_joule"] is None


def test_import_refuses_a_changed_file_and_a_store_that_has_the_runs(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "study"
    shutil.copytree(exported / "study", copy)
    code, _, err = wattscale(tmp_path, "import", "study", "--store", "once.db")
    assert code == 0, err
    code, _, err = wattscale(tmp_path, "import", "study", "--store", "once.db")
    assert code == 2 and "already holds" in err and "--store NEW.db" in err and err.count("\n") == 1
    runs = pd.read_parquet(copy / "runs.parquet")
    runs.loc[0, "final_val_loss"] = 1.0  # a number edited by hand
    runs.to_parquet(copy / "runs.parquet")
    code, _, err = wattscale(tmp_path, "import", "study", "--store", "fresh.db")
    assert code == 2 and "runs.parquet differs from the file that was exported" in err and err.count("\n") == 1
    assert not (tmp_path / "fresh.db").exists() or json_of(tmp_path, "--store", "fresh.db", "runs") == []


def test_check_study_recomputes_each_finding_and_names_the_wrong_one(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "study"
    shutil.copytree(exported / "study", folder)
    runs = pd.read_parquet(folder / "runs.parquet")
    best = runs.loc[runs["final_val_loss"].idxmin()]  # the reference: the exported table itself, read by pandas
    analyze = ["analyze", "--experiment", EXPERIMENT, "--json"]
    fit = ["fit", "--experiment", EXPERIMENT, "--form", "three-term", "--boot", "0", "--grid", "coarse",
           "--no-validate", "--compare", "none", "--json"]  # what the finding needs, quickly
    findings = [
        {"name": "best_loss", "statement": f"the best run reaches {best['final_val_loss']:.3f} nats",
         "command": analyze, "path": f"runs[run_id={best['run_id']}].final_val_loss",
         "value": round(float(best["final_val_loss"]), 3), "tolerance": 0.0005},
        {"name": "one_run", "statement": "one run per condition", "command": analyze, "path": "conditions[-1].n",
         "value": 1},
        {"name": "points", "statement": "the law is fitted on 8 points", "command": fit, "path": "fit.n_points",
         "value": 8},
    ]
    (folder / "findings.json").write_text(json.dumps({"experiment": EXPERIMENT, "findings": findings}))
    report = json_of(tmp_path, "check-study", "study")
    assert report["checked"] == 3 and report["failed"] == 0, report
    assert {f["name"]: f["actual"] for f in report["findings"]}["points"] == 8

    findings[0]["value"] = round(float(best["final_val_loss"]) + 0.01, 3)  # a page that says what the data do not
    (folder / "findings.json").write_text(json.dumps({"experiment": EXPERIMENT, "findings": findings}))
    code, out, err = wattscale(tmp_path, "check-study", "study")
    assert code == 2 and "FAIL best_loss" in out and "ok   points" in out
    assert "1 of 3" in err and "best_loss" in err and err.count("\n") == 1


def test_json_paths_select_by_index_and_field() -> None:
    result = {"statistics": [{"metric": "loss", "rm_anova": {"f": 3.5}}, {"metric": "tpj", "rm_anova": {"f": 9.0}}]}
    assert resolve_json_path(result, "statistics[metric=tpj].rm_anova.f") == 9.0
    assert resolve_json_path(result, "statistics[-1].metric") == "tpj"
    conditions = {"conditions": [{"metric": m, "level": lv, "mean": i} for i, (m, lv) in
                                 enumerate([("loss", "bf16"), ("loss", "fp32"), ("tpj", "bf16")])]}
    assert resolve_json_path(conditions, "conditions[metric=loss,level=fp32].mean") == 1  # every field must match
    with pytest.raises(KeyError, match="matches 2 elements"):
        resolve_json_path(conditions, "conditions[metric=loss].mean")
    with pytest.raises(KeyError, match="matches 0 elements"):
        resolve_json_path(result, "statistics[metric=joules].rm_anova")
    with pytest.raises(KeyError, match="no key 'anova'"):
        resolve_json_path(result, "statistics[0].anova")


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_committed_study_states_only_what_its_data_give(study: Path, tmp_path: Path) -> None:
    """Each committed studies/<name>/: the page's numbers (findings.json) recomputed from the exported runs."""
    assert (study / "findings.json").is_file(), f"{study.name}: a committed study states its findings in findings.json"
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["figures"] and all((study / png).is_file() for png in manifest["figures"])
    machine = json.loads((study / "machine.json").read_text())
    assert machine["commands"] and machine["wall_time"]["runs_wall_seconds"] > 0 and machine["machines"]
    report = json_of(tmp_path, "check-study", str(study))
    assert report["failed"] == 0 and report["checked"] >= 1, [f for f in report["findings"] if not f["ok"]]


def shown_as(value: float, tolerance: float) -> set[str]:
    """How a page writes `value` to the precision its tolerance (half a unit of the last digit) implies."""
    if tolerance == 0:
        return {str(value), f"{value:,}"}
    decimals = max(0, -math.floor(math.log10(2 * tolerance) + 1e-9))
    return {f"{value:.{decimals}f}", f"{value:,.{decimals}f}"}


def test_shown_as_follows_the_tolerance() -> None:
    assert shown_as(3.2518, 0.00005) == {"3.2518"} and "1,234" in shown_as(1234, 0) and shown_as(0.617, 0.0005) == {
        "0.617"}


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_committed_study_page_states_each_finding_with_its_number(study: Path) -> None:
    """The docs page a study names quotes each finding's statement, and each statement shows its stated number."""
    raw = json.loads((study / "findings.json").read_text())
    assert "page" in raw, f"{study.name}: findings.json names its docs page (\"page\": \"docs/studies/...\")"
    page = (REPO / raw["page"]).read_text(encoding="utf-8")
    for finding in raw["findings"]:
        assert finding["statement"] in page, f"{raw['page']} does not quote finding {finding['name']!r}"
        value = finding["value"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            forms = shown_as(value, finding.get("tolerance", 0.0))
            assert any(form in finding["statement"] for form in forms), (finding["name"], forms)


def test_the_rerun_command_names_the_file_within_its_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wattscale.studies.export import run_commands

    clone = tmp_path / "elsewhere" / "wattscale"
    (clone / "experiments").mkdir(parents=True)
    (clone / ".git").write_text("gitdir: /somewhere/.git/worktrees/run\n")  # a worktree's .git is a file
    rows = [{"source_path": str(clone / "experiments" / "study.toml"), "spec_json": json.dumps({"variant": "smoke"})}]
    monkeypatch.chdir(tmp_path)
    assert run_commands(rows) == ["wattscale run experiments/study.toml --variant smoke"]  # from the clone's root
    (clone / ".git").unlink()  # no checkout: relative to the working directory, else absolute
    assert run_commands(rows) == ["wattscale run elsewhere/wattscale/experiments/study.toml --variant smoke"]
    monkeypatch.chdir(clone / "experiments")
    outside = [{"source_path": str(tmp_path / "here.toml"), "spec_json": None}]
    assert run_commands(outside) == [f"wattscale run {tmp_path / 'here.toml'}"]
