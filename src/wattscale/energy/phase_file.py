"""Phases marked by a measured command through a file of lines: how `wattscale measure` learns them.

The format, one line per event, appended (and flushed) by the command while it runs::

    PHASE [TOKENS [STEPS]]

- ``train`` — from now on the command is in phase ``train``;
- ``train 4096`` — the same, and count 4,096 tokens (one step) in it; ``train 4096 2`` counts two steps;
- ``other`` — leave the current phase (time outside every phase is ``other``);
- blank lines and lines starting with ``#`` are skipped.

PHASE follows `wattscale.Monitor`'s rule (lowercase, a letter first, then letters, digits, ``_`` or ``-``,
at most 32 characters; ``idle`` is kept for the baseline). A line that breaks the format is noted in the
measurement's notes and skipped; it never stops the measurement.

A `wattscale.Monitor` inside the command writes this file by itself when ``$WATTSCALE_PHASE_FILE`` names
it (only on rank 0 under torchrun, since every rank runs the same phases and counts the same tokens), so
the phases it marks become the measurement's. Any other program can append the same lines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from wattscale.energy.measurement import IDLE_PHASE, OTHER_PHASE
from wattscale.limits import MAX_INT64

PHASE_FILE_ENV = "WATTSCALE_PHASE_FILE"
POLL_S = 0.01  # how often the parent looks for new lines: phase boundaries lag the command's by about this
MAX_LINE_CHARS = 200


@dataclass(frozen=True)
class PhaseLine:
    """One parsed line: the phase (``other`` leaves phases), tokens and steps to count in it."""

    phase: str
    tokens: int = 0
    steps: int = 0


def parse_line(text: str, is_phase_name: Callable[[str], bool]) -> PhaseLine | str | None:
    """A line as a PhaseLine, None for a blank or comment line, or a one-line reason it is not valid."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    shown = text if len(text) <= 60 else text[:57] + "..."
    parts = text.split()
    if len(parts) > 3 or len(text) > MAX_LINE_CHARS:
        return f"{shown!r}: expected PHASE [TOKENS [STEPS]]"
    phase = parts[0]
    if phase == IDLE_PHASE or (phase != OTHER_PHASE and not is_phase_name(phase)):
        return (f"{shown!r}: {phase!r} is not a phase name (lowercase letters, digits, _ or -, a letter first, "
                "at most 32 characters; 'idle' is kept for the baseline)")
    numbers = []
    for label, value in zip(("TOKENS", "STEPS"), parts[1:], strict=False):
        if not value.isdigit() or int(value) > MAX_INT64:
            return f"{shown!r}: {label} must be a whole number >= 0 (below 2**63), got {value!r}"
        numbers.append(int(value))
    if not numbers:
        return PhaseLine(phase)
    return PhaseLine(phase, numbers[0], numbers[1] if len(numbers) > 1 else 1)


class PhaseFileWriter:
    """The command's side: appends a line per phase change and per step (used by `Monitor`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed in close)
        self.error: str | None = None

    @classmethod
    def from_env(cls) -> PhaseFileWriter | None:
        """A writer for $WATTSCALE_PHASE_FILE, or None when it is unset or this is not rank 0."""
        path = os.environ.get(PHASE_FILE_ENV)
        if not path or os.environ.get("RANK", "0") != "0":
            return None
        try:
            return cls(path)
        except OSError:
            return None  # the measuring parent then sees one phase; never fail the measured code for it

    def write(self, phase: str, tokens: int | None = None, steps: int | None = None) -> None:
        """Append `phase` (and the tokens and steps to count in it); a failed write disables the writer."""
        if self._file is None:
            return
        line = phase if tokens is None else f"{phase} {tokens} {steps if steps is not None else 1}"
        try:
            self._file.write(line + "\n")  # line-buffered: flushed at the newline
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


class PhaseFileTail:
    """The parent's side: a thread that reads lines appended to `path` (from its size at start) every `poll_s`.

    `on_line(text, number)` runs on the thread for each complete line; `stop()` reads what is left (a last
    line without a newline included) and joins the thread.
    """

    def __init__(self, path: Path, on_line: Callable[[str, int], None], poll_s: float = POLL_S) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (closed in stop)
        self._file.seek(0, os.SEEK_END)
        self._on_line = on_line
        self._poll_s = poll_s
        self._pending = b""
        self._number = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wattscale-phase-tail", daemon=True)

    def start(self) -> PhaseFileTail:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._read()

    def _read(self, final: bool = False) -> None:
        data = self._file.read()
        if data:
            self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if final and self._pending:
            lines, self._pending = [*lines, self._pending], b""
        for raw in lines:
            self._number += 1
            self._on_line(raw.decode("utf-8", errors="replace"), self._number)

    def stop(self) -> None:
        """Stop the thread, then read the rest of the file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self._read(final=True)
        finally:
            self._file.close()
