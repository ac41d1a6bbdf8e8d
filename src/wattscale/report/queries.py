"""Read-only queries the report and the live view need in bulk, which ``Store`` has no method for.

The Store's per-run methods would take one transaction per run (500 for a 500-run report) or
read a whole power trace to find its last sample (every poll of ``wattscale watch``). These
read the same tables through the store's engine, in one read transaction each, and never write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from wattscale.store import Store
from wattscale.store_schema import energy_measurements, evaluations, power_samples, train_steps

_IN_CHUNK = 500  # run ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


def val_loss_curves(store: Store, run_ids: Sequence[str]) -> dict[str, list[tuple[int, float | None]]]:
    """run_id -> [(tokens_seen, val_loss), ...] ordered by tokens_seen, for every given run (empty if none)."""
    curves: dict[str, list[tuple[int, float | None]]] = {run_id: [] for run_id in run_ids}
    with store.engine.connect() as conn:
        for start in range(0, len(run_ids), _IN_CHUNK):
            chunk = list(run_ids[start:start + _IN_CHUNK])
            stmt = (select(evaluations.c.run_id, evaluations.c.tokens_seen, evaluations.c.val_loss)
                    .where(evaluations.c.run_id.in_(chunk))
                    .order_by(evaluations.c.run_id, evaluations.c.tokens_seen))
            for run_id, tokens_seen, val_loss in conn.execute(stmt):
                curves[run_id].append((int(tokens_seen), None if val_loss is None else float(val_loss)))
    return curves


def latest_train_step(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's last written training step (step, tokens_seen, loss), or None."""
    stmt = (select(train_steps.c.step, train_steps.c.tokens_seen, train_steps.c.loss)
            .where(train_steps.c.run_id == run_id).order_by(train_steps.c.step.desc()).limit(1))
    with store.engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def latest_evaluation(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's last written evaluation (tokens_seen, val_loss, val_ppl), or None."""
    stmt = (select(evaluations.c.tokens_seen, evaluations.c.val_loss, evaluations.c.val_ppl)
            .where(evaluations.c.run_id == run_id).order_by(evaluations.c.tokens_seen.desc()).limit(1))
    with store.engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def latest_power(store: Store, run_id: str) -> dict[str, dict[str, float]]:
    """device -> {"t_seconds", "power_w"} of the run's last written power sample per device."""
    last = (select(func.max(power_samples.c.id).label("id")).where(power_samples.c.run_id == run_id)
            .group_by(power_samples.c.device).subquery())
    stmt = (select(power_samples.c.device, power_samples.c.t_seconds, power_samples.c.power_w)
            .where(power_samples.c.id.in_(select(last.c.id))).order_by(power_samples.c.device))
    with store.engine.connect() as conn:
        return {device: {"t_seconds": float(t), "power_w": float(w)} for device, t, w in conn.execute(stmt)}


def interval_energy(store: Store, run_id: str) -> dict[str, Any]:
    """Energy written so far: the sum of the run's ``interval`` rows, with their sources and end time."""
    stmt = (select(energy_measurements.c.source, func.sum(energy_measurements.c.energy_j),
                   func.max(energy_measurements.c.end_seconds), func.count())
            .where(energy_measurements.c.run_id == run_id, energy_measurements.c.scope == "interval")
            .group_by(energy_measurements.c.source))
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return {"energy_j": sum(float(r[1]) for r in rows) if rows else None,
            "sources": sorted(str(r[0]) for r in rows),
            "end_seconds": max((float(r[2]) for r in rows), default=None),
            "intervals": sum(int(r[3]) for r in rows)}
