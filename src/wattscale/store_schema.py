"""The results database schema: tables, column units, status values and value checks.

Every column that holds a quantity carries its unit in its name (``wall_seconds``, ``energy_j``,
``power_w``). Datetimes are stored in UTC. ``store.py`` holds the code that reads and writes these
tables; this module only describes them, so that the schema can be read top to bottom.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.types import TypeEngine

from wattscale.errors import StoreError

# Bump when a table or column changes; a database written by a newer wattscale is refused, an
# older one is migrated (store.py, _MIGRATIONS).
SCHEMA_VERSION = 4

RUN_STATUSES = ("pending", "running", "finished", "diverged", "failed", "interrupted")
# Statuses a run can be created with or set to outside finish_run.
OPEN_STATUSES = ("pending", "running", "interrupted")
# Statuses finish_run may set; the first three are final (a finished run is never rewritten).
END_STATUSES = ("finished", "diverged", "failed", "interrupted")
FINAL_STATUSES = ("finished", "diverged", "failed")
ENERGY_SOURCES = ("counter", "integrated", "estimated")
# A run's total may add an estimate to measured components (meter.total = "all"): it is then "mixed".
TOTAL_SOURCES = (*ENERGY_SOURCES, "mixed")
# run: the whole job per device; phase: the whole run per device and phase; interval: between evaluations,
# per device and phase; idle: the baseline before the job; window: a user's named window, per phase.
ENERGY_SCOPES = ("run", "phase", "interval", "idle", "window")
RUN_KINDS = ("train", "measured")  # trained by wattscale, or code measured through wattscale.Monitor


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive UTC text)."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; a naive datetime is taken to be UTC already."""
        if value is None:
            return None
        value = _as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        return None if value is None else _as_utc(value)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# SQLite wants INTEGER PRIMARY KEY for autoincrement; PostgreSQL gets 64-bit ids (power samples
# at 1 kHz over many runs pass 2**31).
_ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: a one-row table
    Column("version", Integer, nullable=False),
    Column("wattscale_version", String(32), nullable=True),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False, server_default="train"),
    Column("experiment", String, nullable=True, index=True),
    Column("name", String, nullable=True),
    Column("preset", String(64), nullable=True),  # required for kind "train"
    Column("status", String(16), nullable=False),
    Column("config_json", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("seed", BigInteger, nullable=True),  # required for kind "train"
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("wall_seconds", Double, nullable=False, default=0.0),
    Column("tokens_budget", BigInteger, nullable=True),  # required for kind "train"
    Column("data_tokens", BigInteger, nullable=True),  # unique training tokens, when the set size was fixed
    Column("epochs", Double, nullable=True),  # passes over data_tokens (tokens_budget = data_tokens x epochs)
    Column("repeat", Integer, nullable=True),  # tells apart runs with identical settings and seed
    Column("tokens_seen", BigInteger, nullable=False, default=0),
    Column("steps", Integer, nullable=False, default=0),
    Column("params_total", BigInteger, nullable=True),
    Column("params_embedding", BigInteger, nullable=True),
    Column("params_non_embedding", BigInteger, nullable=True),
    Column("flops_per_token", Double, nullable=True),
    Column("device", String(64), nullable=True),
    Column("device_info_json", Text, nullable=True),
    Column("git_revision", String, nullable=True),  # a commit id, maybe with "-dirty"
    Column("wattscale_version", String(32), nullable=True),
    Column("torch_version", String(64), nullable=True),
    Column("final_val_loss", Double, nullable=True),
    Column("final_val_ppl", Double, nullable=True),
    Column("energy_j", Double, nullable=True),  # the whole job (every phase but the idle baseline)
    Column("energy_source", String(16), nullable=True),
    # The training phase (optimiser steps after the warm-up): what efficiency uses by default.
    Column("train_energy_j", Double, nullable=True),
    Column("train_seconds", Double, nullable=True),
    Column("train_tokens", BigInteger, nullable=True),
    Column("energy_json", Text, nullable=True),  # phases x components with sources, idle, shared host, rule
    Column("command_line", Text, nullable=True),
    Column("run_dir", Text, nullable=True),
    Column("message", Text, nullable=True),
    Column("resume_count", Integer, nullable=False, default=0),
    CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    CheckConstraint(_in("kind", RUN_KINDS), name="kind"),
    CheckConstraint(f"energy_source IS NULL OR {_in('energy_source', TOTAL_SOURCES)}", name="energy_source"),
    # Every energy figure carries its source: never a bare number of unknown origin.
    CheckConstraint("energy_j IS NULL OR energy_source IS NOT NULL", name="energy_has_source"),
)
Index("ix_runs_created_at", runs.c.created_at)


def _run_fk(primary_key: bool = False) -> Column[Any]:
    return Column(
        "run_id",
        String(32),
        ForeignKey("runs.run_id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
    )


evaluations = Table(
    "evaluations",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    _run_fk(),
    Column("step", Integer, nullable=False),
    Column("tokens_seen", BigInteger, nullable=False),
    Column("val_loss", Double, nullable=True),  # NULL = not finite (NaN) after a divergence
    Column("val_ppl", Double, nullable=True),
    Column("wall_seconds", Double, nullable=True),
    UniqueConstraint("run_id", "tokens_seen"),
)

train_steps = Table(
    "train_steps",
    metadata,
    _run_fk(primary_key=True),
    Column("step", Integer, primary_key=True, autoincrement=False),
    Column("tokens_seen", BigInteger, nullable=False),
    Column("loss", Double, nullable=True),  # NULL = NaN
    Column("lr", Double, nullable=True),
    Column("grad_norm", Double, nullable=True),
    Column("step_seconds", Double, nullable=True),
)

power_samples = Table(
    "power_samples",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    _run_fk(),
    Column("device", String(64), nullable=False),
    Column("t_seconds", Double, nullable=False),  # monotonic offset from the run's start
    Column("power_w", Double, nullable=False),
    Column("energy_j", Double, nullable=True),  # cumulative hardware counter, where there is one
)
Index("ix_power_samples_run_id_t_seconds", power_samples.c.run_id, power_samples.c.t_seconds)

energy_measurements = Table(
    "energy_measurements",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    _run_fk(),
    Column("device", String(64), nullable=False),
    Column("component", String(32), nullable=True),  # gpu, cpu_package, dram, cpu_estimate
    Column("scope", String(16), nullable=False),
    Column("phase", String(32), nullable=True),  # NULL for scope "run" (all job phases)
    Column("phase_seconds", Double, nullable=True),  # seconds spent in the phase within the scope's bounds
    Column("start_tokens", BigInteger, nullable=True),
    Column("end_tokens", BigInteger, nullable=True),
    Column("start_seconds", Double, nullable=False),
    Column("end_seconds", Double, nullable=False),
    Column("energy_j", Double, nullable=False),
    Column("source", String(16), nullable=False),
    Column("complete", Boolean, nullable=False, default=True),
    Column("details_json", Text, nullable=True),
    CheckConstraint(_in("scope", ENERGY_SCOPES), name="scope"),
    CheckConstraint(_in("source", ENERGY_SOURCES), name="source"),
)
Index("ix_energy_measurements_run_id", energy_measurements.c.run_id)

experiments = Table(
    "experiments",
    metadata,
    Column("name", String, primary_key=True),
    Column("spec_json", Text, nullable=False),  # the expanded spec: fixed settings, grid, design
    Column("spec_hash", String(64), nullable=False),
    Column("order_design", String(32), nullable=False),
    Column("order_seed", BigInteger, nullable=False),
    Column("source_path", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# The planned runs of an experiment in the order they run: one row per (condition, repetition).
# run_id is not a foreign key: a planned run has no runs row until it starts.
experiment_runs = Table(
    "experiment_runs",
    metadata,
    Column("experiment", String, ForeignKey("experiments.name", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),  # 0-based place in the run order
    Column("run_id", String(32), nullable=False, index=True),
    Column("block", Integer, nullable=False),  # repetition block: every condition once
    Column("repetition", Integer, nullable=False),  # the subject index for repeated-measures statistics
    Column("condition", String, nullable=False),  # a readable label, e.g. "data_tokens=500000"
    Column("condition_json", Text, nullable=False),  # the grid values of this condition
    UniqueConstraint("experiment", "run_id"),
)

# One row per `wattscale calibrate` measurement: a few real training steps of one preset at one precision,
# batch and sequence length on one machine and device, repeated, with their spread. Estimates of planned runs
# (wattscale.experiment.estimate) scale these figures by FLOPs per token. Not tied to a run.
calibrations = Table(
    "calibrations",
    metadata,
    Column("calibration_id", String(32), primary_key=True),
    Column("measured_at", UTCDateTime(), nullable=False),
    Column("hostname", String, nullable=False),
    Column("cpu_model", String, nullable=True),
    Column("device_type", String(16), nullable=False),  # cpu | cuda
    Column("device_name", String, nullable=False),  # the GPU's name, or the CPU model on cpu
    Column("threads", Integer, nullable=True),  # torch CPU threads during the steps
    Column("cpu_count", Integer, nullable=True),  # logical CPUs of the host
    # The host's 1-minute load average as the steps ran: a calibration holds while the machine is as busy.
    Column("load_average", Double, nullable=True),
    Column("torch_version", String(64), nullable=True),
    Column("wattscale_version", String(32), nullable=True),
    Column("preset", String(64), nullable=False),
    Column("precision", String(8), nullable=False),  # fp32 | bf16 | tf32
    Column("batch_size", Integer, nullable=False),  # sequences per optimiser step
    Column("seq_len", Integer, nullable=False),
    Column("params_total", BigInteger, nullable=True),
    Column("flops_per_token", Double, nullable=False),  # training FLOPs per token (wattscale.flops)
    Column("steps_per_repeat", Integer, nullable=False),  # timed optimiser steps in each repeat
    Column("warmup_steps", Integer, nullable=False),  # untimed steps before the first repeat
    Column("repeats", Integer, nullable=False),
    Column("tokens_per_second", Double, nullable=False),  # median over the repeats
    Column("tokens_per_second_min", Double, nullable=False),
    Column("tokens_per_second_max", Double, nullable=False),
    Column("tokens_per_second_json", Text, nullable=False),  # every repeat's figure, in order
    Column("flops_per_second", Double, nullable=False),  # tokens_per_second x flops_per_token
    Column("warmup_step_seconds", Double, nullable=True),  # the first step (allocation, autotuning)
    Column("eval_tokens_per_second", Double, nullable=True),  # forward-only evaluation, as the trainer runs it
    Column("checkpoint_seconds", Double, nullable=True),  # one checkpoint (weights + optimiser state) written
    Column("checkpoint_bytes", BigInteger, nullable=True),
    Column("power_w", Double, nullable=True),  # training phase, total by the meter's rule; NULL: nothing metered
    Column("power_w_json", Text, nullable=True),  # training phase by component, e.g. {"gpu": 612.0}
    Column("eval_power_w", Double, nullable=True),
    Column("energy_source", String(16), nullable=True),  # of power_w: counter / integrated / estimated / mixed
    Column("details_json", Text, nullable=True),  # meters, notes, per-repeat power, the command line
    CheckConstraint(f"energy_source IS NULL OR {_in('energy_source', TOTAL_SOURCES)}", name="energy_source"),
    CheckConstraint("power_w IS NULL OR energy_source IS NOT NULL", name="power_has_source"),
)
Index("ix_calibrations_device_precision", calibrations.c.device_type, calibrations.c.precision)

# Columns a new run must have; a trained run (kind "train") also RUN_REQUIRED_TRAIN.
RUN_REQUIRED = ("run_id", "config_json", "config_hash")
RUN_REQUIRED_TRAIN = ("preset", "seed", "tokens_budget")
# What create_run may refresh on an existing run: where and with what it runs, never what it trains.
RUN_RECREATE_FIELDS = (
    "experiment",
    "name",
    "device",
    "device_info_json",
    "git_revision",
    "wattscale_version",
    "torch_version",
    "run_dir",
    "command_line",
)
# What finish_run may set besides the status.
FINAL_FIELDS = (
    "finished_at",
    "wall_seconds",
    "tokens_seen",
    "steps",
    "final_val_loss",
    "final_val_ppl",
    "energy_j",
    "energy_source",
    "train_energy_j",
    "train_seconds",
    "train_tokens",
    "energy_json",
    "message",
)

# Tables `Store.export` writes, with the columns that order their rows.
EXPORT_TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "runs": (runs, ("created_at", "run_id")),
    "evaluations": (evaluations, ("run_id", "tokens_seen")),
    "train_steps": (train_steps, ("run_id", "step")),
    "power_samples": (power_samples, ("run_id", "t_seconds", "id")),
    "energy_measurements": (energy_measurements, ("run_id", "id")),
    "experiments": (experiments, ("name",)),
    "experiment_runs": (experiment_runs, ("experiment", "position")),
    "calibrations": (calibrations, ("measured_at", "calibration_id")),
}


def coerce_value(table: Table, name: str, value: Any) -> Any:
    """Check one value against its column and convert it to a plain Python value.

    numpy scalars become int/float (drivers cannot adapt them), a NaN float becomes None (SQLite
    cannot store NaN; PostgreSQL could, but both backends must read back the same), ISO-8601
    strings become datetimes. Raises StoreError naming ``table.column`` for anything else.
    """
    column = table.c[name]
    where = f"{table.name}.{name}"
    if value is None:
        if not column.nullable:
            raise StoreError(f"store: {where} is required and cannot be None")
        return None
    coltype: TypeEngine[Any] = column.type
    if isinstance(coltype, UTCDateTime):
        return _coerce_datetime(where, value)
    if isinstance(coltype, Boolean):
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
        raise StoreError(f"store: {where} must be true or false, got {value!r}")
    if isinstance(coltype, Integer):  # BigInteger is an Integer
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise StoreError(f"store: {where} must be an integer, got {value!r} ({type(value).__name__})")
    if isinstance(coltype, Double):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = float(value)
            if math.isnan(number):
                if not column.nullable:
                    raise StoreError(f"store: {where} must be a finite number, got NaN")
                return None
            return number
        raise StoreError(f"store: {where} must be a number, got {value!r} ({type(value).__name__})")
    if isinstance(coltype, String):  # Text is a String
        if not isinstance(value, str):
            raise StoreError(f"store: {where} must be a string, got {value!r} ({type(value).__name__})")
        if coltype.length is not None and len(value) > coltype.length:
            raise StoreError(f"store: {where} is longer than {coltype.length} characters: {value[:40]!r}...")
        return value
    raise TypeError(f"no coercion for column type {coltype!r}")  # a schema bug, not a user error


def _coerce_datetime(where: str, value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise StoreError(f"store: {where} must be an ISO-8601 datetime, got {value!r}") from None
    if not isinstance(value, datetime):
        raise StoreError(f"store: {where} must be a datetime, got {value!r} ({type(value).__name__})")
    return _as_utc(value)


def coerce_row(
    table: Table, row: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check a row's keys (unknown and missing ones raise StoreError) and coerce its values."""
    unknown = sorted(set(row) - set(allowed))
    if unknown:
        raise StoreError(f"store: unknown {table.name} column(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    missing = [name for name in required if row.get(name) is None]
    if missing:
        raise StoreError(f"store: {table.name} row is missing required column(s) {', '.join(missing)}")
    return {name: coerce_value(table, name, value) for name, value in row.items()}


def columns_of(table: Table, *, without: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The column names of a table in schema order, leaving out ``without``."""
    return tuple(c.name for c in table.columns if c.name not in without)


def arrow_schema(table: Table) -> Any:
    """The pyarrow schema of a table's Parquet export (timestamps in UTC microseconds)."""
    # Imported here: pyarrow takes longer to import than the rest of the store, and only export needs it.
    import pyarrow as pa

    def arrow_type(coltype: TypeEngine[Any]) -> Any:
        if isinstance(coltype, UTCDateTime):
            return pa.timestamp("us", tz="UTC")
        if isinstance(coltype, Boolean):
            return pa.bool_()
        if isinstance(coltype, Integer):
            return pa.int64()
        if isinstance(coltype, Double):
            return pa.float64()
        if isinstance(coltype, String):
            return pa.string()
        raise TypeError(f"no Arrow type for {coltype!r}")  # a schema bug, not a user error

    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=c.nullable) for c in table.columns])
