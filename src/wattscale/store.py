"""The results database: every run, its training steps, evaluations and energy, in SQL.

``open_store("./wattscale.db")`` opens (and creates) a SQLite file; ``open_store(
"postgresql://user@host:5432/wattscale")`` a PostgreSQL database. Each ``Store`` method is one short
transaction, so several training processes can write one store at the same time: SQLite runs in
WAL mode with a 30 s busy timeout and takes the write lock at the start of every writing
transaction (``BEGIN IMMEDIATE``), which is what keeps concurrent writers from failing with
"database is locked". The tables and their units are in ``store_schema.py``.

Values read back are plain Python: datetimes as ISO-8601 UTC strings, NaN losses as None.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Table,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.schema import CreateTable

from wattscale import __version__
from wattscale.errors import StoreError, StoreFileGone
from wattscale.interrupts import deferred_interrupts
from wattscale.store_schema import (
    END_STATUSES,
    EXPORT_TABLES,
    FINAL_FIELDS,
    FINAL_STATUSES,
    OPEN_STATUSES,
    RUN_KINDS,
    RUN_RECREATE_FIELDS,
    RUN_REQUIRED,
    RUN_REQUIRED_TRAIN,
    SCHEMA_VERSION,
    arrow_schema,
    calibrations,
    coerce_row,
    coerce_value,
    columns_of,
    energy_measurements,
    evaluations,
    experiment_runs,
    experiments,
    metadata,
    power_samples,
    runs,
    schema_version,
    train_steps,
)

STORE_OPTION = "--store / WATTSCALE_STORE"
_URL_FORMS = "give a file path such as ./wattscale.db or a URL such as postgresql://user@host:5432/wattscale"
SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 10
_SCHEMA_LOCK_KEY = 0x7761747473  # pg advisory lock id ("watts"): serialises concurrent create_all
_EXPORT_CHUNK_ROWS = 10_000

_RUN_COLUMNS = columns_of(runs)
_STEP_COLUMNS = columns_of(train_steps, without=("run_id",))
_EVAL_COLUMNS = columns_of(evaluations, without=("id", "run_id"))
_POWER_COLUMNS = columns_of(power_samples, without=("id", "run_id"))
_ENERGY_COLUMNS = columns_of(energy_measurements, without=("id", "run_id"))
_EXPERIMENT_COLUMNS = columns_of(experiments)
_EXPERIMENT_RUN_COLUMNS = columns_of(experiment_runs)
_CALIBRATION_COLUMNS = columns_of(calibrations)
_CALIBRATION_REQUIRED = tuple(c.name for c in calibrations.columns if not c.nullable and c.name != "calibration_id")
_T = TypeVar("_T")
_PLAN_FIELDS = ("position", "block", "repetition", "condition", "condition_json")


def open_store(url: str | os.PathLike[str], create: bool = True) -> Store:
    """Open the results database at a file path (SQLite) or SQLAlchemy URL; create its tables.

    ``postgresql://`` URLs use the psycopg 3 driver. With ``create=False`` a missing database or
    missing tables raise StoreError instead of being created.
    """
    sa_url = _resolve_url(url, create)
    display = sa_url.render_as_string(hide_password=True)
    try:
        engine = _make_engine(sa_url)
    except (ImportError, NoSuchModuleError) as exc:
        raise StoreError(
            f"{STORE_OPTION}: no database driver for {display} ({_first_line(exc)}); for PostgreSQL "
            "install psycopg 3 with: pip install 'wattscale[postgres]'"
        ) from None
    store = Store(engine, sa_url.render_as_string(hide_password=False), display)
    try:
        with deferred_interrupts():  # creating or migrating the tables is not cut in two by a Ctrl-C
            _retry_while_busy(lambda: _prepare_schema(store, create))
        store.remember_file()
    except DBAPIError as exc:
        store.close()
        fix = (
            "check that the server is running and the URL's user, host, port and database are right"
            if engine.dialect.name == "postgresql"
            else "check that the path is a wattscale SQLite database, in a writable directory, not kept locked"
        )
        raise StoreError(f"{STORE_OPTION}: cannot open {display}: {_first_line(exc.orig)}; {fix}") from None
    except BaseException:
        store.close()
        raise
    return store


def _resolve_url(target: str | os.PathLike[str], create: bool) -> URL:
    text = os.fspath(target).strip()
    if not text:
        raise StoreError(f"{STORE_OPTION}: empty; {_URL_FORMS}")
    if "://" not in text:
        return _sqlite_file_url(URL.create("sqlite"), Path(text), create)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        shown = re.sub(r"://[^/@]*@", "://***@", text)  # never echo a password
        raise StoreError(f"{STORE_OPTION}: cannot parse {shown!r} as a database URL; {_URL_FORMS}") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        driver = "psycopg" if "+" not in url.drivername else url.get_driver_name()
        return url.set(drivername=f"postgresql+{driver}")
    if backend == "sqlite":
        if url.get_driver_name() != "pysqlite":
            raise StoreError(f"{STORE_OPTION}: unsupported SQLite driver in {text!r}; use sqlite:///path/to.db")
        if url.database in (None, "", ":memory:"):
            return url  # an in-memory database, for tests and throwaway use
        return _sqlite_file_url(url, Path(url.database), create)
    raise StoreError(
        f"{STORE_OPTION}: unsupported database {backend!r} in {url.render_as_string(hide_password=True)}; "
        "wattscale stores results in SQLite (a file path) or PostgreSQL (postgresql://user@host:5432/db)"
    )


def _sqlite_file_url(url: URL, path: Path, create: bool) -> URL:
    path = path.expanduser().absolute()
    if path.is_dir():
        raise StoreError(f"{STORE_OPTION}: {path} is a directory; give a database file such as {path}/wattscale.db")
    if not path.exists():
        if not create:
            raise StoreError(
                f"{STORE_OPTION}: no results database at {path}; check the path (runs create it when they start)"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{STORE_OPTION}: cannot create directory {path.parent} ({exc.strerror}); choose a writable path"
            ) from None
    return url.set(database=str(path))


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "postgresql":
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
        # pre_ping: a training run may leave its pooled connection idle for longer than a server keeps it.
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 module (it never begins before SELECT or DDL) so that
    # _sqlite_on_begin decides what kind of transaction each method gets.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    # Switching a new file to WAL needs an exclusive lock and can answer SQLITE_BUSY at once, without
    # the busy handler, while another process creates the same file: retry it up to the busy timeout.
    _retry_while_busy(lambda: cursor.execute("PRAGMA journal_mode = WAL"))
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _is_busy(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(orig, sqlite3.OperationalError) and ("locked" in str(orig) or "busy" in str(orig))


def _retry_while_busy(action: Callable[[], _T], timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> _T:
    """Run `action`, again after a short random pause while SQLite answers "database is locked", up to
    `timeout_s`. For the steps that SQLite's busy timeout does not cover: opening and creating a new file."""
    deadline = time.monotonic() + timeout_s
    pause_s = 0.005
    while True:
        try:
            return action()
        except (sqlite3.OperationalError, DBAPIError) as exc:
            if not _is_busy(exc) or time.monotonic() + pause_s > deadline:
                raise
        time.sleep(pause_s * (0.5 + random.random()))
        pause_s = min(0.2, pause_s * 2)


def _sqlite_on_begin(connection: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    # process committed in between (the busy timeout does not apply); writers take the lock up front.
    write = connection.get_execution_options().get("wattscale_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _prepare_schema(store: Store, create: bool) -> None:
    missing = f"{STORE_OPTION}: {store.display_url} has no wattscale tables; check the URL"
    engine = store.write_engine if create else store.engine
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        existing = set(inspect(conn).get_table_names())
        if "schema_version" not in existing:
            foreign = sorted(existing & set(metadata.tables))
            if foreign:
                raise StoreError(
                    f"{STORE_OPTION}: {store.display_url} already has tables ({', '.join(foreign)}) that "
                    "wattscale did not create; use a separate database or file"
                )
            if not create:
                raise StoreError(missing)
            metadata.create_all(conn)
            conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION, wattscale_version=__version__))
            return
        version = conn.execute(select(schema_version.c.version).where(schema_version.c.id == 1)).scalar()
    if version is None:
        raise StoreError(missing)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{STORE_OPTION}: {store.display_url} has schema version {version}, newer than this wattscale "
            f"({__version__}, schema {SCHEMA_VERSION}); upgrade wattscale: pip install -U wattscale"
        )
    if version < SCHEMA_VERSION:
        _migrate(store, version)
    with store.engine.connect() as conn:
        _check_tables(conn, store.display_url)


def _check_tables(conn: Connection, display_url: str) -> None:
    """Refuse a database that lacks a wattscale table or column, before anything is written to it."""
    inspector = inspect(conn)
    existing = set(inspector.get_table_names())
    missing = []
    for table in metadata.sorted_tables:
        if table.name not in existing:
            missing.append(f"table {table.name}")
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [f"column {table.name}.{c.name}" for c in table.columns if c.name not in present]
    if missing:
        raise StoreError(
            f"{STORE_OPTION}: {display_url} is missing {', '.join(missing)} (schema {SCHEMA_VERSION}); the "
            "database is damaged or was edited by hand: restore it from a backup, or give another --store")


def _migrate_1_to_2(conn: Connection) -> None:
    """Schema 2: runs gain data_tokens, epochs and repeat; the experiments and experiment_runs tables."""
    for column in (runs.c.data_tokens, runs.c.epochs, runs.c.repeat):
        _add_column(conn, column)
    metadata.create_all(conn, tables=[experiments, experiment_runs])


def _migrate_2_to_3(conn: Connection) -> None:
    """Schema 3: runs of kind "measured", phase energy and components.

    runs gain kind, command_line, train_energy_j/train_seconds/train_tokens and energy_json; preset, seed
    and tokens_budget become optional (a measured run has none); energy_source may be "mixed".
    energy_measurements gain component, phase and phase_seconds, and the scopes "phase" and "window".
    Stored FLOPs per token are recomputed with the output-head term (see wattscale.flops).
    """
    if conn.dialect.name == "sqlite":
        # SQLite cannot change a column's NOT NULL or a CHECK: rebuild the two tables (foreign keys are off
        # for the whole migration, see _migrate).
        for table in (runs, energy_measurements):
            _rebuild_sqlite_table(conn, table)
    else:
        for name in ("preset", "seed", "tokens_budget"):
            conn.exec_driver_sql(f'ALTER TABLE runs ALTER COLUMN "{name}" DROP NOT NULL')
        for column in (runs.c.kind, runs.c.command_line, runs.c.train_energy_j, runs.c.train_seconds,
                       runs.c.train_tokens, runs.c.energy_json, energy_measurements.c.component,
                       energy_measurements.c.phase, energy_measurements.c.phase_seconds):
            _add_column(conn, column)
        for table, name in ((runs, "energy_source"), (energy_measurements, "scope")):
            constraint = f"ck_{table.name}_{name}"
            conn.exec_driver_sql(f'ALTER TABLE {table.name} DROP CONSTRAINT "{constraint}"')
        for table, name in ((runs, "energy_source"), (runs, "kind"), (energy_measurements, "scope")):
            check = next(c for c in table.constraints if c.name == f"ck_{table.name}_{name}")
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD CONSTRAINT "{check.name}" CHECK ({check.sqltext})')
    _recount_flops(conn)


def _migrate_3_to_4(conn: Connection) -> None:
    """Schema 4: the calibrations table (`wattscale calibrate`); nothing else changes."""
    metadata.create_all(conn, tables=[calibrations])


def _add_column(conn: Connection, column: Any) -> None:
    coltype = column.type.compile(dialect=conn.dialect)
    default = f" DEFAULT '{column.server_default.arg}'" if column.server_default is not None else ""
    null = "" if column.nullable else " NOT NULL"
    conn.exec_driver_sql(f'ALTER TABLE {column.table.name} ADD COLUMN "{column.name}" {coltype}{default}{null}')


def _rebuild_sqlite_table(conn: Connection, table: Table) -> None:
    """Replace a SQLite table by one with its current definition, keeping its rows (the columns both have)."""
    old_columns = {row[1] for row in conn.exec_driver_sql(f'PRAGMA table_info("{table.name}")')}
    columns = ", ".join(f'"{c.name}"' for c in table.columns if c.name in old_columns)
    ddl = str(CreateTable(table).compile(dialect=conn.dialect)).strip()
    temporary = f"{table.name}__new"
    conn.exec_driver_sql(ddl.replace(f"CREATE TABLE {table.name} (", f"CREATE TABLE {temporary} (", 1))
    conn.exec_driver_sql(f"INSERT INTO {temporary} ({columns}) SELECT {columns} FROM {table.name}")
    conn.exec_driver_sql(f"DROP TABLE {table.name}")
    conn.exec_driver_sql(f"ALTER TABLE {temporary} RENAME TO {table.name}")
    for index in table.indexes:
        index.create(conn)


def _recount_flops(conn: Connection) -> None:
    """Stored train FLOPs per token with the output-head matmul (schema 2 runs left it out)."""
    from wattscale.flops import flops_per_token_from_config, stored_seq_len

    rows = conn.execute(select(runs.c.run_id, runs.c.config_json).where(runs.c.flops_per_token.is_not(None))).all()
    for run_id, config_json in rows:
        try:
            config = json.loads(config_json)
            flops = flops_per_token_from_config(config["model"], stored_seq_len(config))
        except (ValueError, KeyError, TypeError):
            continue  # not a wattscale-trained config: its figure stays as stored
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(flops_per_token=flops))


# version -> the step that brings a database at that version to the next one.
_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}


def _migrate(store: Store, version: int) -> None:
    """Bring an older database to SCHEMA_VERSION in one transaction (all steps or none)."""
    sqlite = store.backend == "sqlite"
    with store.write_engine.connect() as conn:
        if sqlite:
            # Outside any transaction (a PRAGMA inside one is ignored): rebuilding a parent table must not
            # cascade into its children. Checked again below before the commit.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                # Re-read under the lock: another process may have migrated it meanwhile.
                version = conn.execute(select(schema_version.c.version).where(schema_version.c.id == 1)).scalar()
                while version < SCHEMA_VERSION:
                    _MIGRATIONS[version](conn)
                    version += 1
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise StoreError(f"{STORE_OPTION}: migrating {store.display_url} broke a foreign key; "
                                     "the database was left as it was")
                conn.execute(update(schema_version).where(schema_version.c.id == 1).values(
                    version=SCHEMA_VERSION, wattscale_version=__version__))
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")


class Store:
    """A results database. Each method runs in one short transaction of its own.

    Not safe to share across ``fork``: open a store in each process instead.
    """

    def __init__(self, engine: Engine, url: str, display_url: str) -> None:
        self.engine = engine
        self.write_engine = engine.execution_options(wattscale_write=True)
        self.url = url  # the full SQLAlchemy URL (password included), to reopen the store elsewhere
        self.display_url = display_url  # the URL with the password masked, for messages
        self.backend = engine.dialect.name  # "sqlite" | "postgresql"
        database = engine.url.database if self.backend == "sqlite" else None
        # A SQLite file's identity (st_dev, st_ino) as opened, checked before every write (`check_file`).
        self.file_path: Path | None = Path(database) if database not in (None, "", ":memory:") else None
        self._file_id: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool; the store cannot be used afterwards."""
        self.engine.dispose()

    def remember_file(self) -> None:
        """Note which file a SQLite store is (device and inode), so that `check_file` sees it deleted or replaced."""
        if self.file_path is not None:
            info = os.stat(self.file_path)
            self._file_id = (info.st_dev, info.st_ino)

    def check_file(self) -> None:
        """Raise StoreFileGone if the SQLite file opened is no longer at its path (deleted, moved or replaced).

        Writes through a connection opened before then would go to a file nobody can read any more (or
        to a new empty one), and be lost. One os.stat; nothing to check for PostgreSQL or in memory.
        """
        if self._file_id is None:
            return
        try:
            info = os.stat(self.file_path)
        except FileNotFoundError:
            what = "was deleted"
        else:
            if (info.st_dev, info.st_ino) == self._file_id:
                return
            what = "was replaced by another file"
        raise StoreFileGone(f"store {self.file_path}: the database file {what} while this process was writing "
                            "to it; nothing more was written")

    @contextmanager
    def _tx(self, what: str, *, write: bool = True) -> Iterator[Connection]:
        engine = self.write_engine if write else self.engine
        # A Ctrl-C inside is raised when the transaction has ended: raised mid-way, it could leave the write
        # transaction open, holding the write lock, while the run records itself interrupted (wattscale.interrupts).
        with deferred_interrupts():
            if write:
                self.check_file()
            try:
                with engine.begin() as conn:
                    yield conn
                    if write:
                        self.check_file()  # before the commit: a write that would be lost is rolled back
            except (OperationalError, IntegrityError, DataError) as exc:
                raise StoreError(f"store {self.display_url}: {what} failed: {_first_line(exc.orig)}") from exc

    def _insert(self, table: Table) -> Any:
        return postgresql_insert(table) if self.backend == "postgresql" else sqlite_insert(table)

    @staticmethod
    def _run_row(conn: Connection, run_id: str, *columns: Any, lock: bool = False) -> Row[Any]:
        stmt = select(runs.c.run_id, *columns).where(runs.c.run_id == run_id)
        row = conn.execute(stmt.with_for_update() if lock else stmt).first()
        if row is None:
            raise StoreError(f"store: unknown run_id {run_id!r}; create_run first (or check the id)")
        return row

    def create_run(self, record: Mapping[str, Any] | Any, *, only_new: bool = False) -> str | None:
        """Insert a run (a mapping or dataclass of ``runs`` columns); return None, or the status it already had.

        An existing run keeps its config and status; where and with what it runs (device,
        versions, run_dir, ...) is refreshed unless it is finished. A different config_hash under
        the same run_id raises StoreError. ``status`` defaults to 'running', ``created_at`` to now.
        With ``only_new`` an existing run is left exactly as it is (a claim: the caller lost a race).
        """
        raw = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)
        raw.setdefault("status", "running")
        raw.setdefault("created_at", _now())
        raw.setdefault("wattscale_version", __version__)
        raw.setdefault("kind", "train")
        required = RUN_REQUIRED + (RUN_REQUIRED_TRAIN if raw["kind"] == "train" else ())
        values = coerce_row(runs, raw, _RUN_COLUMNS, required=required)
        if values["kind"] not in RUN_KINDS:
            raise StoreError(f"store: runs.kind must be one of {', '.join(RUN_KINDS)}, got {values['kind']!r}")
        if values["status"] not in OPEN_STATUSES:
            raise StoreError(
                f"store: create_run status must be one of {', '.join(OPEN_STATUSES)}, got "
                f"{values['status']!r}; runs end through finish_run"
            )
        run_id = values["run_id"]
        with self._tx(f"create_run({run_id!r})") as conn:
            insert = self._insert(runs).values(**values).on_conflict_do_nothing(index_elements=["run_id"])
            # INSERT rowcounts are only kept on request (psycopg would report -1 otherwise).
            if conn.execute(insert.execution_options(preserve_rowcount=True)).rowcount == 1:
                return None
            existing = self._run_row(conn, run_id, runs.c.status, runs.c.config_hash, lock=True)
            if only_new:
                return str(existing.status)
            if existing.config_hash != values["config_hash"]:
                raise StoreError(
                    f"store: run {run_id!r} already exists with config_hash {existing.config_hash}, not "
                    f"{values['config_hash']}; use a new run id or delete the old run"
                )
            refresh = {name: values[name] for name in RUN_RECREATE_FIELDS if name in values}
            if existing.status != "finished" and refresh:
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(refresh))
            return str(existing.status)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's record (see ``list_runs``), or None if there is no such run."""
        with self._tx("get_run", write=False) as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
        return None if row is None else _run_dict(row)

    def mark_running(self, run_id: str, started_at: datetime, resumed: bool) -> None:
        """Set a run 'running'; keep its first started_at; count a resume. A finished run raises StoreError."""
        started = coerce_value(runs, "started_at", started_at)
        with self._tx(f"mark_running({run_id!r})") as conn:
            current = self._run_row(conn, run_id, runs.c.status, runs.c.started_at, lock=True)
            if current.status == "finished":
                raise StoreError(
                    f"store: run {run_id!r} already finished; delete it or use a new run id to train again"
                )
            values: dict[str, Any] = {"status": "running", "finished_at": None, "message": None}
            if current.started_at is None:
                values["started_at"] = started
            if resumed:
                values["resume_count"] = runs.c.resume_count + 1
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(values))

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some ``runs`` columns; unknown names raise StoreError.

        Statuses finished/diverged/failed are set only by finish_run, and a finished run keeps its status.
        """
        values = coerce_row(runs, fields, columns_of(runs, without=("run_id",)))
        if not values:
            return
        status = values.get("status")
        if status is not None and status not in OPEN_STATUSES:
            raise StoreError(
                f"store: update_run cannot set status {status!r}; runs end through finish_run, and "
                f"update_run sets only {', '.join(OPEN_STATUSES)}"
            )
        with self._tx(f"update_run({run_id!r})") as conn:
            current = self._run_row(conn, run_id, runs.c.status, lock=True)
            if status is not None and current.status == "finished" and status != "finished":
                raise StoreError(f"store: run {run_id!r} is finished; delete it or use a new run id to train again")
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(values))

    def set_run_dir(self, run_id: str, run_dir: str | os.PathLike[str]) -> None:
        """Record the directory that holds the run's checkpoints and resolved config."""
        self.update_run(run_id, run_dir=os.fspath(run_dir))

    def finish_run(self, run_id: str, status: str, final: Mapping[str, Any]) -> None:
        """End a run: status and final fields in ONE transaction (a crash leaves the run as it was).

        ``status`` is one of finished, diverged, failed, interrupted; ``final`` holds any of
        FINAL_FIELDS (finished_at defaults to now). energy_j needs an energy_source.
        """
        if status not in END_STATUSES:
            raise StoreError(f"store: finish_run status must be one of {', '.join(END_STATUSES)}, got {status!r}")
        raw = dict(final)
        raw.setdefault("finished_at", _now())
        values = coerce_row(runs, raw, FINAL_FIELDS)
        values["status"] = status
        with self._tx(f"finish_run({run_id!r})") as conn:
            current = self._run_row(conn, run_id, runs.c.status, lock=True)
            if current.status in FINAL_STATUSES:
                raise StoreError(
                    f"store: run {run_id!r} already ended as {current.status!r}; mark_running it to train again"
                )
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(values))

    def delete_run(self, run_id: str) -> bool:
        """Delete a run with its steps, evaluations, power samples and energy; True if it existed."""
        with self._tx(f"delete_run({run_id!r})") as conn:
            return conn.execute(delete(runs).where(runs.c.run_id == run_id)).rowcount > 0

    def delete_runs(self, run_ids: Iterable[str]) -> dict[str, int]:
        """Delete runs with every row of theirs (steps, evaluations, power samples, energy) in one transaction.

        Returns the number of rows deleted per table. An unknown run id raises StoreError and deletes
        nothing. Experiment plans (``experiment_runs``) keep the run: re-running the experiment trains it again.
        """
        ids = list(dict.fromkeys(run_ids))
        deleted: dict[str, int] = {}
        with self._tx(f"delete_runs({len(ids)} runs)") as conn:
            for run_id in ids:
                self._run_row(conn, run_id, lock=True)
            # Children first, counted one by one (the cascade would delete them too, but uncounted).
            for table in (*reversed(_run_owned_tables()), runs):
                deleted[table.name] = conn.execute(delete(table).where(table.c.run_id.in_(ids))).rowcount
        return deleted

    def rename_run(self, old_id: str, new_id: str) -> bool:
        """Give a run, with every row of its own and its places in experiment plans, a new id; one transaction.

        Returns False (and changes nothing) when ``old_id`` is in neither ``runs`` nor ``experiment_runs``.
        A ``new_id`` that already has a run raises StoreError and changes nothing. wattscale uses it for runs
        stored under the ids of earlier versions (wattscale.config.earlier_run_ids).
        """
        with self._tx(f"rename_run({old_id!r} -> {new_id!r})") as conn:
            if conn.execute(select(runs.c.run_id).where(runs.c.run_id == new_id)).first() is not None:
                raise StoreError(f"store: cannot rename run {old_id!r} to {new_id!r}: {new_id!r} is already in "
                                 f"{self.display_url}; delete one of the two runs first")
            record = conn.execute(select(runs).where(runs.c.run_id == old_id).with_for_update()).first()
            planned = conn.execute(update(experiment_runs).where(experiment_runs.c.run_id == old_id)
                                   .values(run_id=new_id)).rowcount
            if record is None:
                return planned > 0
            # New parent row first, children moved onto it, old parent deleted: every foreign key holds throughout.
            conn.execute(runs.insert().values(**{**record._mapping, "run_id": new_id}))
            for table in _run_owned_tables():
                conn.execute(update(table).where(table.c.run_id == old_id).values(run_id=new_id))
            conn.execute(delete(runs).where(runs.c.run_id == old_id))
            return True

    def add_train_steps(self, run_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write training steps (step, tokens_seen, loss, lr, grad_norm, step_seconds) in one batch.

        A step that is already stored is replaced, so writing the same steps twice never duplicates.
        """
        by_step: dict[int, dict[str, Any]] = {}
        for row in rows:
            values = coerce_row(train_steps, row, _STEP_COLUMNS, required=("step", "tokens_seen"))
            by_step[values["step"]] = {name: values.get(name) for name in _STEP_COLUMNS} | {"run_id": run_id}
        if not by_step:
            return
        stmt = self._insert(train_steps)
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "step"], set_={name: stmt.excluded[name] for name in _STEP_COLUMNS}
        )
        with self._tx(f"add_train_steps({run_id!r})") as conn:
            self._run_row(conn, run_id)
            conn.execute(stmt, list(by_step.values()))

    def add_evaluation(self, run_id: str, row: Mapping[str, Any]) -> None:
        """Write one evaluation (step, tokens_seen, val_loss, val_ppl, wall_seconds); replaces the same tokens_seen."""
        values = coerce_row(evaluations, row, _EVAL_COLUMNS, required=("step", "tokens_seen"))
        values = {name: values.get(name) for name in _EVAL_COLUMNS} | {"run_id": run_id}
        stmt = self._insert(evaluations).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "tokens_seen"],
            set_={name: stmt.excluded[name] for name in _EVAL_COLUMNS if name != "tokens_seen"},
        )
        with self._tx(f"add_evaluation({run_id!r})") as conn:
            self._run_row(conn, run_id)
            conn.execute(stmt)

    def truncate_after(self, run_id: str, step: int) -> None:
        """Delete the run's train steps and evaluations after ``step`` (a resume from its checkpoint)."""
        last = coerce_value(train_steps, "step", step)
        with self._tx(f"truncate_after({run_id!r}, {last})") as conn:
            self._run_row(conn, run_id, lock=True)
            conn.execute(delete(train_steps).where(train_steps.c.run_id == run_id, train_steps.c.step > last))
            conn.execute(delete(evaluations).where(evaluations.c.run_id == run_id, evaluations.c.step > last))

    def add_power_samples(self, run_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append power samples (device, t_seconds, power_w, energy_j) in one batch."""
        values = [{name: v.get(name) for name in _POWER_COLUMNS} | {"run_id": run_id}
                  for v in (coerce_row(power_samples, r, _POWER_COLUMNS, required=("device", "t_seconds", "power_w"))
                            for r in rows)]
        if values:
            with self._tx(f"add_power_samples({run_id!r})") as conn:
                self._run_row(conn, run_id)
                conn.execute(power_samples.insert(), values)

    def add_energy_measurements(self, run_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append energy measurements (device, scope, token and second bounds, energy_j, source, complete)."""
        required = ("device", "scope", "start_seconds", "end_seconds", "energy_j", "source")
        values = [{name: v.get(name) for name in _ENERGY_COLUMNS} | {"run_id": run_id}
                  for v in (coerce_row(energy_measurements, r, _ENERGY_COLUMNS, required=required) for r in rows)]
        for v in values:
            v["complete"] = True if v["complete"] is None else v["complete"]
        if values:
            with self._tx(f"add_energy_measurements({run_id!r})") as conn:
                self._run_row(conn, run_id)
                conn.execute(energy_measurements.insert(), values)

    def truncate_energy_after(self, run_id: str, t_seconds: float) -> None:
        """Delete power samples after ``t_seconds``, interval and window energy ending after it, and the
        whole-run rows (run, phase), which the run's end writes again (a resume)."""
        scope = energy_measurements.c.scope
        with self._tx(f"truncate_energy_after({run_id!r})") as conn:
            self._run_row(conn, run_id, lock=True)
            conn.execute(delete(power_samples).where(power_samples.c.run_id == run_id,
                                                     power_samples.c.t_seconds > t_seconds))
            conn.execute(delete(energy_measurements).where(
                energy_measurements.c.run_id == run_id, scope != "idle",
                (energy_measurements.c.end_seconds > t_seconds) | scope.in_(("run", "phase"))))

    def power_samples(self, run_id: str) -> list[dict[str, Any]]:
        """The run's power samples ordered by time."""
        stmt = select(power_samples).where(power_samples.c.run_id == run_id).order_by(
            power_samples.c.t_seconds, power_samples.c.id)
        with self._tx("power_samples", write=False) as conn:
            return [_jsonable(row) for row in conn.execute(stmt)]

    def energy_measurements(self, run_id: str) -> list[dict[str, Any]]:
        """The run's energy measurements (idle, intervals, run) in the order they were written."""
        stmt = select(energy_measurements).where(energy_measurements.c.run_id == run_id).order_by(
            energy_measurements.c.id)
        with self._tx("energy_measurements", write=False) as conn:
            return [_jsonable(row) for row in conn.execute(stmt)]

    def list_runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """All runs oldest first, or one experiment's runs in its run order, as JSON-ready dicts.

        Each has every ``runs`` column plus ``params`` (= params_total) and ``joules`` (= energy_j);
        an experiment's runs also have its plan fields (position, block, repetition, condition,
        condition_json).
        """
        if experiment is not None:
            # Runs planned by the experiment (in its order), then runs only labelled with its name.
            plan = experiment_runs.c.experiment == experiment
            planned = (select(runs, *(experiment_runs.c[name] for name in _PLAN_FIELDS))
                       .outerjoin(experiment_runs, (experiment_runs.c.run_id == runs.c.run_id) & plan)
                       .where(plan | (runs.c.experiment == experiment))
                       .order_by(experiment_runs.c.position.is_(None), experiment_runs.c.position,
                                 runs.c.created_at, runs.c.run_id))
            with self._tx("list_runs", write=False) as conn:
                return [_run_dict(row) for row in conn.execute(planned)]
        stmt = select(runs).order_by(runs.c.created_at, runs.c.run_id)
        with self._tx("list_runs", write=False) as conn:
            return [_run_dict(row) for row in conn.execute(stmt)]

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """The run's evaluations ordered by tokens_seen (empty for an unknown run)."""
        stmt = select(evaluations).where(evaluations.c.run_id == run_id).order_by(evaluations.c.tokens_seen)
        with self._tx("evaluations", write=False) as conn:
            return [_jsonable(row) for row in conn.execute(stmt)]

    def train_steps(self, run_id: str) -> list[dict[str, Any]]:
        """The run's training steps ordered by step (empty for an unknown run)."""
        stmt = select(train_steps).where(train_steps.c.run_id == run_id).order_by(train_steps.c.step)
        with self._tx("train_steps", write=False) as conn:
            return [_jsonable(row) for row in conn.execute(stmt)]

    def register_experiment(self, experiment: Mapping[str, Any], planned: Iterable[Mapping[str, Any]]) -> bool:
        """Record an experiment and its ordered planned runs once; return True if it was new.

        ``experiment`` holds the ``experiments`` columns, ``planned`` the ``experiment_runs`` rows
        (without ``experiment``). Registering the same spec again changes nothing (the stored order
        stays); a different spec under the same name raises StoreError.
        """
        values = coerce_row(experiments, {"created_at": _now(), **experiment}, _EXPERIMENT_COLUMNS,
                            required=("name", "spec_json", "spec_hash", "order_design", "order_seed"))
        name = values["name"]
        rows = [coerce_row(experiment_runs, {**row, "experiment": name}, _EXPERIMENT_RUN_COLUMNS,
                           required=_EXPERIMENT_RUN_COLUMNS) for row in planned]
        with self._tx(f"register_experiment({name!r})") as conn:
            existing = conn.execute(select(experiments.c.spec_hash).where(experiments.c.name == name)
                                    .with_for_update()).first()
            if existing is not None:
                if existing.spec_hash != values["spec_hash"]:
                    raise StoreError(
                        f"experiment.name: {name!r} is already in {self.display_url} with other settings; give the "
                        "changed study a new experiment.name (or delete the old one with `wattscale experiments "
                        "--delete NAME`)")
                return False
            conn.execute(experiments.insert().values(**values))
            if rows:
                conn.execute(experiment_runs.insert(), rows)
            return True

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        """An experiment's record, or None."""
        with self._tx("get_experiment", write=False) as conn:
            row = conn.execute(select(experiments).where(experiments.c.name == name)).first()
        return None if row is None else _jsonable(row)

    def list_experiments(self) -> list[dict[str, Any]]:
        """Every experiment with its planned and finished run counts, oldest first."""
        finished = func.sum(case((runs.c.status == "finished", 1), else_=0))
        stmt = (select(experiments.c.name, experiments.c.created_at, experiments.c.order_design,
                       experiments.c.order_seed, func.count(experiment_runs.c.position).label("planned_runs"),
                       finished.label("finished_runs"))
                .select_from(experiments.outerjoin(experiment_runs).outerjoin(
                    runs, runs.c.run_id == experiment_runs.c.run_id))
                .group_by(experiments.c.name, experiments.c.created_at, experiments.c.order_design,
                          experiments.c.order_seed)
                .order_by(experiments.c.created_at, experiments.c.name))
        with self._tx("list_experiments", write=False) as conn:
            return [{**_jsonable(row), "finished_runs": int(row.finished_runs or 0)} for row in conn.execute(stmt)]

    def experiment_runs(self, name: str) -> list[dict[str, Any]]:
        """An experiment's planned runs in run order, each with its run record's fields (None before it starts)."""
        stmt = (select(experiment_runs, runs.c.status, runs.c.tokens_seen, runs.c.tokens_budget,
                       runs.c.wall_seconds, runs.c.energy_j, runs.c.energy_source, runs.c.final_val_loss)
                .select_from(experiment_runs.outerjoin(runs, runs.c.run_id == experiment_runs.c.run_id))
                .where(experiment_runs.c.experiment == name).order_by(experiment_runs.c.position))
        with self._tx("experiment_runs", write=False) as conn:
            return [_jsonable(row) for row in conn.execute(stmt)]

    def delete_experiment(self, name: str) -> bool:
        """Forget an experiment's plan (its runs stay in the store); True if it existed."""
        with self._tx(f"delete_experiment({name!r})") as conn:
            conn.execute(delete(experiment_runs).where(experiment_runs.c.experiment == name))
            return conn.execute(delete(experiments).where(experiments.c.name == name)).rowcount > 0

    def add_calibration(self, row: Mapping[str, Any]) -> str:
        """Store one calibration (the ``calibrations`` columns; ``calibration_id`` and ``measured_at`` default
        to a new id and now); return its id. Unknown or missing columns raise StoreError."""
        values = coerce_row(calibrations, {"calibration_id": uuid.uuid4().hex[:16], "measured_at": _now(), **row},
                            _CALIBRATION_COLUMNS, required=_CALIBRATION_REQUIRED)
        with self._tx("add_calibration") as conn:
            conn.execute(calibrations.insert().values(**values))
        return values["calibration_id"]

    def list_calibrations(self, device_type: str | None = None, precision: str | None = None) -> list[dict[str, Any]]:
        """Calibrations, newest first, optionally of one device type (cpu, cuda) and precision."""
        stmt = select(calibrations).order_by(calibrations.c.measured_at.desc(), calibrations.c.calibration_id)
        if device_type is not None:
            stmt = stmt.where(calibrations.c.device_type == device_type)
        if precision is not None:
            stmt = stmt.where(calibrations.c.precision == precision)
        with self._tx("list_calibrations", write=False) as conn:
            return [_jsonable(row) for row in conn.execute(stmt)]

    def delete_calibrations(self, calibration_ids: Iterable[str] | None = None) -> int:
        """Delete the given calibrations (all of them with None); return how many were deleted."""
        stmt = delete(calibrations)
        if calibration_ids is not None:
            stmt = stmt.where(calibrations.c.calibration_id.in_(list(calibration_ids)))
        with self._tx("delete_calibrations") as conn:
            return conn.execute(stmt).rowcount

    def export(self, path: str | os.PathLike[str], table: str = "runs", fmt: str | None = None) -> int:
        """Write a whole table to CSV or Parquet (format from the suffix or ``fmt``); return the row count.

        Tables: runs, evaluations, train_steps, power_samples, energy_measurements. CSV datetimes
        are ISO-8601 UTC, empty cells are NULL; Parquet keeps column types (timestamps in UTC).
        """
        if table not in EXPORT_TABLES:
            raise StoreError(f"export table: unknown table {table!r}; choose one of: {', '.join(EXPORT_TABLES)}")
        target = Path(path)
        fmt = _export_format(target, fmt)
        source, order = EXPORT_TABLES[table]
        stmt = (
            select(source).order_by(*(source.c[name] for name in order)).execution_options(yield_per=_EXPORT_CHUNK_ROWS)
        )
        partial = target.with_name(target.name + ".partial")  # a failed export leaves no half file
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._tx(f"export {table}", write=False) as conn:
                chunks = conn.execute(stmt).partitions()
                count = _write_csv(partial, source, chunks) if fmt == "csv" else _write_parquet(partial, source, chunks)
            os.replace(partial, target)
        except OSError as exc:
            raise StoreError(f"export path: cannot write {target} ({exc.strerror}); choose a writable path") from None
        finally:
            with suppress(OSError):
                partial.unlink(missing_ok=True)
        return count

    def copy_run_from(self, other: Store, run_id: str) -> None:
        """Make this store's rows of one run those of ``other``: its runs row and its rows in every run table.

        One transaction here replaces whatever the run had (so copying twice changes nothing),
        reading ``other`` in one snapshot. Rows keep their order; autoincrement ids are this
        store's own. Works across backends. An unknown run_id in ``other`` raises StoreError.
        The Ray executor gathers runs trained into per-run SQLite stores with it.
        """
        if other.url == self.url:
            raise StoreError(f"store: copy_run_from({run_id!r}): source and target are both {self.display_url}")
        children = _run_owned_tables()
        with self._tx(f"copy_run_from({run_id!r})") as target, \
                other._tx(f"copy_run_from({run_id!r}): read", write=False) as source:
            record = source.execute(select(runs).where(runs.c.run_id == run_id)).first()
            if record is None:
                raise StoreError(f"store {other.display_url}: unknown run_id {run_id!r}, nothing to copy; check the id")
            for table in reversed(children):
                target.execute(delete(table).where(table.c.run_id == run_id))
            target.execute(delete(runs).where(runs.c.run_id == run_id))
            target.execute(runs.insert().values(**record._mapping))
            for table in children:
                columns = [column for column in table.columns if column.autoincrement is not True]
                stmt = (select(*columns).where(table.c.run_id == run_id).order_by(*table.primary_key.columns)
                        .execution_options(yield_per=_EXPORT_CHUNK_ROWS))
                for chunk in source.execute(stmt).partitions():
                    target.execute(table.insert(), [dict(row._mapping) for row in chunk])


def _export_format(path: Path, fmt: str | None) -> str:
    chosen = (fmt or path.suffix.lstrip(".")).lower()
    if chosen not in ("csv", "parquet"):
        shown = f"{fmt!r}" if fmt else f"the suffix of {path.name!r}"
        raise StoreError(f"export format: cannot export as {shown}; use a .csv or .parquet file, or format csv|parquet")
    return chosen


def _write_csv(path: Path, table: Table, chunks: Iterable[Sequence[Row[Any]]]) -> int:
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns_of(table))
        for chunk in chunks:
            for row in chunk:
                writer.writerow(["" if value is None else _json_value(value) for value in row])
            count += len(chunk)
    return count


def _write_parquet(path: Path, table: Table, chunks: Iterable[Sequence[Row[Any]]]) -> int:
    # Imported here: pyarrow takes longer to import than the rest of the store, and only export needs it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(table)
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            columns = list(zip(*chunk, strict=True)) if chunk else [[] for _ in schema]
            arrays = [pa.array(values, type=field.type) for values, field in zip(columns, schema, strict=True)]
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            count += len(chunk)
        if count == 0:
            writer.write_table(schema.empty_table())
    return count


def _now() -> datetime:
    return datetime.now(UTC)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _jsonable(row: Row[Any]) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in row._mapping.items()}


def _run_dict(row: Row[Any]) -> dict[str, Any]:
    record = _jsonable(row)
    record["params"] = record["params_total"]
    record["joules"] = record["energy_j"]  # the whole job
    record["phases"] = phase_summary(record.get("energy_json"))
    return record


def phase_summary(energy_json: str | None) -> dict[str, dict[str, Any]]:
    """{phase: {joules, seconds, tokens, source}} from a run's energy_json (idle included); {} without it."""
    if not energy_json:
        return {}
    try:
        energy = json.loads(energy_json)
    except ValueError:
        return {}
    phases = dict(energy.get("phases") or {})
    if energy.get("idle"):
        phases = {"idle": energy["idle"], **phases}
    return {name: {"joules": p.get("energy_j"), "seconds": p.get("seconds"), "tokens": p.get("tokens"),
                   "source": p.get("source")} for name, p in phases.items()}


def _run_owned_tables() -> list[Table]:
    """Tables whose rows belong to one run (steps, evaluations, power, energy), parents first."""
    return [table for table in metadata.sorted_tables if any(fk.column is runs.c.run_id for fk in table.foreign_keys)]


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__
