"""Checking where a command will write, before it does the work: one-line errors that name the flag.

A command that computes for minutes and then cannot write its figure or report has wasted the minutes, so
`check_output_file` and `check_output_folder` run first. The rule for both: the path is not an existing folder
(for a file) or file (for a folder), and the nearest folder that already exists on the way to it accepts a new
file (checked by creating and removing an empty one: permission bits alone say yes for root, even on /proc).
Missing folders in between are fine; the writers create them. `write_error` turns an ``OSError`` at write time
(disk full, the folder removed meanwhile) into the same kind of one-line error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from wattscale.errors import ConfigError


def write_error(flag: str, path: str | os.PathLike[str], exc: OSError) -> ConfigError:
    """A one-line ConfigError for a failed write of ``path`` given by ``flag``."""
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    return ConfigError(f"{flag}: cannot write {str(path)!r} ({reason}); choose a writable path")


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _probe(flag: str, folder: Path, target: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{flag}: cannot write {str(target)!r}: {str(existing)!r} is a file, not a folder; "
                          "choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".wattscale-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot write {str(target)!r}: the folder {str(existing)!r} does not accept new "
                          f"files ({exc.strerror or type(exc).__name__}); choose a writable path") from None


def check_output_file(path: str | os.PathLike[str], flag: str, suffixes: Sequence[str] = ()) -> Path:
    """``path`` as a Path if a file can be written there; else ConfigError naming ``flag`` and the fix."""
    target = Path(path)
    if suffixes and target.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag}: {str(target)!r} must end in {', '.join(suffixes[:-1])}"
                          f"{' or ' if len(suffixes) > 1 else ''}{suffixes[-1]}")
    if target.is_dir():
        raise ConfigError(f"{flag}: {str(target)!r} is a folder; give the path of a file (in it or elsewhere)")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{flag}: {str(target)!r} exists and is not writable; choose another path")
    _probe(flag, target.parent, target)
    return target


def check_output_folder(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` as a Path if files can be written into it (created if missing); else ConfigError naming ``flag``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag}: {str(folder)!r} is a file; give a folder to write into")
    _probe(flag, folder, folder)
    return folder
