"""Faults in the environment: a store deleted or replaced mid-run, a full or read-only run folder, damaged
checkpoints, a damaged store, concurrent starts. Each gives one line and exit 2, keeps the store and the
checkpoints, and the run resumes once the cause is gone."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from conftest import TINY_DATA
from wattscale.errors import StoreError
from wattscale.store import Store, open_store
from wattscale.train import checkpoints as checkpoint_module
from wattscale.train import session as session_module
from wattscale.train.checkpoints import list_checkpoints
from wattscale.train.session import config_hash_for

# 512 tokens, 128 per step: checkpoints at 128, 256 and 384 tokens (the newest two are kept).
TINY = ["--preset", "llama-tiny", "--batch-size", "4", "--seq-len", "32", *TINY_DATA, "--no-progress",
        "--tokens", "512", "--eval-interval-tokens", "128", "--checkpoint-interval-tokens", "128"]


@pytest.fixture
def train_cli(run_cli_in_process, cache_dir: Path):
    def _train(*extra: str, root: str = "runs", store: str = "w.db"):
        return run_cli_in_process("--store", store, "train", *TINY, "--cache-dir", str(cache_dir),
                                  "--run-root", root, *extra)
    return _train


def _one_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wattscale: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _only_run(path: Path) -> dict:
    with open_store(path) as store:
        (run,) = store.list_runs()
    return run


def _copy_database(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as old, sqlite3.connect(target) as new:
        old.backup(new)
    new.close()
    old.close()


def _after_checkpoints(monkeypatch: pytest.MonkeyPatch, count: int, fault) -> None:
    """Call `fault()` right after the session's `count`-th checkpoint."""
    real = session_module._Session._checkpoint
    done = []

    def checkpoint(self, *args, **kwargs):
        real(self, *args, **kwargs)
        done.append(1)
        if len(done) == count:
            fault()

    monkeypatch.setattr(session_module._Session, "_checkpoint", checkpoint)


def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int, after: int) -> None:
    """Checkpoint files fail with OSError(code) after `after` good writes (a disk filling up)."""
    real, calls = checkpoint_module.write_file, []

    def write_file(path: Path, data) -> None:
        calls.append(path)
        if len(calls) > after:
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "write_file", write_file)


def test_a_store_deleted_mid_run_stops_the_run_and_keeps_its_checkpoints(tmp_path: Path, train_cli,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    db, kept = tmp_path / "w.db", tmp_path / "kept.db"

    def delete() -> None:  # rm, after a backup was taken
        _copy_database(db, kept)
        db.unlink()

    _after_checkpoints(monkeypatch, 1, delete)
    line = _one_line(train_cli())
    assert "was deleted" in line and str(db) in line and "resume" in line
    assert not db.exists()
    run_dir = Path(_only_run(kept)["run_dir"])
    assert str(run_dir) in line and list_checkpoints(run_dir)
    monkeypatch.undo()
    kept.rename(db)  # the user puts it back
    result = train_cli("--json")
    assert result.returncode == 0, result.stderr
    run = _only_run(db)
    assert (run["status"], run["tokens_seen"], run["resume_count"]) == ("finished", 512, 1)


def test_a_store_replaced_mid_run_is_not_written(tmp_path: Path, train_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "w.db"

    def replace() -> None:  # e.g. a backup restored over it: same content, another file
        _copy_database(db, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", db)

    _after_checkpoints(monkeypatch, 1, replace)
    line = _one_line(train_cli())
    assert "was replaced" in line and str(db) in line
    assert _only_run(db)["status"] == "running"  # the copy, as it was when replaced: nothing written since
    monkeypatch.undo()
    assert train_cli().returncode == 0
    run = _only_run(db)
    assert (run["status"], run["tokens_seen"]) == ("finished", 512)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_run_folder_fails_in_one_line_and_resumes(tmp_path: Path, train_cli, code: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_writes(monkeypatch, code, after=4)  # checkpoint 1 (3 files + energy.json) is written, 2 is not
    line = _one_line(train_cli())
    assert os.strerror(code) in line and "--run-root" in line and "model.safetensors" in line
    run = _only_run(tmp_path / "w.db")
    assert run["status"] == "failed" and os.strerror(code) in run["message"]
    run_dir = Path(run["run_dir"])
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000001"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # nothing half-written
    monkeypatch.undo()
    if code == errno.ENOSPC:  # moved to another disk: the checkpoint goes with it
        result = train_cli(root="elsewhere")
        assert result.returncode == 0, result.stderr
        assert "moved from" in result.stderr and "copied checkpoints step-00000001" in result.stderr
        run = _only_run(tmp_path / "w.db")
        assert Path(run["run_dir"]) == (tmp_path / "elsewhere" / run["run_id"]).resolve()
    else:
        assert train_cli().returncode == 0
        run = _only_run(tmp_path / "w.db")
    assert (run["status"], run["tokens_seen"], run["resume_count"]) == ("finished", 512, 1)


def _interrupted_run(tmp_path: Path, train_cli, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run interrupted after its third checkpoint (the folder keeps the newest two); its run_dir."""
    def interrupt() -> None:
        raise KeyboardInterrupt

    _after_checkpoints(monkeypatch, 3, interrupt)
    assert train_cli().returncode == 130
    monkeypatch.undo()
    run_dir = Path(_only_run(tmp_path / "w.db")["run_dir"])
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000002", "step-00000003"]
    return run_dir


def _truncate(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, train_cli,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _interrupted_run(tmp_path, train_cli, monkeypatch)
    _truncate(list_checkpoints(run_dir)[-1])
    with pytest.warns(checkpoint_module.CheckpointWarning, match="resuming from step-00000002"):
        result = train_cli()
    assert result.returncode == 0, result.stderr
    assert (run_dir / "checkpoints" / "corrupt-step-00000003").is_dir()
    assert _only_run(tmp_path / "w.db")["status"] == "finished"


def test_every_checkpoint_truncated_fails_the_run_and_the_advice_works(tmp_path: Path, train_cli,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _interrupted_run(tmp_path, train_cli, monkeypatch)
    with sqlite3.connect(tmp_path / "w.db") as db:  # as a killed process leaves it
        db.execute("UPDATE runs SET status = 'running'")
    for checkpoint in list_checkpoints(run_dir):
        _truncate(checkpoint)
    line = _one_line(train_cli())
    assert "no checkpoint" in line and "rename or delete that folder" in line
    run = _only_run(tmp_path / "w.db")
    assert run["status"] == "failed" and "no checkpoint" in run["message"]
    (run_dir / "checkpoints").rename(run_dir / "checkpoints-damaged")  # what the message says
    assert train_cli().returncode == 0
    run = _only_run(tmp_path / "w.db")
    assert (run["status"], run["tokens_seen"]) == ("finished", 512)


def test_a_store_missing_a_table_is_refused_before_anything_is_written(tmp_path: Path, train_cli) -> None:
    db = tmp_path / "w.db"
    open_store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE evaluations")
        conn.execute("ALTER TABLE train_steps DROP COLUMN grad_norm")
    with pytest.raises(StoreError, match="missing table evaluations, column train_steps.grad_norm"):
        open_store(db)
    line = _one_line(train_cli())
    assert "missing table evaluations" in line and "restore it from a backup" in line
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert not (tmp_path / "runs").exists()


def test_the_run_root_is_not_part_of_a_runs_identity(tmp_path: Path, train_cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    resolved = {"model": {"name": "m"}, "train": {"seed": 1, "run_root": "a"}}
    assert config_hash_for(resolved) == config_hash_for({**resolved, "train": {"seed": 1, "run_root": "b"}})
    assert config_hash_for(resolved) != config_hash_for({**resolved, "train": {"seed": 2, "run_root": "a"}})

    run_dir = _interrupted_run(tmp_path, train_cli, monkeypatch)
    lock = os.open(run_dir / "lock", os.O_RDWR)
    try:  # the first process still trains it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _one_line(train_cli(root="other"))
    finally:
        os.close(lock)
    assert "is being trained by another process" in line
    assert not (tmp_path / "other").exists()  # no empty folder left behind

    # A run stored with the hash of an older wattscale (run_root included) still resumes.
    with sqlite3.connect(tmp_path / "w.db") as db:
        db.execute("UPDATE runs SET config_hash = 'old-hash-with-the-run-root'")
    assert train_cli().returncode == 0
    assert _only_run(tmp_path / "w.db")["status"] == "finished"


def _open_and_claim(path: str, seed: int, barrier, results) -> None:
    barrier.wait()
    try:
        with open_store(path) as store:
            store.get_run(f"run-{seed}")
            store.create_run({"run_id": f"run-{seed}", "config_json": "{}", "config_hash": "h",
                              "preset": "llama-tiny", "seed": seed, "tokens_budget": 512})
            store.list_runs()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_eight_processes_starting_on_a_new_store_file_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(10):
        path = str(tmp_path / f"new-{attempt}.db")
        barrier, results = context.Barrier(8), context.Queue()
        workers = [context.Process(target=_open_and_claim, args=(path, seed, barrier, results))
                   for seed in range(8)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join()
        assert outcomes == ["ok"] * 8, outcomes
        with open_store(path) as store:
            assert sorted(run["run_id"] for run in store.list_runs()) == [f"run-{seed}" for seed in range(8)]


def test_a_run_claimed_meanwhile_under_another_run_root_is_left_to_its_process(
        tmp_path: Path, train_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _interrupted_run(tmp_path, train_cli, monkeypatch)
    # The other process creates the record only after this one has looked (and found none) twice.
    real, looks = Store.get_run, []

    def get_run(self, run_id):
        looks.append(run_id)
        return None if len(looks) <= 2 else real(self, run_id)

    monkeypatch.setattr(Store, "get_run", get_run)
    line = _one_line(train_cli(root="other"))
    assert "is being trained by another process" in line and str(run_dir) in line
    monkeypatch.undo()
    assert not (tmp_path / "other").exists()
    run = _only_run(tmp_path / "w.db")
    assert (run["status"], Path(run["run_dir"])) == ("interrupted", run_dir)  # left exactly as it was


@contextmanager
def _small_disk(path: Path) -> Iterator[None]:
    """A 16 MiB tmpfs at `path` (skips the test where mounting is not allowed, e.g. as a normal user)."""
    path.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here; the faked ENOSPC/EROFS tests cover the code")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_really_full_then_read_only_disk(tmp_path: Path, train_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk"
    with _small_disk(disk):
        filler = disk / "filler"

        def fill() -> None:
            with open(filler, "wb") as handle, suppress(OSError):
                while True:
                    handle.write(b"\0" * (1 << 20))
                    handle.flush()

        _after_checkpoints(monkeypatch, 1, fill)
        line = _one_line(train_cli(root=str(disk)))
        assert "No space left on device" in line and "--run-root" in line
        monkeypatch.undo()
        run = _only_run(tmp_path / "w.db")
        assert run["status"] == "failed" and list_checkpoints(Path(run["run_dir"]))
        assert not list((Path(run["run_dir"]) / "checkpoints").glob(".tmp-*"))

        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        line = _one_line(train_cli(root=str(disk)))  # refused at the run's lock, before anything is written
        assert "Read-only file system" in line and "--run-root elsewhere" in line
        assert _only_run(tmp_path / "w.db")["status"] == "failed"

        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert train_cli(root=str(disk)).returncode == 0
        run = _only_run(tmp_path / "w.db")
        assert (run["status"], run["tokens_seen"], run["resume_count"]) == ("finished", 512, 1)
