"""Shared fixtures: a session-wide token cache and a CLI runner that uses real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WATTSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token-shard cache for the whole session, so each corpus is tokenized once."""
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run `python -m wattscale ...` in tmp_path with a fresh environment; returns a CliResult."""

    def _run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> CliResult:
        full_env = {k: v for k, v in os.environ.items() if k != "WATTSCALE_STORE"}
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "wattscale", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=timeout, env=full_env)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return _run


@pytest.fixture
def run_cli_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `wattscale ...` through `wattscale.cli.main` in this process, in tmp_path; returns a CliResult.

    The same parsing, error handling and exit codes as the console script, without a new interpreter importing
    torch, pandas and pingouin again (seconds per call): for commands whose process-level behaviour (signals,
    kills) is not what the test is about.
    """
    import signal

    from wattscale.cli import main

    def _run(*args: str) -> CliResult:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("WATTSCALE_STORE", raising=False)
        capsys.readouterr()  # drop anything printed before
        previous = signal.getsignal(signal.SIGTERM)
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refusing a flag, as the console script would exit
            code = exc.code
        finally:
            signal.signal(signal.SIGTERM, previous)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return _run


# Small but real settings shared by trainer tests: the llama-tiny preset on a 0.3 MB generated corpus.
TINY_DATA = ["--data", "synthetic", "--synthetic-mb", "0.3", "--eval-tokens", "2048", "--idle-seconds", "0"]
