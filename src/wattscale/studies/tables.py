"""A study's rows as Parquet files, and back into a store, value for value.

The tables of a study export (``STUDY_TABLES``): its ``runs`` rows, their ``evaluations``, ``train_steps`` and
``energy_measurements`` (phases, intervals, idle baseline, windows: figures, not the raw power samples), the
``experiments`` row (the expanded spec) and the ``experiment_runs`` plan rows. Each file has the Arrow schema of
its store table (`wattscale.store_schema.arrow_schema`): float64 stays float64 and timestamps keep their
microseconds, so a store loaded from the files reads back the same numbers as the one they came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.exc import DBAPIError

from wattscale.errors import StoreError
from wattscale.store import Store
from wattscale.store_schema import (
    arrow_schema,
    coerce_row,
    columns_of,
    energy_measurements,
    evaluations,
    experiment_runs,
    experiments,
    runs,
    train_steps,
)

# In the order they are loaded (parents first), each with the columns that order its rows.
STUDY_TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "runs": (runs, ("created_at", "run_id")),
    "evaluations": (evaluations, ("run_id", "tokens_seen")),
    "train_steps": (train_steps, ("run_id", "step")),
    "energy_measurements": (energy_measurements, ("run_id", "id")),
    "experiments": (experiments, ("name",)),
    "experiment_runs": (experiment_runs, ("experiment", "position")),
}


def study_rows(store: Store, experiment: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of one experiment in each study table: its plan, its runs (planned or labelled) and their rows."""
    run_ids = [r["run_id"] for r in store.list_runs(experiment=experiment)]
    out: dict[str, list[dict[str, Any]]] = {}
    with store.engine.connect() as conn:
        for name, (table, order) in STUDY_TABLES.items():
            if "run_id" in table.c and name != "experiment_runs":
                where = table.c.run_id.in_(run_ids)
            else:
                where = (table.c.name if name == "experiments" else table.c.experiment) == experiment
            stmt = select(table).where(where).order_by(*(table.c[c] for c in order))
            out[name] = [dict(row._mapping) for row in conn.execute(stmt)]
    return out


def write_parquet(path: Path, name: str, rows: list[dict[str, Any]]) -> None:
    """Write one study table's rows to ``path`` with its store table's Arrow schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, _ = STUDY_TABLES[name]
    schema = arrow_schema(table)
    arrays = [pa.array([row[field.name] for row in rows], type=field.type) for field in schema]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def read_parquet(path: Path, name: str) -> list[dict[str, Any]]:
    """One study table's rows from its file; StoreError naming the file for a missing or foreign column."""
    import pyarrow.parquet as pq

    table, _ = STUDY_TABLES[name]
    try:
        data = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise StoreError(f"import: cannot read {path} as Parquet ({exc}); export the study again") from None
    known = set(columns_of(table))
    foreign = [c for c in data.column_names if c not in known]
    missing = [c.name for c in table.columns if c.name not in data.column_names and not c.nullable
               and c.default is None and c.server_default is None and c.autoincrement is not True]
    if foreign or missing:
        raise StoreError(f"import: {path.name} does not match the {name} table of this wattscale (unknown columns "
                         f"{foreign or 'none'}, missing {missing or 'none'}); import with the wattscale that "
                         "exported it, or export again")
    return data.to_pylist()


def load_rows(store: Store, tables: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, int]:
    """Insert the study tables' rows into ``store`` in one transaction; return the rows loaded per table.

    Refused (StoreError, nothing written) when the store already holds one of the runs or the experiment.
    Autoincrement ids are the store's own; rows keep their order.
    """
    prepared = {name: _coerced(name, rows) for name, rows in tables.items()}
    run_ids = [row["run_id"] for row in prepared.get("runs", [])]
    names = [row["name"] for row in prepared.get("experiments", [])]
    counts: dict[str, int] = {}
    try:
        with store.write_engine.begin() as conn:
            clash = conn.execute(select(runs.c.run_id).where(runs.c.run_id.in_(run_ids)).limit(1)).first() or \
                conn.execute(select(experiments.c.name).where(experiments.c.name.in_(names)).limit(1)).first()
            if clash is not None:
                raise StoreError(f"import: {store.display_url} already holds {clash[0]!r} of this study; import into "
                                 "a new store (--store NEW.db) or delete it there first")
            for name in STUDY_TABLES:
                rows = prepared.get(name, [])
                if rows:
                    conn.execute(STUDY_TABLES[name][0].insert(), rows)
                counts[name] = len(rows)
    except DBAPIError as exc:
        raise StoreError(f"import into {store.display_url} failed: {str(exc.orig).splitlines()[0]}") from None
    return counts


def _coerced(name: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows checked against the table (types, required columns), without the store's own autoincrement ids."""
    table, _ = STUDY_TABLES[name]
    own_ids = {c.name for c in table.columns if c.autoincrement is True and c.primary_key}
    allowed = tuple(c for c in columns_of(table) if c not in own_ids)
    return [coerce_row(table, {k: v for k, v in row.items() if k not in own_ids}, allowed) for row in rows]
