"""Hostile but fair values of issue 13 (seeds, budgets, learning rates, rates, empty values): each is refused in
one line that names the flag or setting, exit 2, before anything is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from analysis_fixtures import write_study
from conftest import TINY_DATA

TRAIN = ["train", "--preset", "llama-tiny", "--batch-size", "2", "--seq-len", "32", *TINY_DATA, "--no-progress"]

# case: (arguments after `--store s.db`, text the one line must contain)
REFUSALS = {
    "negative seed": ([*TRAIN, "--tokens", "512", "--seed", "-1"], "train.seed: -1 must lie in [0, 2**63 - 1]"),
    "seed past 64 bits": ([*TRAIN, "--tokens", "512", "--seed", str(2**70)], "--seed: 1180591620717411303424 does"),
    "budget past 64 bits": ([*TRAIN, "--tokens", str(10**30)], "--tokens: 1000000000000000000000000000000 does"),
    "budget past 1e15": ([*TRAIN, "--tokens", str(10**16)], "train.tokens: 10,000,000,000,000,000 is more than"),
    "nan learning rate": ([*TRAIN, "--tokens", "512", "--lr", "nan"], "--lr: 'nan' is not a finite number"),
    "infinite learning rate": ([*TRAIN, "--tokens", "512", "--lr", "inf"], "--lr: 'inf' is not a finite number"),
    "text budget": ([*TRAIN, "--tokens", "abc"], "argument --tokens: invalid int value: 'abc'"),
    "threads": ([*TRAIN, "--tokens", "512", "--threads", "100000"], "train.threads: 100,000 is more than 1024"),
    "empty store": (["--store", "", "runs"], "--store: empty value"),
    "blank run root": ([*TRAIN, "--tokens", "512", "--run-root", " "], "--run-root: empty value"),
    "rates": (["energy", "r0t1000", "--rates", "abc"], "argument --rates: 'abc' is not a number"),
    "negative rate": (["energy", "r0t1000", "--rates", "10,-1"], "argument --rates: '-1' is not a positive"),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_in_one_line_before_anything_is_written(run_cli_in_process, tmp_path: Path, case: str) -> None:
    write_study(tmp_path / "s.db", repetitions=1)
    before = _digest(tmp_path / "s.db")
    args, expected = REFUSALS[case]
    result = run_cli_in_process("--store", "s.db", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert _digest(tmp_path / "s.db") == before
    assert not (tmp_path / "wattscale_runs").exists(), "a refused run must not leave a run folder (or lock) behind"
    assert not (tmp_path / "wattscale.db").exists(), "an empty --store must not fall back to ./wattscale.db"


def test_argparse_refusals_are_one_line_naming_the_flag(run_cli, tmp_path: Path) -> None:
    result = run_cli("--store", "s.db", *TRAIN, "--tokens", "abc")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wattscale train: error: argument --tokens: invalid int value: 'abc' (see `wattscale train --help`)"]
    result = run_cli("--store", "s.db", *TRAIN, "--tokens", "512", "--lr", "nan")
    assert result.returncode == 2 and "--lr: 'nan' is not a finite number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()


def test_huge_budget_in_an_experiment_grid_is_refused_by_plan(run_cli_in_process, tmp_path: Path) -> None:
    (tmp_path / "big.toml").write_text(
        '[experiment]\nname = "big"\n[model]\npreset = "llama-tiny"\n[train]\nbatch_size = 2\nseq_len = 32\n'
        f'[grid]\n"train.tokens" = [512, {10**30}]\n')
    for command in ("plan", "run"):
        result = run_cli_in_process(command, "big.toml", "--cache-dir", str(tmp_path / "cache"))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "train.tokens" in lines[0] and "64 bits" in lines[0], result.stderr
    assert not (tmp_path / "wattscale.db").exists(), "nothing planned, nothing recorded"


def test_an_unexpected_exception_is_one_line_unless_debugging(run_cli_in_process, monkeypatch) -> None:
    import wattscale.cli.machine

    def broken(args):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(wattscale.cli.machine, "cmd_presets", broken)
    result = run_cli_in_process("presets")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "wattscale: internal error: ZeroDivisionError: division by zero -- a bug in wattscale; please report it "
        "with the command (WATTSCALE_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("WATTSCALE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run_cli_in_process("presets")


def test_os_errors_of_the_environment_name_the_file(run_cli_in_process, monkeypatch) -> None:
    import errno

    import wattscale.cli.machine

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/mnt/full/ckpt.safetensors")

    monkeypatch.setattr(wattscale.cli.machine, "cmd_presets", full)
    result = run_cli_in_process("presets")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wattscale: error: No space left on device: /mnt/full/ckpt.safetensors; free space there, or use another "
        "folder (e.g. --run-root)"]
