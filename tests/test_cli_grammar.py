"""The one CLI grammar (issue 14, item 4): --version, grouped help with examples, the `analyse` alias, choices,
one list and one output convention (old spellings hidden), --json everywhere, one store precedence, experiment
FILEs for runs/report/analyze/fit, read-only commands that never create a store, did-you-mean, show, delete."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path

import pytest

from analysis_fixtures import write_study
from conftest import CliResult
from wattscale.cli import COMMAND_GROUPS, build_parser
from wattscale.errors import ConfigError

STUDY_TOML = """
[experiment]
name = "toy"
{store}
[model]
preset = "llama-tiny"

[train]
tokens = 256
batch_size = 2
seq_len = 32
eval_tokens = 256

[data]
synthetic_mb = 0.3

[meter]
idle_seconds = 0
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`wattscale ...` in this process in tmp_path; ``env`` sets WATTSCALE_STORE (else it is unset)."""
    import signal

    from wattscale.cli import main

    def _run(*args: str, env: str | None = None) -> CliResult:
        monkeypatch.chdir(tmp_path)
        if env is None:
            monkeypatch.delenv("WATTSCALE_STORE", raising=False)
        else:
            monkeypatch.setenv("WATTSCALE_STORE", env)
        capsys.readouterr()
        previous = signal.getsignal(signal.SIGTERM)
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        finally:
            signal.signal(signal.SIGTERM, previous)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return _run


def _one_line(result: CliResult) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


# ---- version, help, alias, choices ------------------------------------------------------------------------------


def test_version_prints_the_package_version(cli) -> None:
    from wattscale import __version__

    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"wattscale {__version__}"


def test_help_lists_every_command_in_its_group_and_each_command_help_ends_with_an_example(cli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    text = result.stdout
    titles = [title for title, _ in COMMAND_GROUPS]
    assert titles == ["Run", "Results", "Analyse", "Scaling laws", "This machine"]
    positions = [text.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)
    for (title, names), start, end in zip(COMMAND_GROUPS, positions, [*positions[1:], len(text)], strict=True):
        block = text[start:end]
        for name in names:
            assert f"\n  {name} " in block, (title, name)
    for name, sub in _subparsers().items():
        help_text = sub.format_help().rstrip()
        last = help_text.splitlines()[-1].strip()
        assert last.startswith("wattscale "), (name, last)


def test_analyse_is_an_alias_of_analyze(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=3)
    british = cli("analyse", "--experiment", "toy", "--no-dynamics", "--json")
    american = cli("analyze", "--experiment", "toy", "--no-dynamics", "--json")
    assert british.returncode == american.returncode == 0, british.stderr
    assert json.loads(british.stdout)["statistics"] == json.loads(american.stdout)["statistics"]


@pytest.mark.parametrize("argv, flag", [
    (["train", "--schedule", "linear"], "--schedule"),
    (["train", "--precision", "fp16"], "--precision"),
    (["train", "--parallel", "tp"], "--parallel"),
    (["export", "-o", "x.csv", "--table", "nope"], "--table"),
    (["export", "-o", "x.csv", "--format", "xlsx"], "--format"),
    (["fit", "--form", "nope"], "--form"),
    (["run", "x.toml", "--executor", "slurm"], "--executor"),
    (["analyze", "--energy-basis", "wall"], "--energy-basis"),
    (["runs", "--status", "done"], "--status"),
])
def test_enumerated_flags_refuse_other_values_in_one_line(cli, argv: list[str], flag: str) -> None:
    result = cli(*argv)
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith(f"wattscale {argv[0]}: error: argument {flag}: invalid choice"), line
    assert line.endswith(f"(see `wattscale {argv[0]} --help`)"), line


# ---- list convention ------------------------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, dest, expected", [
    (["train", "--meters", "nvml", "rapl"], "meters", ["nvml", "rapl"]),
    (["train", "--meters", "nvml", "--meters", "rapl"], "meters", ["nvml", "rapl"]),
    (["train", "--meters", "nvml,rapl"], "meters", ["nvml", "rapl"]),  # old spelling, one release
    (["energy", "r", "--rates", "1", "10", "100"], "rates", [1.0, 10.0, 100.0]),
    (["energy", "r", "--rates", "1", "--rates", "10"], "rates", [1.0, 10.0]),
    (["energy", "r", "--rates", "1,10"], "rates", [1.0, 10.0]),
    (["plan", "f.toml", "--set", "train.lr=1e-3", "train.seed=2"], "set", ["train.lr=1e-3", "train.seed=2"]),
    (["plan", "f.toml", "--set", "train.lr=1e-3", "--set", "train.seed=2"], "set", ["train.lr=1e-3", "train.seed=2"]),
    (["fit", "--flops", "1e18", "1e19", "--flops", "1e20"], "flops", [1e18, 1e19, 1e20]),
    (["fit", "--column", "loss=L", "params=N", "--column", "tokens=D"], "column",
     ["loss=L", "params=N", "tokens=D"]),
    (["fit", "--compare", "chinchilla", "kaplan"], "compare", ["chinchilla", "kaplan"]),
    (["fit", "--compare", "chinchilla,kaplan"], "compare", ["chinchilla", "kaplan"]),
    (["analyze", "--metric", "a", "b", "--metric", "c"], "metric", ["a", "b", "c"]),
    (["runs", "--status", "failed", "interrupted"], "status", ["failed", "interrupted"]),
])
def test_lists_take_space_separated_values_repeated_flags_and_the_old_commas(argv, dest, expected) -> None:
    assert getattr(_parse(*argv), dest) == expected


def test_the_old_comma_spellings_are_not_shown_in_help() -> None:
    subs = _subparsers()
    assert "nvml,rapl" not in subs["train"].format_help()
    assert "1000,100" not in subs["energy"].format_help()


def test_a_bad_rate_in_a_list_is_one_line_naming_the_flag(cli) -> None:
    for value in (["1", "x"], ["1,-2"]):
        result = cli("energy", "r", "--rates", *value)
        assert result.returncode == 2
        assert "argument --rates" in _one_line(result)


# ---- output convention ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["quickstart", "-o", "d"], "d"), (["quickstart", "--output", "d"], "d"), (["quickstart", "--out", "d"], "d"),
    (["quickstart"], "quickstart"),
    (["analyze", "-o", "d"], "d"), (["analyze", "--out", "d"], "d"), (["analyze"], None),
    (["export", "-o", "f.csv"], "f.csv"), (["export", "--output", "f.csv"], "f.csv"),
    (["export-hf", "r", "-o", "d"], "d"),
    (["report", "-o", "f.html"], "f.html"), (["report"], "report.html"),
    (["fit", "-o", "f.png"], "f.png"), (["fit", "--plot", "f.png"], "f.png"), (["fit"], None),
])
def test_every_output_is_dash_o_with_the_old_spellings_as_hidden_aliases(argv, expected) -> None:
    assert _parse(*argv).output == expected


def test_hidden_aliases_do_not_appear_in_help() -> None:
    subs = _subparsers()
    for command, hidden in (("quickstart", "--out"), ("analyze", "--out"), ("fit", "--plot"), ("fit", "--no-plot"),
                            ("fit", "--seed"), ("fit", "--tokens"), ("plan-compute", "--seed")):
        flag = re.compile(r"(?<![\w-])" + re.escape(hidden) + r"(?![\w-])")
        assert not flag.search(subs[command].format_help()), (command, hidden)


def test_fit_renamed_flags_keep_their_old_names(cli) -> None:
    assert _parse("fit", "--seed", "3").boot_seed == 3
    assert _parse("fit", "--boot-seed", "4").boot_seed == 4
    assert _parse("fit").boot_seed == 0
    assert _parse("fit", "--tokens", "1e9", "1e10").at_tokens == [1e9, 1e10]
    assert _parse("fit", "--at-tokens", "1e9").at_tokens == [1e9]
    assert _parse("plan-compute", "--flops", "1", "--seed", "5").boot_seed == 5


def test_export_writes_with_dash_o_and_the_old_positional(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=1)
    new = cli("export", "-o", "a.csv", "--json")
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout) == {"path": str(tmp_path / "a.csv"), "table": "runs", "rows": 3}
    old = cli("export", "b.csv")
    assert old.returncode == 0, old.stderr
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    neither = cli("export")
    assert neither.returncode == 2 and "-o/--output" in _one_line(neither)
    both = cli("export", "c.csv", "-o", "d.csv")
    assert both.returncode == 2 and "-o/--output" in _one_line(both)
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "d.csv").exists()


def test_analyze_writes_into_dash_o_and_the_hidden_out(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=3)
    for flag, folder in (("-o", "new"), ("--out", "old")):
        result = cli("analyze", "--experiment", "toy", "--no-dynamics", flag, folder)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / folder / "analysis.json").is_file()


# ---- fit: the figure only when asked, checked before the fit ---------------------------------------------------


def _law_csv(tmp_path: Path) -> Path:
    from law_fixtures import write_law_store
    from wattscale.store import open_store

    with open_store(write_law_store(tmp_path / "laws.db")) as store:
        rows = [r for r in store.list_runs() if r["status"] == "finished"]
    lines = ["params,tokens,batch_tokens,loss"] + [
        f"{r['params_non_embedding']},{r['tokens_seen']},{json.loads(r['config_json'])['train']['batch_size'] * 512},"
        f"{r['final_val_loss']}" for r in rows]
    (tmp_path / "laws.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "laws.csv"


@pytest.mark.parametrize("flag", ["-o", "--plot"])
def test_fit_checks_the_figure_suffix_before_fitting(cli, tmp_path: Path, monkeypatch, flag: str) -> None:
    import wattscale.analysis.laws.data as laws_data

    def never(*args, **kwargs):
        raise AssertionError("the points were read before -o was checked")

    monkeypatch.setattr(laws_data, "law_data_from_csv", never)
    result = cli("fit", "--csv", "points.csv", flag, "fit.jpg")
    assert result.returncode == 2
    assert "-o/--output" in _one_line(result) and ".png" in result.stderr


def test_fit_refuses_a_figure_without_matplotlib_before_fitting(cli, monkeypatch) -> None:
    import builtins

    import wattscale.analysis.laws.data as laws_data

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(laws_data, "law_data_from_csv", lambda *a, **k: pytest.fail("fitted before the check"))
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = cli("fit", "--csv", "points.csv", "-o", "fit.png")
    assert result.returncode == 2
    assert "matplotlib" in _one_line(result)


def test_fit_writes_no_figure_without_dash_o_and_one_with_it(cli, tmp_path: Path) -> None:
    _law_csv(tmp_path)
    base = ["fit", "--csv", "laws.csv", "--grid", "coarse", "--boot", "0", "--no-validate", "--compare", "none"]
    plain = cli(*base, "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["plot"] is None
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.pdf"))
    drawn = cli(*base, "-o", "law.svg", "--json")
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads(drawn.stdout)["plot"] == "law.svg" and (tmp_path / "law.svg").stat().st_size > 0


# ---- --json on every reporting command --------------------------------------------------------------------------


def test_every_reporting_command_has_json() -> None:
    subs = _subparsers()
    reporting = ("train", "plan", "run", "experiments", "runs", "show", "delete", "export", "export-hf", "energy",
                 "meters", "presets", "quickstart", "analyze", "report", "watch", "fit", "plan-compute",
                 "plan-energy", "measure")
    for name in reporting:
        assert any("--json" in a.option_strings for a in subs[name]._actions), name


def test_json_output_parses(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=3)
    for argv, kind in ((["runs", "--json"], list), (["experiments", "--json"], list), (["show", "r0t1000", "--json"],
                       dict), (["presets", "--json"], list),
                       (["meters", "--json"], dict), (["watch", "--once", "--json"], dict),
                       (["report", "-o", "r.html", "--json"], dict),
                       (["plan", "study.toml", "--json"], dict)):
        (tmp_path / "study.toml").write_text(STUDY_TOML.format(store=""))
        result = cli(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert isinstance(json.loads(result.stdout), kind), argv


def test_quickstart_json_keeps_stdout_for_the_object(cli, tmp_path: Path, monkeypatch) -> None:
    import wattscale.quickstart as quickstart

    def fake(out: Path, show_progress: bool = True) -> quickstart.QuickstartResult:  # what the real one returns
        print("a table the real quickstart prints")
        return quickstart.QuickstartResult("quickstart", ("abc",), out / "wattscale.db", out / "report.html", 0)

    monkeypatch.setattr(quickstart, "run_quickstart", fake)
    result = cli("quickstart", "-o", "qs", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["run_ids"] == ["abc"] and printed["store"].endswith("wattscale.db")
    assert printed["report"] == str((tmp_path / "qs" / "report.html").resolve())
    assert "a table" in result.stderr


# ---- the store: one precedence, FILE, never created by a read-only command --------------------------------------


def _stores(tmp_path: Path) -> None:
    """Four stores told apart by their run count: flag 3, env 6, file 9, default 12."""
    for name, reps in (("flag.db", 1), ("env.db", 2), ("file.db", 3), ("wattscale.db", 4)):
        write_study(tmp_path / name, repetitions=reps)


PRECEDENCE = [  # (global args, env, file has a store, expected store)
    (["--store", "flag.db"], "env.db", True, "flag.db"),
    ([], "env.db", True, "env.db"),
    ([], None, True, "file.db"),
    ([], None, False, "./wattscale.db"),
]


def _probe(monkeypatch, module, name: str) -> None:
    """Replace a loader with one that reports the store and experiment it was given (as a one-line error)."""

    def report(url, *args, **kwargs):
        experiment = kwargs["experiment"] if name == "write_report" else args[0]
        raise ConfigError(f"probe store={url} experiment={experiment}")

    monkeypatch.setattr(module, name, report)


@pytest.mark.parametrize("globals_, env, file_store, expected", PRECEDENCE)
def test_runs_and_plan_follow_the_one_store_precedence(cli, tmp_path: Path, globals_, env, file_store,
                                                       expected) -> None:
    _stores(tmp_path)
    (tmp_path / "study.toml").write_text(STUDY_TOML.format(store='store = "file.db"' if file_store else ""))
    runs_argv = [*globals_, "runs", *(["study.toml"] if file_store else []), "--json"]
    runs = cli(*runs_argv, env=env)
    assert runs.returncode == 0, runs.stderr
    count = {"flag.db": 3, "env.db": 6, "file.db": 9, "./wattscale.db": 12}[expected]
    assert len(json.loads(runs.stdout)) == count
    plan = cli(*globals_, "plan", "study.toml", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["store"] == expected


@pytest.mark.parametrize("globals_, env, file_store, expected", PRECEDENCE)
@pytest.mark.parametrize("command", ["report", "analyze", "fit", "run"])
def test_report_analyze_fit_and_run_follow_the_one_store_precedence(cli, tmp_path: Path, monkeypatch, command,
                                                                    globals_, env, file_store, expected) -> None:
    import wattscale.analysis.laws.data as laws_data
    import wattscale.analysis.study.data as study_data
    import wattscale.experiment.local as local
    import wattscale.report as report

    _probe(monkeypatch, report, "write_report")
    _probe(monkeypatch, study_data, "load_from_store")
    _probe(monkeypatch, laws_data, "law_data_from_store")
    monkeypatch.setattr(local, "run_local", lambda plan, url, *a, **k: _raise(f"probe store={url}"))
    for name in ("flag.db", "env.db", "file.db", "wattscale.db"):
        (tmp_path / name).touch()
    (tmp_path / "study.toml").write_text(STUDY_TOML.format(store='store = "file.db"' if file_store else ""))
    with_file = file_store or command == "run"
    argv = [*globals_, command, *(["study.toml"] if with_file else []), *(["--no-progress"] if command == "run"
                                                                           else [])]
    result = cli(*argv, env=env)
    assert result.returncode == 2
    line = _one_line(result)
    assert f"probe store={expected}" in line, line
    if command != "run":
        assert line.endswith(f"experiment={'toy' if with_file else None}"), line


def _raise(message: str):
    raise ConfigError(message)


def test_the_file_variant_names_the_experiment_and_an_explicit_experiment_wins(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=2, experiment="toy-smoke")
    write_study(tmp_path / "other.db", repetitions=1, experiment="toy")
    (tmp_path / "study.toml").write_text(STUDY_TOML.format(store="") + "\n[variants.smoke.train]\ntokens = 128\n")
    result = cli("runs", "study.toml", "--variant", "smoke", "--json")
    assert result.returncode == 0, result.stderr
    assert {r["experiment"] for r in json.loads(result.stdout)} == {"toy-smoke"}
    result = cli("runs", "study.toml", "--variant", "smoke", "--experiment", "nope")
    assert result.returncode == 2 and "nope" in _one_line(result)
    alone = cli("runs", "--variant", "smoke")
    assert alone.returncode == 2 and "--variant" in _one_line(alone)


READ_ONLY = [
    ["runs"], ["show", "r0"], ["delete", "r0", "--yes"], ["energy", "r0"], ["experiments"],
    ["experiments", "--delete", "toy"], ["export", "-o", "x.csv"], ["export-hf", "r0", "-o", "hf"], ["analyze"],
    ["report"], ["watch", "--once"], ["fit"], ["plan-compute", "--flops", "1e20"], ["plan-energy", "--kwh", "1"],
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: " ".join(a))
def test_read_only_commands_never_create_a_store(cli, tmp_path: Path, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.returncode == 2
    assert _one_line(result) == (f"wattscale {argv[0]}: error: no store at wattscale.db (train or run an experiment "
                                 "first, or pass --store)")
    assert not (tmp_path / "wattscale.db").exists()
    assert not [p for p in tmp_path.iterdir()], "nothing written"
    elsewhere = cli("--store", "sub/other.db", *argv)
    assert elsewhere.returncode == 2 and "no store at sub/other.db" in _one_line(elsewhere)
    assert not (tmp_path / "sub").exists()


def test_runs_for_an_unknown_experiment_exits_2_naming_the_known_ones(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=1)
    result = cli("runs", "--experiment", "nope")
    assert result.returncode == 2
    line = _one_line(result)
    assert "--experiment" in line and "'nope'" in line and "'toy'" in line


# ---- did you mean ----------------------------------------------------------------------------------------------


def test_an_unknown_config_key_suggests_the_closest(cli, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('[model]\npreset = "llama-tiny"\n[train]\nlearning_rate = 1e-3\n')
    result = cli("train", "--config", "run.toml")
    assert result.returncode == 2
    assert _one_line(result) == "wattscale: error: train.learning_rate: unknown key; did you mean train.lr?"


def test_unknown_key_messages() -> None:
    from wattscale.config import unknown_key_message

    known = {"lr", "tokens", "batch_size", "seq_len"}
    assert unknown_key_message("train", "tokns", known) == "train.tokns: unknown key; did you mean train.tokens?"
    assert unknown_key_message("train", "batchsize", known).endswith("did you mean train.batch_size?")
    assert unknown_key_message("train", "zzz", known) == \
        "train.zzz: unknown key; known keys: batch_size, lr, seq_len, tokens"


def test_an_unknown_key_in_an_experiment_file_suggests_the_closest(cli, tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text(STUDY_TOML.format(store="").replace("seq_len = 32", "seq_lenn = 32"))
    result = cli("plan", "study.toml")
    assert result.returncode == 2
    assert "train.seq_lenn: unknown key; did you mean train.seq_len?" in _one_line(result)


# ---- runs --status/--limit, show, delete -----------------------------------------------------------------------


def test_runs_status_and_limit(cli, tmp_path: Path) -> None:
    write_study(tmp_path / "wattscale.db", repetitions=2, unfinished=((1, 1000),))
    everything = json.loads(cli("runs", "--json").stdout)
    assert len(everything) == 6
    running = json.loads(cli("runs", "--status", "running", "--json").stdout)
    assert [r["run_id"] for r in running] == ["r1t1000"]
    both = json.loads(cli("runs", "--status", "running", "finished", "--json").stdout)
    assert len(both) == 6
    last = json.loads(cli("runs", "--limit", "2", "--json").stdout)
    assert [r["run_id"] for r in last] == [r["run_id"] for r in everything[-2:]]
    assert json.loads(cli("runs", "--limit", "0", "--json").stdout) == []
    negative = cli("runs", "--limit", "-1")
    assert negative.returncode == 2 and "--limit" in _one_line(negative)


def test_show_prints_a_run_its_evaluations_and_energy_by_phase(cli, tmp_path: Path) -> None:
    from wattscale.store import open_store

    write_study(tmp_path / "wattscale.db", repetitions=1, n_evals=4)
    with open_store(tmp_path / "wattscale.db") as store:
        store.add_energy_measurements("r0t1000", [
            {"device": "cpu", "scope": "phase", "phase": "train", "phase_seconds": 5.0, "start_seconds": 0.0,
             "end_seconds": 6.0, "energy_j": 50.0, "source": "counter"},
            {"device": "gpu0", "scope": "phase", "phase": "train", "phase_seconds": 5.0, "start_seconds": 0.0,
             "end_seconds": 6.0, "energy_j": 150.0, "source": "counter"},
            {"device": "cpu", "scope": "phase", "phase": "eval", "phase_seconds": 1.0, "start_seconds": 0.0,
             "end_seconds": 6.0, "energy_j": 8.0, "source": "counter"},
            {"device": "cpu", "scope": "run", "start_seconds": 0.0, "end_seconds": 6.0, "energy_j": 58.0,
             "source": "counter"}])
    result = cli("show", "r0t1000", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["run"]["run_id"] == "r0t1000" and shown["run"]["status"] == "finished"
    assert [e["tokens_seen"] for e in shown["evaluations"]] == [0, 333, 667, 1000]
    assert shown["energy_by_phase"] == [{"phase": "train", "energy_j": 200.0, "phase_seconds": 5.0},
                                        {"phase": "eval", "energy_j": 8.0, "phase_seconds": 1.0}]
    text = cli("show", "r0t1000")
    assert text.returncode == 0 and "train: 200.0 J over 5.0 s" in text.stdout
    unknown = cli("show", "nope")
    assert unknown.returncode == 2 and "'nope'" in _one_line(unknown)


def _rows_of(db: Path, run_id: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]
                for table in ("runs", "evaluations", "train_steps", "power_samples", "energy_measurements")}


def _study_with_energy(tmp_path: Path) -> Path:
    from wattscale.store import open_store

    db = tmp_path / "wattscale.db"
    write_study(db, repetitions=1)
    with open_store(db) as store:
        for run_id in ("r0t1000", "r0t2000"):
            store.add_power_samples(run_id, [{"device": "cpu", "t_seconds": 0.5, "power_w": 10.0}])
            store.add_energy_measurements(run_id, [{"device": "cpu", "scope": "run", "start_seconds": 0.0,
                                                    "end_seconds": 1.0, "energy_j": 10.0, "source": "counter"}])
            store.set_run_dir(run_id, str(tmp_path / "runs" / run_id))
    return db


def test_delete_with_yes_removes_the_runs_rows_from_every_table(cli, tmp_path: Path) -> None:
    db = _study_with_energy(tmp_path)
    assert all(_rows_of(db, "r0t1000").values())
    result = cli("delete", "r0t1000", "r0t2000", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["deleted"] == ["r0t1000", "r0t2000"]
    assert out["run_dirs"]["r0t1000"] == str(tmp_path / "runs" / "r0t1000")
    for run_id in ("r0t1000", "r0t2000"):
        assert not any(_rows_of(db, run_id).values()), run_id
    assert all(_rows_of(db, "r0t4000")[t] for t in ("runs", "evaluations", "train_steps"))  # others untouched
    text = cli("delete", "r0t4000", "--yes")
    assert text.returncode == 0 and "deleted 1 run(s)" in text.stdout


def test_delete_without_a_terminal_or_yes_refuses_and_keeps_everything(cli, tmp_path: Path, monkeypatch) -> None:
    import io

    db = _study_with_energy(tmp_path)
    before = _rows_of(db, "r0t1000")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    result = cli("delete", "r0t1000")
    assert result.returncode == 2
    assert "--yes" in _one_line(result)
    assert _rows_of(db, "r0t1000") == before


def test_delete_asks_on_a_terminal(cli, tmp_path: Path, monkeypatch) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    db = _study_with_energy(tmp_path)
    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    declined = cli("delete", "r0t1000")
    assert declined.returncode == 0 and "nothing deleted" in declined.stderr and _rows_of(db, "r0t1000")["runs"] == 1
    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    accepted = cli("delete", "r0t1000")
    assert accepted.returncode == 0, accepted.stderr
    assert not any(_rows_of(db, "r0t1000").values())


def test_delete_of_an_unknown_run_deletes_nothing(cli, tmp_path: Path) -> None:
    db = _study_with_energy(tmp_path)
    result = cli("delete", "r0t1000", "nope", "--yes")
    assert result.returncode == 2 and "'nope'" in _one_line(result)
    assert _rows_of(db, "r0t1000")["runs"] == 1


def test_statuses_and_tables_named_in_the_parser_match_the_store() -> None:
    from wattscale.cli.results import EXPORT_TABLES, RUN_STATUSES
    from wattscale.store_schema import EXPORT_TABLES as SCHEMA_TABLES
    from wattscale.store_schema import RUN_STATUSES as SCHEMA_STATUSES

    assert RUN_STATUSES == SCHEMA_STATUSES
    assert EXPORT_TABLES == tuple(SCHEMA_TABLES)


def test_a_reader_that_leaves_the_pipe_early_is_no_internal_error() -> None:
    """`wattscale presets | head -0`: the closed pipe ends the command quietly with 141 (128 + SIGPIPE)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "wattscale", "presets", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader leaves before the command writes
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr.decode()
    assert b"internal error" not in stderr and b"Traceback" not in stderr and b"Exception ignored" not in stderr


def test_quickstart_help_says_what_it_trains_and_how_long() -> None:
    """`wattscale quickstart --help` names the study's size (from the shipped file's constants) and an example."""
    from wattscale.quickstart import QUICKSTART_BUDGETS_TOKENS, QUICKSTART_PRESET, QUICKSTART_SEEDS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["quickstart"].format_help().split())
    assert QUICKSTART_PRESET in text and "1.5 minutes on 2 CPU cores" in text
    assert f"{len(QUICKSTART_BUDGETS_TOKENS)} token budgets" in text and f"x {QUICKSTART_SEEDS} seeds" in text
    assert all(f"{t:,}" in text for t in QUICKSTART_BUDGETS_TOKENS)
    assert f"= {len(QUICKSTART_BUDGETS_TOKENS) * QUICKSTART_SEEDS} runs" in text
    assert "examples:" in text and "wattscale quickstart -o demo --json" in text
