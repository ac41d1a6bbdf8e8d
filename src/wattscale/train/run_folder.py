"""A run's folder on disk: whether another process holds it, moving it to a new run root, and the
one-line errors for a folder that is full, read-only or failing."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from wattscale.errors import WattscaleError
from wattscale.train.checkpoints import CHECKPOINT_DIR, list_checkpoints


def lock_busy(run_dir: Path) -> bool:
    """Whether another process holds `run_dir`'s lock (False if there is no lock or it cannot be opened)."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def move_checkpoints(old: Path, new: Path, run_id: str) -> str:
    """Copy a run's complete checkpoints from `old` to `new` (each atomically); say what was done, in one line."""
    try:
        found = list_checkpoints(old)
    except OSError as exc:
        raise WattscaleError(f"run {run_id}: cannot read its checkpoints in {old} ({exc.strerror}); make them "
                             f"readable, or copy {old / CHECKPOINT_DIR} to {new} yourself, and re-run") from None
    if not found:
        return (f"run {run_id} moved from {old} to {new}; {old} held no checkpoint, so it trains from step 0 "
                "(its stored rows are redone)")
    target = new / CHECKPOINT_DIR
    copied = []
    for path in found:
        final = target / path.name
        if (final / "meta.json").is_file():
            continue
        tmp = target / f".tmp-{path.name}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(path, tmp)
            os.replace(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            error = folder_error(exc, new)
            raise error or WattscaleError(
                f"run {run_id}: cannot copy checkpoint {path} to {new} ({exc.strerror}); make it readable, "
                f"or copy {old / CHECKPOINT_DIR} to {new} yourself, and re-run") from None
        copied.append(path.name)
    names = ", ".join(copied) or "none needed"
    return (f"run {run_id} moved from {old} to {new}: copied checkpoints {names}; it "
            f"continues from {found[-1].name} there, and {old} is left as it was (delete it when done)")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def folder_error(exc: OSError, run_dir: Path) -> WattscaleError | None:
    """A one-line error for a run folder that is full, read-only or failing; None for other OS errors."""
    if exc.errno in _DISK_FULL:
        fix = "free space there"
    elif exc.errno in _NOT_WRITABLE:
        fix = "make it writable"
    elif exc.errno == errno.EIO:
        fix = "check the disk (the system log names the device)"
    else:
        return None
    where = exc.filename or run_dir
    return WattscaleError(f"run folder {run_dir}: cannot write {where} ({exc.strerror}); {fix}, or re-run the "
                          "same command with --run-root on another disk (the run continues from its last "
                          "checkpoint, copied there)")
