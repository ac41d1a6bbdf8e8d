"""An exclusive per-run lock, so two processes never train the same run at once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from wattscale.errors import WattscaleError


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `<run_dir>/lock` for the duration; the OS releases it if the process dies (even SIGKILL).

    A folder this call created and that holds nothing but the lock when it ends is removed again
    (a run that could not start leaves no empty folder behind). A folder that cannot be created or
    written raises a one-line WattscaleError.
    """
    created = [parent for parent in (run_dir, *run_dir.parents) if not parent.exists()]
    path = run_dir / "lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WattscaleError(f"run folder {run_dir}: cannot create {exc.filename or path} ({exc.strerror}); "
                             "free space or make it writable, or re-run with --run-root elsewhere") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"
            raise WattscaleError(f"run {run_dir.name} is being trained by another process (pid {holder}); "
                                 "wait for it or stop it first") from None
        with suppress(OSError):  # the pid only names the holder in messages (a full disk cannot take it)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        try:
            yield
        finally:
            with suppress(OSError):
                if created and {p.name for p in run_dir.iterdir()} == {"lock"}:
                    path.unlink()
                    for folder in created:  # innermost first; stops at the first one not empty
                        folder.rmdir()
    finally:
        os.close(fd)
