"""Shared fixtures (a session-wide token cache, CLI runners) and how the tests share the parallel workers."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WATTSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))


# `python -m pytest` runs on pytest-xdist workers with --dist loadgroup (pyproject.toml): each test goes to whichever
# worker is free, except the tests of a group, which run on one worker in file order. A file is grouped when its tests
# share something that must not be set up twice or used by two workers at once. PostgreSQL needs no group: each worker
# makes a database of its own (named by its pid), each test a schema in it.
XDIST_GROUPS = {
    "test_ray_executor.py": "ray",  # one local Ray cluster (a head and a node, a module fixture) at a time
    "test_distributed.py": "torchrun",  # the one- and two-rank reference runs, module fixtures the tests compare with
    # The real study report_helpers trains once per worker (in its basetemp), and the one chromium.
    "test_report.py": "report-study",
    "test_report_browser.py": "report-study",
    # Module fixtures that train or write a store: set up once, not once per worker.
    "test_cli_fuzz.py": "cli-fuzz",
    "test_laws_cli.py": "laws-cli",
    "test_report_laws.py": "report-laws",
    "test_data.py": "data",
    "test_fsdp.py": "fsdp",  # two ranks' models, built once (a module fixture)
    "test_gpu_suite.py": "gpu-suite",  # one --dry-run of the whole suite
    "test_study_exports.py": "study-exports",  # one study trained and exported
}


def default_sigint() -> None:
    """`preexec_fn` for a child that a test stops with SIGINT, as a user's Ctrl-C would.

    A shell without job control starts background commands with SIGINT ignored (`pytest ... &` in a script), and
    an ignored signal stays ignored across exec: the child would never see the test's Ctrl-C.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)  # before xdist appends the group to each test's id
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = XDIST_GROUPS.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker, torch (here and in the CLI subprocesses) uses this worker's share of the CPUs.

    Without it every worker's torch starts one thread per CPU, and N workers on N cores oversubscribe them N-fold:
    small matmuls then wait on each other's spinning threads. A run's own `train.threads` still wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)
    import torch

    torch.set_num_threads(share)


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

    def _run(*args: str, timeout: float | None = None, env: dict[str, str] | None = None) -> CliResult:
        """As run_cli: `env` holds for this call only; `timeout` is accepted (run_cli's signature) and not enforced."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("WATTSCALE_STORE", raising=False)
        capsys.readouterr()  # drop anything printed before
        previous = signal.getsignal(signal.SIGTERM)
        with pytest.MonkeyPatch.context() as call_env:
            for key, value in (env or {}).items():
                call_env.setenv(key, value)
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
