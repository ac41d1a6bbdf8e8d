"""A fuzz pass over the whole CLI: every sub-command, every flag, generated bad values.

The contract each call must keep (README, "Errors and exit codes"): exit 0 or 2 (or the command's documented
code), no traceback, at most one line on stderr when it refuses, and the store unchanged when it refuses.
Flags are read from the parser itself, so a new flag is fuzzed without touching this file: int and float flags
by their type, choices as choices, and string flags by their kind in FLAG_KINDS (a path to read, a file or folder
to write, a store), else as free text. A new sub-command needs a valid base command in _base_commands.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis_fixtures import write_study
from conftest import TINY_DATA
from law_fixtures import write_law_store
from wattscale.cli import build_parser

# Bad values by kind. "{...}" are filled in with real paths of the fixture folder.
BAD_VALUES: dict[str, tuple[str, ...]] = {
    "int": ("abc", "", "1.5", "nan", "-1", "0", str(2**70), "1e30"),
    "float": ("abc", "", "nan", "inf", "-inf", "-1", "0", "1e400", "1e30"),
    "text": ("", " ", "-1", "nan", "x" * 300),
    "in_path": ("", "{folder}", "{missing}", "{junk}", "{unreadable}"),
    "out_file": ("", "{folder}", "/proc/nonexistent/out.png", "{junk}/under-a-file.png"),
    "out_folder": ("", "{junk}", "/proc/nonexistent/out"),
    "store": ("", "{folder}", "{junk}", "{missing}/s.db"),
    "choice": ("", "bogus"),
    "rates": ("abc", "", "0", "-1", "nan", "1,,2"),
}
# String flags whose value is a path or a list; every other string flag is free text.
FLAG_KINDS: dict[str, str] = {
    "--store": "store", "--config": "in_path", "--tokenizer": "in_path", "--val-data": "in_path",
    "--data": "in_path", "--cache-dir": "out_folder", "--run-root": "out_folder", "--csv": "in_path",
    "--runs-file": "in_path", "--metrics-hook": "in_path", "--plot": "out_file", "--rates": "rates",
    "file": "in_path", "path": "out_file", "--powercap-root": "in_path", "--out": "out_folder",
    "--phase-file": "out_file",
}
# Per command, flags that are outputs of a different kind than their name suggests elsewhere.
COMMAND_FLAG_KINDS: dict[tuple[str, str], str] = {
    ("report", "--output"): "out_file", ("export-hf", "--output"): "out_folder", ("export", "--output"): "out_file",
    ("fit", "--output"): "out_file", ("analyze", "--output"): "out_folder", ("quickstart", "--output"): "out_folder",
    ("measure", "--output"): "out_file", ("export-study", "--output"): "out_folder", ("import", "folder"): "in_path",
    ("check-study", "folder"): "in_path",
}
# Exit codes a command may document besides 0 and 2.
OTHER_EXIT_CODES: dict[str, set[int]] = {"train": {3}, "run": {4}}


@dataclass(frozen=True)
class Fixture:
    root: Path
    train_run_id: str

    def fill(self, value: str) -> str:
        return value.format(folder=self.root / "a-folder", missing=self.root / "missing" / "x",
                            junk=self.root / "junk.bin", unreadable=self.root / "unreadable.txt")


TINY_EXPERIMENT = """
[experiment]
name = "fuzz"

[model]
preset = "llama-tiny"

[train]
tokens = 256
batch_size = 2
seq_len = 32
eval_tokens = 256
threads = 1

[data]
synthetic_mb = 0.3

[meter]
idle_seconds = 0
"""


def _train_base(fx: Fixture) -> list[str]:
    return ["train", "--preset", "llama-tiny", "--tokens", "256", "--batch-size", "2", "--seq-len", "32",
            *TINY_DATA, "--eval-tokens", "256", "--threads", "1", "--no-progress",
            "--cache-dir", str(fx.root / "cache"), "--run-root", str(fx.root / "runs")]


# The valid command each fuzzed flag is added to (the last value of a repeated flag wins).
def _base_commands(fx: Fixture) -> dict[str, list[str]]:
    root = fx.root
    laws = ["--csv", str(root / "laws.csv"), "--grid", "coarse", "--boot", "0"]
    return {
        "train": _train_base(fx),
        "plan": ["plan", str(root / "fuzz.toml"), "--cache-dir", str(root / "cache")],
        "run": ["run", str(root / "fuzz.toml"), "--cache-dir", str(root / "cache"), "--no-progress"],
        "experiments": ["experiments"],
        "runs": ["runs"],
        "export": ["export", "-o", str(root / "out" / "runs.csv")],
        "export-hf": ["export-hf", fx.train_run_id, "-o", str(root / "out" / "hf")],
        "export-study": ["export-study", "--experiment", "toy", "-o", str(root / "out" / "study")],
        "import": ["import", str(root / "toy-study"), "--store", str(root / "out" / "imported.db")],
        "check-study": ["check-study", str(root / "toy-study")],
        "energy": ["energy", fx.train_run_id],
        "show": ["show", fx.train_run_id],
        "meters": ["meters"],
        "measure": ["measure", "--idle-seconds", "0"],  # no command after --: flags are checked before that
        "presets": ["presets"],
        "quickstart": ["quickstart", "--no-progress"],
        "analyze": ["analyze", "--experiment", "toy", "--no-dynamics"],
        "report": ["report", "-o", str(root / "out" / "report.html")],
        "watch": ["watch", "--once"],
        "fit": ["fit", *laws, "--no-plot", "--no-validate", "--compare", "chinchilla"],
        "plan-compute": ["plan-compute", *laws, "--flops", "1e20"],
        "plan-energy": ["plan-energy", *laws, "--kwh", "10"],
        "calibrate": ["calibrate", "--preset", "llama-tiny", "--batch-size", "2", "--seq-len", "32", "--steps", "1",
                      "--repeats", "2", "--threads", "1"],
    }


def _store_digest(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


@pytest.fixture(scope="module")
def fuzz_fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """A store with a trained run and a synthetic study, a law CSV, an experiment file and some odd paths."""
    import os

    from wattscale.cli import main

    root = tmp_path_factory.mktemp("fuzz")
    (root / "a-folder").mkdir()
    (root / "out").mkdir()
    (root / "junk.bin").write_bytes(bytes(range(256)) * 4)
    (root / "unreadable.txt").write_text("secret")
    (root / "unreadable.txt").chmod(0)
    (root / "fuzz.toml").write_text(TINY_EXPERIMENT)
    write_study(root / "wattscale.db")
    laws = write_law_store(root / "laws.db")
    from wattscale.store import open_store

    with open_store(laws) as store:
        rows = [r for r in store.list_runs() if r["status"] == "finished"]
    lines = ["params,tokens,batch_tokens,loss"] + [
        f"{r['params_non_embedding']},{r['tokens_seen']},{json.loads(r['config_json'])['train']['batch_size'] * 512},"
        f"{r['final_val_loss']}" for r in rows]
    (root / "laws.csv").write_text("\n".join(lines) + "\n")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        fx = Fixture(root, "")
        assert main([*_train_base(fx), "--json"]) == 0
        # A study export of the toy experiment, with one finding, for `import` and `check-study`.
        assert main(["export-study", "--experiment", "toy", "-o", str(root / "toy-study")]) == 0
        finding = {"name": "factor", "statement": "tokens", "path": "factor", "value": "tokens_seen",
                   "command": ["analyze", "--experiment", "toy", "--no-dynamics", "--json"]}
        (root / "toy-study" / "findings.json").write_text(json.dumps({"experiment": "toy", "findings": [finding]}))
    finally:
        os.chdir(cwd)
    with open_store(root / "wattscale.db") as store:
        trained = [r["run_id"] for r in store.list_runs() if r["kind"] != "measured" and r["preset"] == "llama-tiny"
                   and r["experiment"] is None]
    assert len(trained) == 1
    return Fixture(root, trained[0])


def _value_flags(command: str) -> list[tuple[str, str]]:
    """(flag, kind) for every flag of `command` that takes a value, plus its positionals."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = []
    for action in sub.choices[command]._actions:
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            continue
        flag = max(action.option_strings, key=len) if action.option_strings else action.dest
        if action.choices:
            kind = "choice"
        elif action.type in (int, float):
            kind = action.type.__name__
        else:
            kind = COMMAND_FLAG_KINDS.get((command, flag)) or FLAG_KINDS.get(flag, "text")
        flags.append((flag, kind))
    return flags


def _argv(base: list[str], flag: str, value: str) -> list[str]:
    if flag.startswith("-"):
        return [*base, f"{flag}={value}"]  # '=' so that values such as -1 are not read as flags
    argv = list(base)
    if len(argv) > 1 and not argv[1].startswith("-"):
        argv[1] = value  # the command's positional (plan/run FILE, energy/export-hf RUN_ID)
    else:
        argv.insert(1, value)  # an optional one: runs/analyze/report/fit FILE, the old export path
    return argv


COMMANDS = sorted(_base_commands(Fixture(Path("."), "x")))
# What `quickstart` trains if a fuzzed value is ever accepted: 2 budgets x 2 seeds of llama-tiny, seconds, not the
# real 9 llama-1m runs (~90 s). Every flag and value is still parsed and checked by the real command.
TINY_QUICKSTART = {"budgets_tokens": (256, 512), "seeds": 2, "preset": "llama-tiny",
                   "settings": ("train.batch_size=2", "train.seq_len=32", "train.eval_tokens=256",
                                "data.synthetic_mb=0.3", "train.threads=1")}


def _memoized_fit_law(real):
    """fit_law, computed once per (data, form, options): most fuzzed `fit` flags leave the fit's inputs alone."""
    fits: dict[str, object] = {}

    @functools.wraps(real)
    def fit_law(data, form="chinchilla", options=None):
        key = hashlib.sha256(pickle.dumps((data, form, options))).hexdigest()
        if key not in fits:
            fits[key] = real(data, form, options)
        return fits[key]

    return fit_law


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_every_command_keeps_the_error_contract(command: str, fuzz_fixture: Fixture, monkeypatch,
                                                               capsys) -> None:
    from wattscale.cli import main

    monkeypatch.chdir(fuzz_fixture.root)
    monkeypatch.delenv("WATTSCALE_STORE", raising=False)
    import wattscale.analysis.laws.analysis as law_analysis
    import wattscale.analysis.laws.fit as law_fit
    import wattscale.quickstart as quickstart

    monkeypatch.setattr(quickstart, "run_quickstart", functools.partial(quickstart.run_quickstart, **TINY_QUICKSTART))
    fit_law = _memoized_fit_law(law_fit.fit_law)
    monkeypatch.setattr(law_fit, "fit_law", fit_law)  # fit, plan-compute, plan-energy: same fit, no new starts
    monkeypatch.setattr(law_analysis, "fit_law", fit_law)
    base = _base_commands(fuzz_fixture)[command]
    store = fuzz_fixture.root / "wattscale.db"
    violations: list[str] = []
    cases = [(flag, fuzz_fixture.fill(raw)) for flag, kind in _value_flags(command) for raw in BAD_VALUES[kind]]
    cases += [("--no-such-flag", "1"), ("stray-positional", "")]  # every command, even one without flags
    for flag, value in cases:
        argv = [*base, "stray"] if flag == "stray-positional" else _argv(base, flag, value)
        before = _store_digest(store)
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusing a value
            code = exc.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        where = f"{command} {flag}={value[:40]!r}"
        if code not in {0, 2} | OTHER_EXIT_CODES.get(command, set()):
            violations.append(f"{where}: exit {code}: {err.strip()[:300]}")
        elif "Traceback" in err:
            violations.append(f"{where}: traceback on stderr")
        elif code == 2 and len(lines) != 1:
            violations.append(f"{where}: {len(lines)} lines on stderr: {err.strip()[:300]}")
        elif code == 2 and _store_digest(store) != before:
            violations.append(f"{where}: exit 2 but the store changed")
    assert not violations, f"{len(violations)} of {len(cases)} calls broke the contract:\n" + "\n".join(violations)
