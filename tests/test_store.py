"""The results database, on SQLite and on PostgreSQL.

Every behavioural test runs on both backends. PostgreSQL needs WATTSCALE_TEST_POSTGRES_URL (CI
gets it from ``source .ci/postgres.sh``); without it those tests are skipped, except under CI=true,
where they fail. Each PostgreSQL test gets its own schema in a database made for this session.
Expected values come from the inputs written, and stored state is read back with plain SQL,
csv and pyarrow rather than only through the Store.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import URL, create_engine, event, inspect, make_url, text

import wattscale
from wattscale.errors import StoreError
from wattscale.store import Store, open_store
from wattscale.store_schema import SCHEMA_VERSION

POSTGRES_ENV = "WATTSCALE_TEST_POSTGRES_URL"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TABLES = {"runs", "evaluations", "train_steps", "power_samples", "energy_measurements", "schema_version",
          "calibrations"}
_schema_ids = itertools.count()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """A database of its own for this test session on the server in WATTSCALE_TEST_POSTGRES_URL."""
    base = os.environ.get(POSTGRES_ENV, "").strip()
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {POSTGRES_ENV} is unset: .ci/postgres.sh did not start PostgreSQL", pytrace=False)
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV}; start a throwaway server with: source .ci/postgres.sh")
    url = make_url(base)
    if "+" not in url.drivername:
        url = url.set(drivername="postgresql+psycopg")
    name = f"wattscale_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure here means the configured server is unusable
        admin.dispose()
        pytest.fail(f"{POSTGRES_ENV}={url.render_as_string()} is set but unusable: {exc}", pytrace=False)
    yield url.set(database=name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty store: a SQLite file in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "wattscale.db")
        return
    database: URL = request.getfixturevalue("postgres_database")
    schema = f"t{next(_schema_ids)}_{secrets.token_hex(3)}"
    admin = create_engine(database)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    yield database.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


def run_record(run_id: str = "run-a", **overrides: Any) -> dict[str, Any]:
    """A llama-4m run record: 4,262,144 params of which 4096*256 = 1,048,576 are embeddings."""
    record: dict[str, Any] = {
        "run_id": run_id,
        "experiment": "dynamics-smoke",
        "name": f"llama-4m seed 1 ({run_id})",
        "preset": "llama-4m",
        "config_json": json.dumps({"model": {"preset": "llama-4m"}, "train": {"tokens": 1_000_000}}),
        "config_hash": "c0ffee" * 4,
        "seed": 1,
        "created_at": CREATED,
        "tokens_budget": 1_000_000,
        "params_total": 4_262_144,
        "params_embedding": 1_048_576,
        "params_non_embedding": 3_213_568,
        "flops_per_token": 6 * 3_213_568 + 12 * 4 * 256 * 512,
        "device": "cpu",
        "device_info_json": json.dumps({"cores": 2}),
        "git_revision": "abc1234",
        "torch_version": "2.13.0",
    }
    record.update(overrides)
    return record


def step_rows(steps: range, loss_scale: float = 10.0) -> list[dict[str, Any]]:
    return [
        {"step": s, "tokens_seen": s * 4096, "loss": loss_scale / s, "lr": 1e-3 * s, "grad_norm": 0.5 + s,
         "step_seconds": 0.25}
        for s in steps
    ]


def eval_row(step: int, val_loss: float) -> dict[str, Any]:
    return {"step": step, "tokens_seen": step * 4096, "val_loss": val_loss, "val_ppl": math.exp(val_loss),
            "wall_seconds": step * 0.25}


def scalar(store: Store, sql: str, **params: Any) -> Any:
    """Read stored state with plain SQL, not through the Store's readers."""
    with store.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


# --- opening ---------------------------------------------------------------------------------------------


def test_open_creates_all_tables_and_records_the_schema_version(store: Store) -> None:
    assert TABLES <= set(inspect(store.engine).get_table_names())
    assert scalar(store, "SELECT version FROM schema_version") == SCHEMA_VERSION
    assert scalar(store, "SELECT COUNT(*) FROM schema_version") == 1


def test_reopening_keeps_data_and_one_schema_version_row(store_url: str) -> None:
    with open_store(store_url) as first:
        first.create_run(run_record())
    with open_store(store_url) as second, open_store(store_url, create=False) as third:
        assert [r["run_id"] for r in second.list_runs()] == ["run-a"]
        assert third.get_run("run-a") is not None
        assert scalar(second, "SELECT COUNT(*) FROM schema_version") == 1


def test_open_without_create_refuses_a_missing_store(store_url: str) -> None:
    with pytest.raises(StoreError, match="--store"):
        open_store(store_url, create=False)
    if "://" not in store_url:
        assert not Path(store_url).exists()  # refusing must not leave an empty file behind


def test_sqlite_uses_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with open_store(str(path)) as store:
        store.create_run(run_record())
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT status FROM runs").fetchone()[0] == "running"


def test_a_relative_path_is_a_sqlite_file_and_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("runs/x.db") as store:
        store.create_run(run_record())
        url = store.url
    assert (tmp_path / "runs" / "x.db").is_file()
    assert url == f"sqlite:///{tmp_path}/runs/x.db"
    monkeypatch.chdir("/")
    with open_store(url, create=False) as again:
        assert again.get_run("run-a") is not None


@pytest.mark.postgres
def test_a_plain_postgresql_url_uses_psycopg3(postgres_database: URL) -> None:
    plain = postgres_database.set(drivername="postgresql").render_as_string(hide_password=False)
    assert plain.startswith("postgresql://")
    with open_store(plain) as store:
        assert store.engine.dialect.driver == "psycopg"
        assert store.url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://user@localhost/db", "unsupported database 'mysql'"),
        ("postgresql://nobody@127.0.0.1:1/nodb", "cannot open postgresql+psycopg://nobody@127.0.0.1:1/nodb"),
        ("postgresql+nosuchdriver://u@localhost/db", "pip install"),
        ("://nowhere", "cannot parse"),
        ("   ", "empty"),
    ],
)
def test_bad_urls_raise_one_line_store_errors(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert message.startswith("--store / WATTSCALE_STORE: ")
    assert expected in message
    assert "\n" not in message


def test_password_is_masked_in_errors() -> None:
    with pytest.raises(StoreError) as info:
        open_store("postgresql://user:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_bad_sqlite_paths_raise_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        open_store(str(tmp_path))
    with pytest.raises(StoreError, match="no results database at"):
        open_store(str(tmp_path / "missing.db"), create=False)
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StoreError, match=r"--store / WATTSCALE_STORE: cannot open .*notes\.db"):
        open_store(str(not_a_db))
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE runs (x INTEGER)")
    with pytest.raises(StoreError, match=r"already has tables \(runs\)"):
        open_store(str(foreign))


def test_a_newer_schema_version_is_refused(store_url: str) -> None:
    with open_store(store_url) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    with pytest.raises(StoreError, match="newer than this wattscale.*upgrade wattscale"):
        open_store(store_url)


def _schema_2_store(store_url: str) -> None:
    """A store as wattscale wrote it at schema 2 (tests/data), with one trained run, its energy and a step."""
    engine = create_engine(store_url if "://" in store_url else f"sqlite:///{store_url}")
    ddl = (Path(__file__).parent / "data" / f"store_schema_v2.{engine.dialect.name}.sql").read_text()
    config = {"model": {"n_layers": 4, "d_model": 256, "n_heads": 8, "n_kv_heads": 8, "ffn_hidden": 704,
                        "vocab_size": 4096, "context_length": 512, "tie_embeddings": True, "name": "llama-4m"},
              "train": {"tokens": 1_000_000, "seq_len": 256}}
    with engine.begin() as conn:
        for statement in ddl.split(";\n"):
            body = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
            if body:
                conn.exec_driver_sql(body)
        conn.execute(text(
            "INSERT INTO runs (run_id, preset, status, config_json, config_hash, seed, created_at, wall_seconds, "
            "tokens_budget, tokens_seen, steps, flops_per_token, energy_j, energy_source, resume_count) VALUES "
            "('old-run', 'llama-4m', 'finished', :config, 'abc', 3, :created, 12.5, 1000000, 1000000, 10, "
            ":flops, 400.0, 'estimated', 0)"),
            {"config": json.dumps(config), "created": CREATED.replace(tzinfo=None),
             "flops": 6 * 3_213_568 + 12 * 4 * 256 * 256})  # schema 2's formula: no output head
        conn.execute(text("INSERT INTO energy_measurements (run_id, device, scope, start_seconds, end_seconds, "
                          "energy_j, source, complete) VALUES ('old-run', 'cpu', 'run', 0, 12.5, 400.0, "
                          "'estimated', :yes)"), {"yes": True})
        conn.execute(text("INSERT INTO train_steps (run_id, step, tokens_seen, loss) VALUES ('old-run', 1, 100, 2.5)"))
    engine.dispose()


def test_a_schema_2_store_is_migrated_in_place(store_url: str) -> None:
    from wattscale.flops import flops_per_token_from_config

    _schema_2_store(store_url)
    with open_store(store_url) as store:
        assert scalar(store, "SELECT version FROM schema_version") == SCHEMA_VERSION
        run = store.get_run("old-run")
        # Kept, marked as trained, FLOPs per token recounted with the output head.
        assert (run["kind"], run["energy_j"], run["energy_source"], run["seed"]) == ("train", 400.0, "estimated", 3)
        model = json.loads(run["config_json"])["model"]
        assert run["flops_per_token"] == flops_per_token_from_config(model, 256) > 6 * 3_213_568 + 12 * 4 * 256 * 256
        (row,) = store.energy_measurements("old-run")
        assert (row["scope"], row["phase"], row["component"], row["energy_j"]) == ("run", None, None, 400.0)
        # What schema 3 allows: phase rows, a mixed total, a measured run without preset, seed or budget.
        store.add_energy_measurements("old-run", [{"device": "cpu", "component": "cpu_estimate", "scope": "phase",
                                                   "phase": "train", "phase_seconds": 10.0, "start_seconds": 0.0,
                                                   "end_seconds": 12.5, "energy_j": 300.0, "source": "estimated"}])
        store.create_run({"run_id": "measured-1", "kind": "measured", "config_json": "{}", "config_hash": "x"})
        store.finish_run("measured-1", "finished", {"energy_j": 5.0, "energy_source": "mixed", "train_energy_j": 4.0})
        assert store.get_run("measured-1")["energy_source"] == "mixed"
        # Foreign keys survived the rebuild: deleting the run deletes its rows.
        assert store.delete_run("old-run")
        assert store.energy_measurements("old-run") == [] and store.train_steps("old-run") == []
    with open_store(store_url) as again:  # opening a migrated store changes nothing
        assert scalar(again, "SELECT version FROM schema_version") == SCHEMA_VERSION
        assert [r["run_id"] for r in again.list_runs()] == ["measured-1"]


def test_a_trained_run_needs_its_preset_seed_and_budget(store: Store) -> None:
    record = run_record()
    del record["preset"]
    with pytest.raises(StoreError, match="missing required column.*preset"):
        store.create_run(record)
    with pytest.raises(StoreError, match="runs.kind must be one of"):
        store.create_run(run_record(kind="other"))


# --- the run lifecycle ----------------------------------------------------------------------------------


def test_create_steps_evaluations_finish(store: Store) -> None:
    assert store.create_run(run_record()) is None
    created = store.get_run("run-a")
    assert created is not None
    assert (created["status"], created["created_at"], created["resume_count"]) == (
        "running", "2026-01-02T03:04:05+00:00", 0)
    assert (created["tokens_seen"], created["steps"], created["wall_seconds"]) == (0, 0, 0.0)
    assert created["wattscale_version"] == wattscale.__version__

    # 05:05 at UTC+2 is 03:05 UTC.
    store.mark_running("run-a", datetime(2026, 1, 2, 5, 5, tzinfo=timezone(timedelta(hours=2))), resumed=False)
    store.add_train_steps("run-a", step_rows(range(1, 11)))
    store.add_evaluation("run-a", eval_row(10, 2.5))
    store.add_evaluation("run-a", eval_row(5, 3.0))  # out of order: read back by tokens_seen
    store.finish_run("run-a", "finished", {
        "finished_at": datetime(2026, 1, 2, 3, 6, tzinfo=UTC), "wall_seconds": 12.5, "tokens_seen": 40_960,
        "steps": 10, "final_val_loss": 2.5, "final_val_ppl": math.exp(2.5), "energy_j": 321.5,
        "energy_source": "integrated"})

    run = store.get_run("run-a")
    assert run is not None
    expected = run_record(created_at="2026-01-02T03:04:05+00:00") | {
        "status": "finished", "started_at": "2026-01-02T03:05:00+00:00", "finished_at": "2026-01-02T03:06:00+00:00",
        "wall_seconds": 12.5, "tokens_seen": 40_960, "steps": 10, "final_val_loss": 2.5,
        "final_val_ppl": math.exp(2.5), "energy_j": 321.5, "energy_source": "integrated", "run_dir": None,
        "message": None, "resume_count": 0, "wattscale_version": wattscale.__version__,
        "params": 4_262_144, "joules": 321.5, "data_tokens": None, "epochs": None, "repeat": None,
        "kind": "train", "train_energy_j": None, "train_seconds": None, "train_tokens": None, "energy_json": None,
        "command_line": None, "phases": {}}
    assert run == expected
    assert store.train_steps("run-a") == [row | {"run_id": "run-a"} for row in step_rows(range(1, 11))]
    assert [(e["step"], e["val_loss"], e["val_ppl"]) for e in store.evaluations("run-a")] == [
        (5, 3.0, math.exp(3.0)), (10, 2.5, math.exp(2.5))]
    json.dumps([run, *store.evaluations("run-a"), *store.train_steps("run-a")])  # JSON-ready


def test_list_runs_orders_by_created_at_and_has_the_summary_fields(store: Store) -> None:
    store.create_run(run_record("later", created_at=CREATED + timedelta(hours=1), seed=2))
    store.create_run(run_record("earlier", experiment="other", params_total=None))
    store.finish_run("later", "finished", {"energy_j": 9.0, "energy_source": "counter", "final_val_loss": 1.5})
    runs = store.list_runs()
    assert [r["run_id"] for r in runs] == ["earlier", "later"]
    for key in ("run_id", "status", "preset", "params", "tokens_seen", "seed", "wall_seconds", "final_val_loss",
                "joules", "energy_source", "created_at", "config_json", "device"):
        assert all(key in r for r in runs), key
    later = runs[1]
    assert (later["status"], later["seed"], later["params"], later["joules"], later["energy_source"]) == (
        "finished", 2, 4_262_144, 9.0, "counter")
    assert (runs[0]["params"], runs[0]["joules"], runs[0]["final_val_loss"]) == (None, None, None)
    assert [r["run_id"] for r in store.list_runs(experiment="other")] == ["earlier"]
    assert store.get_run("nope") is None and store.evaluations("nope") == [] and store.train_steps("nope") == []


def test_truncate_after_deletes_and_resuming_does_not_duplicate(store: Store) -> None:
    store.create_run(run_record())
    store.add_train_steps("run-a", step_rows(range(1, 11)))
    for step in (4, 8):
        store.add_evaluation("run-a", eval_row(step, 10.0 / step))
    store.truncate_after("run-a", 6)
    assert scalar(store, "SELECT COUNT(*) FROM train_steps") == 6
    assert scalar(store, "SELECT MAX(step) FROM train_steps") == 6
    assert scalar(store, "SELECT COUNT(*) FROM evaluations") == 1

    # The resumed process replays from step 5 (overlapping what is stored) with new losses.
    store.add_train_steps("run-a", step_rows(range(5, 11), loss_scale=20.0))
    store.add_evaluation("run-a", eval_row(8, 1.0))
    store.add_evaluation("run-a", eval_row(8, 1.25))  # the same evaluation written twice
    assert scalar(store, "SELECT COUNT(*) FROM train_steps") == 10
    assert scalar(store, "SELECT COUNT(DISTINCT step) FROM train_steps") == 10
    assert [s["loss"] for s in store.train_steps("run-a")] == [10.0 / s for s in range(1, 5)] + [
        20.0 / s for s in range(5, 11)]
    assert [(e["step"], e["val_loss"]) for e in store.evaluations("run-a")] == [(4, 2.5), (8, 1.25)]


def test_add_train_steps_validates_and_normalises_values(store: Store) -> None:
    store.create_run(run_record())
    with pytest.raises(StoreError, match=r"train_steps\.step must be an integer"):
        store.add_train_steps("run-a", [{"step": "one", "tokens_seen": 1}])
    with pytest.raises(StoreError, match=r"unknown train_steps column\(s\) los"):
        store.add_train_steps("run-a", [{"step": 1, "tokens_seen": 1, "los": 1.0}])
    with pytest.raises(StoreError, match="missing required column.*tokens_seen"):
        store.add_train_steps("run-a", [{"step": 1, "loss": 1.0}])
    with pytest.raises(StoreError, match="unknown run_id 'ghost'"):
        store.add_train_steps("ghost", step_rows(range(1, 2)))
    with pytest.raises(StoreError, match="unknown run_id 'ghost'"):
        store.add_evaluation("ghost", eval_row(1, 1.0))
    assert scalar(store, "SELECT COUNT(*) FROM train_steps") == 0

    # numpy scalars (what a trainer has in hand) become plain numbers; NaN is stored as NULL.
    store.add_train_steps("run-a", [
        {"step": np.int64(1), "tokens_seen": np.int64(4096), "loss": np.float32(0.5)},
        {"step": 2, "tokens_seen": 8192, "loss": float("nan"), "grad_norm": float("inf")}])
    steps = store.train_steps("run-a")
    assert (steps[0]["step"], steps[0]["tokens_seen"], steps[0]["loss"]) == (1, 4096, 0.5)
    assert (steps[1]["loss"], steps[1]["grad_norm"]) == (None, math.inf)
    assert scalar(store, "SELECT COUNT(*) FROM train_steps WHERE loss IS NULL") == 1


# --- statuses and atomicity ------------------------------------------------------------------------------


def test_finish_run_with_a_bad_column_changes_nothing(store_url: str) -> None:
    with open_store(store_url) as store:
        store.create_run(run_record())
        with pytest.raises(StoreError, match="bogus_column"):
            store.finish_run("run-a", "finished", {"final_val_loss": 1.0, "bogus_column": 3})
        with pytest.raises(StoreError, match="finish_run status must be one of"):
            store.finish_run("run-a", "done", {"final_val_loss": 1.0})
    with open_store(store_url) as fresh:
        run = fresh.get_run("run-a")
    assert run is not None
    assert (run["status"], run["final_val_loss"], run["finished_at"]) == ("running", None, None)


def test_finish_run_rolls_back_when_its_transaction_fails(store_url: str) -> None:
    with open_store(store_url) as store:
        store.create_run(run_record())

        def crash_after_update(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE RUNS"):
                raise RuntimeError("simulated crash after the UPDATE, before COMMIT")

        event.listen(store.engine, "after_cursor_execute", crash_after_update)
        with pytest.raises(RuntimeError, match="simulated crash"):
            store.finish_run("run-a", "finished", {"final_val_loss": 1.0, "energy_j": 5.0, "energy_source": "counter"})
        event.remove(store.engine, "after_cursor_execute", crash_after_update)
        with open_store(store_url) as fresh:  # another connection sees only committed state
            run = fresh.get_run("run-a")
        assert run is not None
        assert (run["status"], run["final_val_loss"], run["energy_j"]) == ("running", None, None)
        store.finish_run("run-a", "diverged", {"message": "loss is NaN at step 7"})
        after = store.get_run("run-a")
    assert after is not None and (after["status"], after["message"]) == ("diverged", "loss is NaN at step 7")


def test_energy_needs_a_source(store: Store) -> None:
    store.create_run(run_record())
    with pytest.raises(StoreError, match="energy_has_source"):
        store.finish_run("run-a", "finished", {"energy_j": 12.0})
    run = store.get_run("run-a")
    assert run is not None and (run["status"], run["energy_j"]) == ("running", None)


def test_status_rules(store: Store) -> None:
    with pytest.raises(StoreError, match="create_run status must be one of"):
        store.create_run(run_record(status="finished"))
    with pytest.raises(StoreError, match="missing required column.*config_hash"):
        store.create_run({k: v for k, v in run_record().items() if k != "config_hash"})
    store.create_run(run_record())
    with pytest.raises(StoreError, match="update_run cannot set status 'finished'"):
        store.update_run("run-a", status="finished")
    with pytest.raises(StoreError, match=r"unknown runs column\(s\) colour"):
        store.update_run("run-a", colour="blue")

    # Interrupted, then resumed: the first start time stays, the resume is counted.
    store.mark_running("run-a", CREATED + timedelta(minutes=1), resumed=False)
    store.finish_run("run-a", "interrupted", {"wall_seconds": 30.0})
    store.mark_running("run-a", CREATED + timedelta(minutes=5), resumed=True)
    resumed = store.get_run("run-a")
    assert resumed is not None
    assert (resumed["status"], resumed["resume_count"], resumed["finished_at"]) == ("running", 1, None)
    assert resumed["started_at"] == "2026-01-02T03:05:05+00:00"
    store.update_run("run-a", wall_seconds=45.5, tokens_seen=8192, steps=2)
    store.finish_run("run-a", "finished", {"final_val_loss": 2.0})

    with pytest.raises(StoreError, match="already ended as 'finished'"):
        store.finish_run("run-a", "failed", {})
    with pytest.raises(StoreError, match="already finished"):
        store.mark_running("run-a", CREATED, resumed=True)
    with pytest.raises(StoreError, match="'run-a' is finished"):
        store.update_run("run-a", status="running")
    # Creating it again leaves a finished run alone and says so.
    assert store.create_run(run_record(run_dir="/elsewhere", device="cuda:0")) == "finished"
    done = store.get_run("run-a")
    assert done is not None
    assert (done["status"], done["run_dir"], done["device"], done["wall_seconds"]) == ("finished", None, "cpu", 45.5)
    with pytest.raises(StoreError, match="already exists with config_hash"):
        store.create_run(run_record(config_hash="different"))
    with pytest.raises(StoreError, match="unknown run_id 'ghost'"):
        store.finish_run("ghost", "finished", {})


def test_a_failed_or_diverged_run_can_be_trained_again(store: Store) -> None:
    for run_id, status in (("run-f", "failed"), ("run-d", "diverged")):
        store.create_run(run_record(run_id))
        store.finish_run(run_id, status, {"message": "out of memory" if status == "failed" else "loss is NaN"})
    store.mark_running("run-f", CREATED, resumed=True)
    store.update_run("run-d", status="running")
    runs = {r["run_id"]: r for r in store.list_runs()}
    assert (runs["run-f"]["status"], runs["run-f"]["resume_count"], runs["run-f"]["message"]) == ("running", 1, None)
    assert (runs["run-d"]["status"], runs["run-d"]["message"]) == ("running", "loss is NaN")


def test_create_run_again_refreshes_where_it_runs_but_not_what_it_trains(store: Store) -> None:
    store.create_run(run_record(status="pending"))
    assert store.create_run(run_record(device="cuda:0", tokens_budget=5, seed=99, run_dir="/runs/a")) == "pending"
    run = store.get_run("run-a")
    assert run is not None
    assert (run["device"], run["run_dir"], run["tokens_budget"], run["seed"], run["status"]) == (
        "cuda:0", "/runs/a", 1_000_000, 1, "pending")
    store.set_run_dir("run-a", Path("/runs/b"))
    assert store.get_run("run-a")["run_dir"] == "/runs/b"  # type: ignore[index]


def test_delete_run_removes_its_rows(store: Store) -> None:
    store.create_run(run_record())
    store.create_run(run_record("run-b"))
    for run_id in ("run-a", "run-b"):
        store.add_train_steps(run_id, step_rows(range(1, 4)))
        store.add_evaluation(run_id, eval_row(3, 1.0))
    assert store.delete_run("run-a") is True
    assert store.delete_run("run-a") is False
    assert scalar(store, "SELECT COUNT(*) FROM train_steps WHERE run_id = 'run-a'") == 0
    assert scalar(store, "SELECT COUNT(*) FROM evaluations WHERE run_id = 'run-a'") == 0
    assert scalar(store, "SELECT COUNT(*) FROM train_steps WHERE run_id = 'run-b'") == 3


def test_rename_run_moves_every_row_and_its_places_in_plans(store: Store) -> None:
    store.create_run(run_record("old-id"))
    store.add_train_steps("old-id", step_rows(range(1, 4)))
    store.add_evaluation("old-id", eval_row(3, 1.0))
    store.finish_run("old-id", "finished", {"final_val_loss": 1.0})
    store.register_experiment({"name": "study", "spec_json": "{}", "spec_hash": "h", "order_design": "fixed",
                               "order_seed": 0},
                              [{"position": 0, "run_id": "old-id", "block": 0, "repetition": 0, "condition": "c",
                                "condition_json": "{}"},
                               {"position": 1, "run_id": "planned-old", "block": 0, "repetition": 0,
                                "condition": "d", "condition_json": "{}"}])
    before = store.get_run("old-id")
    assert store.rename_run("old-id", "new-id") is True
    assert store.get_run("old-id") is None
    assert {**store.get_run("new-id"), "run_id": "old-id"} == before
    assert [row["step"] for row in store.train_steps("new-id")] == [1, 2, 3]
    assert [row["val_loss"] for row in store.evaluations("new-id")] == [1.0]
    assert scalar(store, "SELECT COUNT(*) FROM train_steps WHERE run_id = 'old-id'") == 0
    # A planned run that never started is renamed in the plan alone.
    assert store.rename_run("planned-old", "planned-new") is True
    assert [(row["run_id"], row["status"]) for row in store.experiment_runs("study")] == [
        ("new-id", "finished"), ("planned-new", None)]
    assert store.rename_run("unknown", "other") is False


def test_rename_run_onto_an_existing_run_changes_nothing(store: Store) -> None:
    store.create_run(run_record("run-a"))
    store.create_run(run_record("run-b"))
    store.add_train_steps("run-a", step_rows(range(1, 3)))
    with pytest.raises(StoreError, match="'run-b' is already in .*; delete one of the two runs first"):
        store.rename_run("run-a", "run-b")
    assert len(store.train_steps("run-a")) == 2 and store.get_run("run-b") is not None


# --- export ---------------------------------------------------------------------------------------------


def _two_runs(store: Store) -> None:
    store.create_run(run_record("run-a"))
    store.create_run(run_record("run-b", created_at=CREATED + timedelta(seconds=1), git_revision=None, seed=2))
    store.add_train_steps("run-a", step_rows(range(1, 6)))
    store.add_train_steps("run-b", step_rows(range(1, 4), loss_scale=3.0))
    store.add_evaluation("run-a", eval_row(5, 0.1 + 0.2))  # 0.30000000000000004 must survive the round trip
    store.finish_run("run-a", "finished", {"final_val_loss": 0.1 + 0.2, "energy_j": 1234.5678,
                                           "energy_source": "counter", "finished_at": CREATED + timedelta(hours=2)})


def test_export_csv_round_trips_values(store: Store, tmp_path: Path) -> None:
    _two_runs(store)
    assert store.export(tmp_path / "runs.csv") == 2
    with open(tmp_path / "runs.csv", newline="") as handle:
        runs = list(csv.DictReader(handle))
    assert [r["run_id"] for r in runs] == ["run-a", "run-b"]
    a, b = runs
    assert (a["status"], a["created_at"], a["finished_at"]) == (
        "finished", "2026-01-02T03:04:05+00:00", "2026-01-02T05:04:05+00:00")
    assert (int(a["params_total"]), float(a["energy_j"])) == (4_262_144, 1234.5678)
    assert float(a["final_val_loss"]) == 0.1 + 0.2
    assert json.loads(a["config_json"]) == json.loads(run_record()["config_json"])
    assert (b["git_revision"], b["energy_j"], b["seed"], b["status"]) == ("", "", "2", "running")

    assert store.export(tmp_path / "out" / "steps.csv", table="train_steps") == 8
    with open(tmp_path / "out" / "steps.csv", newline="") as handle:
        steps = list(csv.DictReader(handle))
    expected = [("run-a", r) for r in step_rows(range(1, 6))] + [("run-b", r) for r in step_rows(range(1, 4), 3.0)]
    assert len(steps) == len(expected)
    for got, (run_id, want) in zip(steps, expected, strict=True):
        assert got["run_id"] == run_id
        assert (int(got["step"]), int(got["tokens_seen"])) == (want["step"], want["tokens_seen"])
        assert (float(got["loss"]), float(got["lr"]), float(got["grad_norm"])) == (
            want["loss"], want["lr"], want["grad_norm"])

    assert store.export(tmp_path / "evals.txt", table="evaluations", fmt="csv") == 1
    with open(tmp_path / "evals.txt", newline="") as handle:
        (evaluation,) = list(csv.DictReader(handle))
    assert float(evaluation["val_loss"]) == 0.1 + 0.2 and int(evaluation["tokens_seen"]) == 5 * 4096

    assert store.export(tmp_path / "power.csv", table="power_samples") == 0
    assert (tmp_path / "power.csv").read_text().strip() == "id,run_id,device,t_seconds,power_w,energy_j"
    assert not list(tmp_path.rglob("*.partial"))


def test_export_parquet_keeps_types_and_values(store: Store, tmp_path: Path) -> None:
    _two_runs(store)
    assert store.export(tmp_path / "runs.parquet") == 2
    table = pq.read_table(tmp_path / "runs.parquet")
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("params_total").type == pa.int64()
    assert table.schema.field("energy_j").type == pa.float64()
    rows = table.to_pylist()
    assert [r["run_id"] for r in rows] == ["run-a", "run-b"]
    assert rows[0]["created_at"] == CREATED and rows[1]["created_at"] == CREATED + timedelta(seconds=1)
    assert (rows[0]["energy_j"], rows[0]["final_val_loss"], rows[1]["energy_j"]) == (1234.5678, 0.1 + 0.2, None)

    assert store.export(tmp_path / "steps.parquet", table="train_steps") == 8
    steps = pq.read_table(tmp_path / "steps.parquet").to_pylist()
    assert steps[:5] == [row | {"run_id": "run-a"} for row in step_rows(range(1, 6))]
    assert store.export(tmp_path / "power.parquet", table="power_samples") == 0
    empty = pq.read_table(tmp_path / "power.parquet")
    assert empty.num_rows == 0 and empty.schema.field("power_w").type == pa.float64()


def test_export_rejects_unknown_tables_and_formats(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "exports"
    with pytest.raises(StoreError, match="export table: unknown table 'steps'; choose one of: runs, evaluations"):
        store.export(out / "x.csv", table="steps")
    with pytest.raises(StoreError, match="export format: .*'x.xlsx'"):
        store.export(out / "x.xlsx")
    with pytest.raises(StoreError, match="export format: cannot export as 'json'"):
        store.export(out / "x.csv", fmt="json")
    assert not out.exists()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="export path: cannot write"):
        store.export(tmp_path / "a-file" / "x.csv")


# --- several processes ----------------------------------------------------------------------------------

WRITER = """
import sys
from datetime import datetime, timezone
from wattscale.store import open_store

url, run_id, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open_store(url) as store:
    store.create_run({"run_id": run_id, "preset": "llama-4m", "config_json": "{}", "config_hash": run_id,
                      "seed": 0, "tokens_budget": n_steps * 64})
    store.mark_running(run_id, datetime.now(timezone.utc), resumed=False)
    for start in range(0, n_steps, 5):
        store.add_train_steps(run_id, [{"step": s, "tokens_seen": s * 64, "loss": 1.0 / (s + 1)}
                                       for s in range(start, start + 5)])
        if start % 25 == 0:
            store.add_evaluation(run_id, {"step": start, "tokens_seen": start * 64, "val_loss": 1.0})
            store.update_run(run_id, steps=start + 5, tokens_seen=(start + 5) * 64)
            store.list_runs()
    store.finish_run(run_id, "finished", {"steps": n_steps, "tokens_seen": n_steps * 64})
"""


def test_several_processes_write_one_store_at_once(store_url: str) -> None:
    n_steps = 150
    src = str(Path(wattscale.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    # The children also race to create the tables of a store that does not exist yet.
    children = [
        subprocess.Popen([sys.executable, "-c", WRITER, store_url, f"child-{i}", str(n_steps)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    try:
        subprocess.run([sys.executable, "-c", WRITER, store_url, "parent", str(n_steps)], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"writer failed: {exc.stderr}")
    failures = []
    for child in children:
        _, stderr = child.communicate(timeout=120)
        if child.returncode != 0:
            failures.append(stderr)
    assert not failures, failures[0]
    with open_store(store_url) as store:
        runs = store.list_runs()
        assert sorted(r["run_id"] for r in runs) == ["child-0", "child-1", "child-2", "parent"]
        assert {r["status"] for r in runs} == {"finished"}
        assert scalar(store, "SELECT COUNT(*) FROM train_steps") == 4 * n_steps
        assert scalar(store, "SELECT COUNT(*) FROM evaluations") == 4 * len(range(0, n_steps, 25))


def test_copy_run_from_replaces_one_runs_rows_in_one_go(store: Store, tmp_path: Path) -> None:
    """What the Ray executor does with a per-run SQLite store: its run replaces that run here, nothing else."""

    def rows(source: Store, run_id: str) -> dict[str, Any]:
        without_id = [
            [{k: v for k, v in row.items() if k != "id"} for row in read(run_id)]
            for read in (source.train_steps, source.evaluations, source.power_samples, source.energy_measurements)]
        return {"run": source.get_run(run_id), "rows": without_id}

    power = [{"device": "cpu", "t_seconds": 0.1 * i, "power_w": 10.0 + i, "energy_j": None} for i in range(5)]
    energy = [{"device": "cpu", "scope": scope, "start_tokens": 0, "end_tokens": 20_480, "start_seconds": 0.0,
               "end_seconds": 2.5, "energy_j": 25.0, "source": "integrated", "complete": True,
               "details_json": None} for scope in ("idle", "interval", "run")]
    with open_store(tmp_path / "worker-store.db") as worker:
        worker.create_run(run_record("run-a", run_dir="/runs/run-a"))
        worker.mark_running("run-a", CREATED, resumed=True)
        worker.add_train_steps("run-a", step_rows(range(1, 6)))
        worker.add_evaluation("run-a", eval_row(5, 2.0))
        worker.add_power_samples("run-a", power)
        worker.add_energy_measurements("run-a", energy)
        worker.finish_run("run-a", "finished", {"tokens_seen": 20_480, "steps": 5, "final_val_loss": 2.0,
                                                "energy_j": 25.0, "energy_source": "integrated"})
        # Here run-a has older rows (more steps than the worker kept) and run-b must not change.
        store.create_run(run_record("run-a"))
        store.add_train_steps("run-a", step_rows(range(1, 9), loss_scale=99.0))
        store.add_evaluation("run-a", eval_row(8, 9.0))
        store.create_run(run_record("run-b"))
        store.add_train_steps("run-b", step_rows(range(1, 4)))
        run_b = rows(store, "run-b")

        store.copy_run_from(worker, "run-a")
        assert rows(store, "run-a") == rows(worker, "run-a")
        assert store.get_run("run-a")["resume_count"] == 1 and store.get_run("run-a")["status"] == "finished"
        store.copy_run_from(worker, "run-a")  # idempotent
        assert rows(store, "run-a") == rows(worker, "run-a")
        assert rows(store, "run-b") == run_b
        counts = [scalar(store, f"SELECT COUNT(*) FROM {table} WHERE run_id = 'run-a'")
                  for table in ("runs", "train_steps", "evaluations", "power_samples", "energy_measurements")]
        assert counts == [1, 5, 1, 5, 3]

        with open_store(tmp_path / "empty.db") as empty, pytest.raises(StoreError, match="unknown run_id 'run-b'"):
            worker.copy_run_from(empty, "run-b")
        worker.copy_run_from(store, "run-b")  # and back, across backends
        assert rows(worker, "run-b") == run_b


def test_delete_runs_removes_every_row_of_the_runs_in_one_transaction(store: Store) -> None:
    from wattscale.store_schema import EXPORT_TABLES

    for run_id in ("run-a", "run-b", "run-c"):
        store.create_run(run_record(run_id))
        store.add_train_steps(run_id, [{"step": 0, "tokens_seen": 64, "loss": 5.0}])
        store.add_evaluation(run_id, {"step": 0, "tokens_seen": 64, "val_loss": 5.0})
        store.add_power_samples(run_id, [{"device": "cpu", "t_seconds": 0.1, "power_w": 9.0}])
        store.add_energy_measurements(run_id, [{"device": "cpu", "scope": "run", "start_seconds": 0.0,
                                                "end_seconds": 1.0, "energy_j": 9.0, "source": "counter"}])
    with pytest.raises(StoreError, match="unknown run_id 'nope'"):
        store.delete_runs(["run-a", "nope"])
    assert store.get_run("run-a") is not None and store.evaluations("run-a"), "an unknown id deletes nothing"
    deleted = store.delete_runs(["run-a", "run-b", "run-a"])
    assert deleted == {"evaluations": 2, "train_steps": 2, "power_samples": 2, "energy_measurements": 2, "runs": 2}
    assert set(deleted) == {name for name in EXPORT_TABLES if name not in ("experiments", "experiment_runs",
                                                                          "calibrations")}
    for run_id in ("run-a", "run-b"):
        assert store.get_run(run_id) is None and not store.evaluations(run_id) and not store.train_steps(run_id)
        assert not store.power_samples(run_id) and not store.energy_measurements(run_id)
    assert store.get_run("run-c") is not None and len(store.power_samples("run-c")) == 1


# --- calibrations (schema 4) ------------------------------------------------------------------------------------


def calibration_record(preset: str = "llama-tiny", **overrides: Any) -> dict[str, Any]:
    """A `wattscale calibrate` row: 3 repeats of llama-tiny at 4 x 32 tokens on a CPU."""
    record: dict[str, Any] = {
        "hostname": "node-1", "cpu_model": "Test CPU", "device_type": "cpu", "device_name": "Test CPU",
        "threads": 2, "torch_version": "2.13.0", "wattscale_version": "0.1", "preset": preset, "precision": "fp32",
        "batch_size": 4, "seq_len": 32, "params_total": 125_248, "flops_per_token": 6.0e5, "steps_per_repeat": 5,
        "warmup_steps": 1, "repeats": 3, "tokens_per_second": 10_000.0, "tokens_per_second_min": 9_000.0,
        "tokens_per_second_max": 10_500.0, "tokens_per_second_json": "[9000.0, 10000.0, 10500.0]",
        "flops_per_second": 6.0e9, "warmup_step_seconds": 0.3, "eval_tokens_per_second": 30_000.0,
        "checkpoint_seconds": 0.01, "checkpoint_bytes": 1_500_000, "power_w": 20.0,
        "power_w_json": json.dumps({"cpu_estimate": 20.0}), "eval_power_w": 19.0, "energy_source": "estimated",
        "measured_at": CREATED}
    record.update(overrides)
    return record


def test_calibrations_are_added_listed_filtered_and_deleted(store: Store) -> None:
    first = store.add_calibration(calibration_record())
    second = store.add_calibration(calibration_record("llama-1m", precision="bf16",
                                                      measured_at=CREATED + timedelta(hours=1)))
    assert scalar(store, "SELECT COUNT(*) FROM calibrations") == 2
    assert scalar(store, "SELECT tokens_per_second FROM calibrations WHERE calibration_id = :i", i=first) == 10_000.0
    rows = store.list_calibrations()
    assert [r["calibration_id"] for r in rows] == [second, first]  # newest first
    assert rows[1]["measured_at"] == CREATED.isoformat() and rows[1]["checkpoint_bytes"] == 1_500_000
    assert [r["preset"] for r in store.list_calibrations(device_type="cpu", precision="fp32")] == ["llama-tiny"]
    assert store.list_calibrations(device_type="cuda") == []
    assert store.delete_calibrations([first]) == 1 and [r["calibration_id"] for r in store.list_calibrations()] == [
        second]
    assert store.delete_calibrations() == 1 and store.list_calibrations() == []


def test_a_calibration_with_power_needs_its_source_and_its_required_fields(store: Store) -> None:
    with pytest.raises(StoreError, match="missing required column.*tokens_per_second"):
        store.add_calibration(calibration_record(tokens_per_second=None))
    with pytest.raises(StoreError, match="unknown calibrations column"):
        store.add_calibration(calibration_record(power_kw=0.02))
    with pytest.raises(StoreError, match="add_calibration failed"):
        store.add_calibration(calibration_record(energy_source=None))
    with pytest.raises(StoreError, match="add_calibration failed"):
        store.add_calibration(calibration_record(energy_source="guessed"))
    assert store.list_calibrations() == []


def test_a_schema_3_store_gains_the_calibrations_table(store_url: str) -> None:
    # Schema 3 is schema 4 without the calibrations table: make one, with a run in it.
    with open_store(store_url) as store:
        store.create_run(run_record())
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE calibrations"))
            conn.execute(text("UPDATE schema_version SET version = 3"))
    with open_store(store_url) as store:
        assert scalar(store, "SELECT version FROM schema_version") == SCHEMA_VERSION == 4
        assert store.get_run("run-a")["preset"] == "llama-4m"
        assert store.list_calibrations() == []
        calibration_id = store.add_calibration(calibration_record())
        assert [r["calibration_id"] for r in store.list_calibrations()] == [calibration_id]
    with open_store(store_url) as again:  # opening a migrated store changes nothing
        assert len(again.list_calibrations()) == 1


def test_export_writes_the_calibrations_table(store: Store, tmp_path: Path) -> None:
    store.add_calibration(calibration_record())
    assert store.export(tmp_path / "cal.csv", table="calibrations") == 1
    with open(tmp_path / "cal.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["preset"] == "llama-tiny" and float(row["tokens_per_second"]) == 10_000.0
