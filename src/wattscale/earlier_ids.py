"""Runs stored under the ids of earlier wattscale versions are renamed to today's id when next used.

``wattscale.config.earlier_run_ids`` gives the ids a run had before (a local data path once entered
the id as its absolute path). ``train`` and ``run`` call ``adopt_earlier_id`` before they look a run
up, so a study moved to another folder or checkout resumes instead of training everything again.
"""

from __future__ import annotations

from collections.abc import Iterable

from wattscale.store import Store


def adopt_earlier_id(store: Store, run_id: str, earlier_ids: Iterable[str]) -> str | None:
    """Rename the run from an earlier id to ``run_id`` if the store has it only under that; a note to log, or None."""
    earlier_ids = tuple(earlier_ids)
    if not earlier_ids or store.get_run(run_id) is not None:
        return None
    for old_id in earlier_ids:
        if store.rename_run(old_id, run_id):
            return (f"run {old_id} is now run {run_id}: its id no longer depends on where its data files lie "
                    "(their content still counts)")
    return None
