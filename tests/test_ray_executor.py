"""The Ray executor on a real Ray cluster: a head and a second node on this machine, one CPU each.

The cluster is started with `ray start`, as a user would, and stopped by ending exactly the
processes it started (their session), so no other Ray instance is touched. Every sweep is
checked against the same experiment file run by the local executor: training on CPU is
deterministic, so the stored runs, steps and losses must agree.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from wattscale.errors import ConfigError, WattscaleError
from wattscale.experiment import load_experiment, plan_experiment
from wattscale.experiment.local import register_plan
from wattscale.experiment.ray_executor import run_ray
from wattscale.experiment.worker_store import gather_leftovers, worker_store_path
from wattscale.store import open_store

IN_CI = os.environ.get("CI", "").lower() == "true"
if importlib.util.find_spec("ray") is None:
    if IN_CI:
        raise ImportError("CI installs the test extra, which includes ray; the Ray executor tests must run there")
    pytest.skip("Ray is not installed: pip install -e '.[ray]'", allow_module_level=True)

POSTGRES_ENV = "WATTSCALE_TEST_POSTGRES_URL"
TASK_TITLE = "ray::wattscale-train-"  # a Ray worker's process title while it runs one of our tasks

# Two conditions x two repetitions of llama-tiny, a few seconds each.
STUDY = """
[experiment]
name = "ray-study"
repetitions = 2

[model]
preset = "llama-tiny"

[train]
epochs = 1
batch_size = 4
seq_len = 32
eval_tokens = 2048
threads = 1

[data]
synthetic_mb = 0.3

[meter]
idle_seconds = 0

[grid]
"train.data_tokens" = [4096, 8192]
"""

# One run long enough to be killed in the middle: 512 steps (~3 s), a checkpoint every 16.
LONG_RUN = """
[experiment]
name = "ray-long"

[model]
preset = "llama-tiny"

[train]
tokens = 65536
batch_size = 4
seq_len = 32
eval_tokens = 2048
eval_interval_tokens = 8192
checkpoint_interval_tokens = 2048
threads = 1

[data]
synthetic_mb = 0.3

[meter]
idle_seconds = 0
"""


@dataclass(frozen=True)
class RayCluster:
    address: str
    temp_dir: Path
    sessions: frozenset[int]  # the process sessions of the `ray start` commands

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: the daemons `ray start` left and the workers they forked."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            with suppress(psutil.Error, OSError):
                if os.getsid(proc.pid) in self.sessions or str(self.temp_dir) in " ".join(proc.info["cmdline"] or ()):
                    found.append(proc)
        return found

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, this cluster's processes only (`ray stop` would end every Ray on the machine)."""
        procs = self.processes()
        for proc in procs:
            with suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=2)  # raylet and GCS take ~20 s to go on SIGTERM alone
        for proc in alive:
            with suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=20)


# Ray binds its ports on every interface whatever --node-ip-address says, so the test cluster
# takes only callers that know this token (ray start, the drivers and the workers get it from _env()).
_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _env() -> dict[str, str]:
    drop = ("RAY_ADDRESS", "WATTSCALE_STORE", "RAY_AUTH_TOKEN_PATH")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"RAY_USAGE_STATS_ENABLED": "0", **_AUTH}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_start(args: list[str], sessions: set[int]) -> None:
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_cli) if ray_cli.exists() else "ray", "start", *args], env=_env(),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sessions.add(proc.pid)  # its own session: what it leaves running is found by session id
    output, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{output}")


def _wait_for_nodes(address: str, n: int) -> None:
    probe = ("import sys, time, ray\n"
             "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
             "deadline = time.monotonic() + 60\n"
             "while sum(node['Alive'] for node in ray.nodes()) < int(sys.argv[2]):\n"
             "    assert time.monotonic() < deadline, ray.nodes()\n"
             "    time.sleep(0.2)\n")
    subprocess.run([sys.executable, "-c", probe, address, str(n)], env=_env(), check=True, timeout=120,
                   capture_output=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A head node and a second node joined to it at 127.0.0.1, each with one CPU."""
    temp_dir = Path(tempfile.mkdtemp(prefix="wsray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    port = _free_port()
    sessions: set[int] = set()
    node = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir, frozenset())
    try:
        _ray_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
                    "--temp-dir", str(temp_dir), *node], sessions)
        _ray_start(["--address", cluster.address, *node], sessions)
        cluster = RayCluster(cluster.address, temp_dir, frozenset(sessions))
        _wait_for_nodes(cluster.address, 2)
        yield cluster
    finally:
        cluster = RayCluster(cluster.address, temp_dir, frozenset(sessions))
        cluster.stop()
        left = cluster.processes()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes survived the teardown: {left}"


def wattscale(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wattscale", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_wattscale(cwd: Path, *args: str) -> subprocess.Popen:
    """`wattscale ARGS` in the background (references train while Ray starts or trains)."""
    return subprocess.Popen([sys.executable, "-m", "wattscale", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a background `wattscale`, which must succeed; returns its stdout."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    return stdout


def sweep_args(store: str, study: str, cache_dir: Path, run_root: str, *extra: str) -> list[str]:
    return ["--store", store, "run", study, "--cache-dir", str(cache_dir), "--no-progress",
            "--set", f"train.run_root={run_root}", *extra]


def ray_args(cluster: RayCluster) -> list[str]:
    return ["--executor", "ray", "--address", cluster.address, "--cpus-per-run", "1"]


def snapshot(store_url: str, experiment: str) -> dict:
    """The experiment's runs with their steps and evaluations, read back through the store."""
    with open_store(store_url, create=False) as store:
        runs = store.list_runs(experiment=experiment)
        return {r["run_id"]: {"status": r["status"], "tokens": (r["tokens_seen"], r["tokens_budget"]),
                              "steps": r["steps"], "final_val_loss": r["final_val_loss"],
                              "resume_count": r["resume_count"], "run_dir": r["run_dir"],
                              "train_steps": [(s["step"], s["tokens_seen"], s["loss"])
                                              for s in store.train_steps(r["run_id"])],
                              "evaluations": [(e["step"], e["tokens_seen"], e["val_loss"])
                                              for e in store.evaluations(r["run_id"])]}
                for r in runs}


def assert_same_training(got: dict, expected: dict) -> None:
    """Same runs, every one finished once, the same steps and evaluations with the same losses."""
    assert sorted(got) == sorted(expected)
    for run_id, run in got.items():
        ref = expected[run_id]
        assert run["status"] == "finished" and run["tokens"][0] == run["tokens"][1], run_id
        assert run["steps"] == ref["steps"] and [s[0] for s in run["train_steps"]] == list(range(1, run["steps"] + 1))
        assert [s[:2] for s in run["train_steps"]] == [s[:2] for s in ref["train_steps"]]
        assert [e[:2] for e in run["evaluations"]] == [e[:2] for e in ref["evaluations"]]
        assert [s[2] for s in run["train_steps"]] == pytest.approx([s[2] for s in ref["train_steps"]], abs=1e-6)
        assert [e[2] for e in run["evaluations"]] == pytest.approx([e[2] for e in ref["evaluations"]], abs=1e-6)
        assert run["final_val_loss"] == pytest.approx(ref["final_val_loss"], abs=1e-6)


class LocalReference:
    """STUDY trained by the local executor, in the background from the moment the fixture is set up."""

    def __init__(self, where: Path, cache_dir: Path) -> None:
        (where / "study.toml").write_text(STUDY)
        self.store = str(where / "local.db")
        self._proc = start_wattscale(where, *sweep_args("local.db", "study.toml", cache_dir, "local_runs"))
        self._snapshot: dict | None = None

    def snapshot(self) -> dict:
        if self._snapshot is None:
            finish(self._proc)
            self._snapshot = snapshot(self.store, "ray-study")
        return self._snapshot


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[LocalReference]:
    reference = LocalReference(tmp_path_factory.mktemp("local_reference"), cache_dir)
    yield reference
    reference.snapshot()  # never leave it running


# local_reference comes first, so that it trains while the cluster starts.
def test_sweep_on_ray_matches_the_local_executor(local_reference: LocalReference, ray_cluster: RayCluster,
                                                 tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    done = wattscale(tmp_path, *sweep_args("ray.db", "study.toml", cache_dir, "ray_runs"), *ray_args(ray_cluster))
    assert done.returncode == 0, done.stderr
    assert "4 finished, 0 diverged, 0 failed of 4 runs" in done.stdout
    got = snapshot(str(tmp_path / "ray.db"), "ray-study")
    assert_same_training(got, local_reference.snapshot())
    # The driver wrote the main store; the per-run stores are gone once gathered.
    assert all(Path(run["run_dir"]).parent == tmp_path / "ray_runs" for run in got.values())
    assert not list((tmp_path / "ray_runs").glob("*/worker-store-*"))
    again = wattscale(tmp_path, *sweep_args("ray.db", "study.toml", cache_dir, "ray_runs"), *ray_args(ray_cluster))
    assert again.returncode == 0 and "(4 were already done)" in again.stdout, again.stderr
    assert snapshot(str(tmp_path / "ray.db"), "ray-study") == got


def _kill_task_worker(cluster: RayCluster, timeout: float = 30) -> int:
    """SIGKILL the Ray worker running our task (found by its process title); returns its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cluster.processes():
            with suppress(psutil.Error):
                if (proc.cmdline() or [""])[0].startswith(TASK_TITLE):
                    proc.send_signal(signal.SIGKILL)
                    return proc.pid
        time.sleep(0.05)
    raise AssertionError(f"no process titled {TASK_TITLE}* in the cluster")


def _newest_checkpoint(run_root: Path) -> int:
    """The step of the newest complete checkpoint under run_root (0 if none)."""
    return max((int(p.parent.name.split("-")[1]) for p in run_root.glob("*/checkpoints/step-*/meta.json")), default=0)


def _wait_for_checkpoint(run_root: Path, after: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while _newest_checkpoint(run_root) <= after:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no checkpoint after step {after} in {run_root}"
        time.sleep(0.02)


def test_a_run_begun_locally_continues_on_ray_and_survives_a_killed_worker(ray_cluster: RayCluster, tmp_path: Path,
                                                                            cache_dir: Path) -> None:
    """Local executor killed after a checkpoint; Ray goes on from there (keeping its rows), its worker is
    SIGKILLed after a later checkpoint, Ray retries the task, and the run ends as if never interrupted."""
    (tmp_path / "long.toml").write_text(LONG_RUN)
    run_root = tmp_path / "ray_runs"
    reference = start_wattscale(tmp_path, *sweep_args("local.db", "long.toml", cache_dir, "local_runs"))
    begun = start_wattscale(tmp_path, *sweep_args("ray.db", "long.toml", cache_dir, "ray_runs"))
    driver = None
    try:
        _wait_for_checkpoint(run_root, 0, begun)
        begun.kill()  # the local executor trains in this process
        begun.communicate()
        local_step = _newest_checkpoint(run_root)
        driver = start_wattscale(tmp_path, *sweep_args("ray.db", "long.toml", cache_dir, "ray_runs"),
                                 *ray_args(ray_cluster))
        _wait_for_checkpoint(run_root, local_step, driver)
        killed = _kill_task_worker(ray_cluster)
        stdout = finish(driver, timeout=180)
    finally:
        for proc in (begun, driver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        finish(reference)
    assert "1 finished, 0 diverged, 0 failed of 1 runs" in stdout
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    got = snapshot(str(tmp_path / "ray.db"), "ray-long")
    assert_same_training(got, snapshot(str(tmp_path / "local.db"), "ray-long"))
    (run,) = got.values()
    # Resumed twice: by the Ray task after the local session, and by its retry after the kill.
    assert run["resume_count"] >= 2, run["resume_count"]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A database of its own on the server in WATTSCALE_TEST_POSTGRES_URL (skipped without one)."""
    base = os.environ.get(POSTGRES_ENV, "").strip()
    if not base:
        if IN_CI:
            pytest.fail(f"CI=true but {POSTGRES_ENV} is unset: .ci/postgres.sh did not start PostgreSQL", pytrace=False)
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV}; start a throwaway server with: source .ci/postgres.sh")
    from sqlalchemy import create_engine, make_url

    url = make_url(base)
    if "+" not in url.drivername:
        url = url.set(drivername="postgresql+psycopg")
    name = f"wattscale_ray_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.mark.postgres
def test_workers_write_postgresql_directly(ray_cluster: RayCluster, postgres_url: str, tmp_path: Path,
                                           cache_dir: Path, local_reference: LocalReference) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    done = wattscale(tmp_path, *sweep_args(postgres_url, "study.toml", cache_dir, "ray_runs"), *ray_args(ray_cluster))
    assert done.returncode == 0, done.stderr
    assert_same_training(snapshot(postgres_url, "ray-study"), local_reference.snapshot())
    assert not list((tmp_path / "ray_runs").glob("*/worker-store-*")), "workers must not use per-run stores"


# --- without a cluster ----------------------------------------------------------------------------


def test_missing_ray_bad_requests_and_a_dead_address_fail_at_once(tmp_path: Path, cache_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    plan = plan_experiment(load_experiment(tmp_path / "study.toml"), cache_dir)
    with pytest.raises(ConfigError, match="--gpus-per-run: 1.5"):
        run_ray(plan, str(tmp_path / "s.db"), cache_dir, gpus_per_run=1.5)
    with pytest.raises(ConfigError, match="--cpus-per-run: 0"):
        run_ray(plan, str(tmp_path / "s.db"), cache_dir, cpus_per_run=0)
    started = time.monotonic()
    with pytest.raises(WattscaleError, match="--address: no Ray cluster answers at 127.0.0.1:"):
        run_ray(plan, str(tmp_path / "t.db"), cache_dir, address=f"127.0.0.1:{_free_port()}")
    assert time.monotonic() - started < 30
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'wattscale\[ray\]'"):
        run_ray(plan, str(tmp_path / "s.db"), cache_dir)
    assert not (tmp_path / "s.db").exists(), "nothing is written before the request is checked"


def test_a_dead_drivers_per_run_stores_are_gathered_when_they_got_further(tmp_path: Path, cache_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver killed before gathering leaves rows only in the per-run stores; the next sweep (local or Ray)
    copies in those that got further than the store, and never another store's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(STUDY)
    plan = plan_experiment(load_experiment(tmp_path / "study.toml"), cache_dir)
    main_url = str(tmp_path / "main.db")
    register_plan(plan, main_url)
    ahead, behind = plan.runs[0], plan.runs[1]
    record = {"preset": "llama-tiny", "config_json": "{}", "config_hash": "h", "seed": 0, "tokens_budget": 4096}
    with open_store(main_url) as main:
        main.create_run({**record, "run_id": behind.run_id})
        main.update_run(behind.run_id, tokens_seen=2048)
        main.add_train_steps(behind.run_id, [{"step": s, "tokens_seen": 128 * s} for s in range(1, 17)])
    for run, tokens in ((ahead, 2048), (behind, 1024)):
        worker_db = worker_store_path(tmp_path / "wattscale_runs" / run.run_id, f"sqlite:///{main_url}")
        with open_store(worker_db) as worker:
            worker.create_run({**record, "run_id": run.run_id})
            worker.update_run(run.run_id, tokens_seen=tokens)
            worker.add_train_steps(run.run_id, [{"step": s, "tokens_seen": 128 * s} for s in range(1, 3)])
    foreign = plan.runs[2]  # trained for another store: not this store's to gather
    with open_store(worker_store_path(tmp_path / "wattscale_runs" / foreign.run_id, "sqlite:////other.db")) as other:
        other.create_run({**record, "run_id": foreign.run_id})
    with open_store(main_url) as main:
        gather_leftovers(plan, main)
        assert main.get_run(ahead.run_id)["tokens_seen"] == 2048 and len(main.train_steps(ahead.run_id)) == 2
        assert main.get_run(behind.run_id)["tokens_seen"] == 2048 and len(main.train_steps(behind.run_id)) == 16
    con = sqlite3.connect(main_url)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)
    con.close()
