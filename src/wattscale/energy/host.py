"""Which other wattscale measurements ran on this host at the same time.

Host-wide counters (RAPL package and DRAM) and the idle baseline count every process on the machine, and
two measurements on one GPU share its counter. Each measurement therefore registers itself in a folder
shared by the host's processes (one small JSON file: id, pid, start and end times, whether it reads
host-wide counters, its GPU UUIDs) and, when it ends, lists every other registered measurement whose time
overlapped its own. A registration that was never closed (its process was killed) ends at its file's last
modification (refreshed by `Registration.touch`), or is still running while its pid lives.

Files older than `KEEP_SECONDS` after their end are removed by later registrations.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattscale.units import SECONDS_PER_HOUR

KEEP_SECONDS = 7 * 24 * SECONDS_PER_HOUR
DEFAULT_FOLDER_NAME = "wattscale-host"


def default_registry_dir() -> Path:
    """The folder the host's measurements share: <tempdir>/wattscale-host."""
    return Path(tempfile.gettempdir()) / DEFAULT_FOLDER_NAME


@dataclass(frozen=True)
class Overlap:
    """Another measurement that ran on this host while this one did."""

    id: str
    pid: int
    overlap_s: float
    host_wide: bool  # it read host-wide counters too
    shared_gpus: tuple[str, ...]  # GPU UUIDs both measured

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"id": self.id, "pid": self.pid, "overlap_s": self.overlap_s, "host_wide": self.host_wide,
                "shared_gpus": list(self.shared_gpus)}


class Registration:
    """This measurement's entry in the host registry (a context: close() marks its end)."""

    def __init__(self, folder: Path, measurement_id: str, host_wide: bool, gpu_uuids: Sequence[str]) -> None:
        self.folder = folder
        self.id = measurement_id
        self.start_unix = time.time()
        self.host_wide = host_wide
        self.gpu_uuids = tuple(gpu_uuids)
        # Unique per registration: a resumed run registers again under the same id.
        self.path = folder / f"{measurement_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.ok = _write(self.path, self._entry(None))

    def _entry(self, end_unix: float | None) -> dict[str, Any]:
        return {"id": self.id, "pid": os.getpid(), "start_unix": self.start_unix, "end_unix": end_unix,
                "host_wide": self.host_wide, "gpu_uuids": list(self.gpu_uuids)}

    def touch(self) -> None:
        """Refresh the file's time: a killed process's registration ends at its last touch."""
        if self.ok:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def overlaps(self) -> list[Overlap]:
        """Every other registration whose time overlapped this one's, up to now."""
        now = time.time()
        found: list[Overlap] = []
        for other in _entries(self.folder, now, since_unix=self.start_unix):
            if other["path"] == self.path:
                continue
            start, end = float(other["start_unix"]), float(other["end"])
            overlap = min(end, now) - max(start, self.start_unix)
            if overlap <= 0:
                continue
            shared = tuple(sorted(set(self.gpu_uuids) & set(other.get("gpu_uuids") or ())))
            found.append(Overlap(str(other["id"]), int(other["pid"]), overlap, bool(other.get("host_wide")), shared))
        return sorted(found, key=lambda o: (o.id, o.pid))

    def close(self) -> None:
        """Record the end time (the file stays for the others to see)."""
        if self.ok:
            _write(self.path, self._entry(time.time()))


def register(measurement_id: str, host_wide: bool, gpu_uuids: Sequence[str],
             folder: str | Path | None = None) -> Registration:
    """Register a measurement that starts now; a folder that cannot be written only disables the check."""
    path = Path(folder) if folder else default_registry_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if folder is None:
            os.chmod(path, 0o1777)  # shared by the host's users, like /tmp itself
    except OSError:
        pass
    _prune(path, time.time())
    return Registration(path, measurement_id, host_wide, gpu_uuids)


def _write(path: Path, entry: dict[str, Any]) -> bool:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def _entries(folder: Path, now: float, since_unix: float | None = None) -> list[dict[str, Any]]:
    """Readable registrations with their effective end ("end": end_unix, now while alive, else last touch).

    With `since_unix`, registrations that certainly ended before it are skipped unread: every write and
    touch moves a file's time, so a file last modified before `since_unix` whose process is gone ended by
    then. A shared folder keeps a week of registrations (thousands on a busy host), and parsing each one
    at every start and end of a measurement cost about 0.7 s per run with 4,500 files; a stat is enough.
    """
    out = []
    for path in folder.glob("*.json"):
        try:
            mtime = path.stat().st_mtime
            if since_unix is not None and mtime < since_unix and not _alive(_pid_in_name(path)):
                continue
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(entry, dict) or "start_unix" not in entry:
            continue
        end = entry.get("end_unix")
        if end is None:
            end = now if _alive(int(entry.get("pid", -1))) else mtime
        out.append({**entry, "end": end, "path": path})
    return out


def _prune(folder: Path, now: float) -> None:
    """Remove registrations that ended more than KEEP_SECONDS ago.

    A registration ends at or before its file's last write or touch unless its process still runs, so only
    files that old are candidates, and only those whose process is gone are removed (unread).
    """
    for path in folder.glob("*.json"):
        try:
            if now - path.stat().st_mtime > KEEP_SECONDS and not _alive(_pid_in_name(path)):
                path.unlink()
        except OSError:
            pass


def _pid_in_name(path: Path) -> int:
    """The pid in a registration's file name (`{id}-{pid}-{hex}.json`); -1 when the name has none."""
    parts = path.stem.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True
