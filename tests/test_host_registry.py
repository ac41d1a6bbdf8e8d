"""The host registry: which other measurements overlapped, read cheaply from a folder full of old ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from wattscale.energy.host import KEEP_SECONDS, register


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _entry(folder: Path, name: str, pid: int, start: float, end: float | None, mtime: float) -> Path:
    path = folder / f"{name}-{pid}-abcdef12.json"
    path.write_text(json.dumps({"id": name, "pid": pid, "start_unix": start, "end_unix": end, "host_wide": True,
                                "gpu_uuids": []}))
    os.utime(path, (mtime, mtime))
    return path


def test_overlaps_skip_old_finished_entries_but_keep_a_live_one_whatever_its_age(tmp_path: Path) -> None:
    now = time.time()
    dead = _dead_pid()
    for i in range(50):  # a week of finished measurements, whose processes are gone
        _entry(tmp_path, f"old{i}", dead, now - 3600 - i, now - 3000 - i, now - 3000 - i)
    # Still running (our own pid) and not touched for an hour: its file is old, yet it overlaps.
    _entry(tmp_path, "long", os.getpid(), now - 3600, None, now - 3600)
    # Finished an hour ago but its file was rewritten now (unreadable old time): read, and found not to overlap.
    _entry(tmp_path, "closed", dead, now - 7200, now - 3600, now)
    reg = register("mine", host_wide=True, gpu_uuids=(), folder=tmp_path)
    time.sleep(0.05)
    # A measurement that starts and ends inside ours, by a process that is gone now.
    _entry(tmp_path, "inside", dead, reg.start_unix + 0.01, reg.start_unix + 0.03, time.time())
    found = {o.id: o for o in reg.overlaps()}
    reg.close()
    assert set(found) == {"long", "inside"}
    assert found["long"].host_wide and found["long"].overlap_s > 0.04
    assert abs(found["inside"].overlap_s - 0.02) < 1e-6


def test_registering_prunes_only_entries_older_than_a_week_whose_process_is_gone(tmp_path: Path) -> None:
    now = time.time()
    dead = _dead_pid()
    stale = _entry(tmp_path, "stale", dead, now - KEEP_SECONDS - 7200, now - KEEP_SECONDS - 3600,
                   now - KEEP_SECONDS - 3600)
    recent = _entry(tmp_path, "recent", dead, now - 7200, now - 3600, now - 3600)
    alive = _entry(tmp_path, "alive", os.getpid(), now - KEEP_SECONDS - 7200, None, now - KEEP_SECONDS - 3600)
    register("mine", host_wide=False, gpu_uuids=(), folder=tmp_path).close()
    assert not stale.exists() and recent.exists() and alive.exists()
