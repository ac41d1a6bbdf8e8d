"""Live training progress: a rich progress bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


@dataclass(frozen=True)
class ProgressHooks:
    """How a caller that runs many trainings (a sweep) takes part in each run's progress display.

    `display`: a live rich display the run adds its own bar to (and removes at the end) instead of
    starting one; `on_tokens`: called with the run's tokens_seen after every step.
    """

    display: Progress | None = None
    on_tokens: Callable[[int], None] | None = None


def progress_columns() -> tuple:
    """The columns of every bar: label, bar, tokens, an info text (tokens/s and loss for a run), ETA."""
    return (TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn())


class TrainingProgress:
    """Shows tokens seen / budget, tokens per second, the latest loss and the ETA."""

    def __init__(self, label: str, total_tokens: int, start_tokens: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, plain_interval_seconds: float = 15.0,
                 hooks: ProgressHooks | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total_tokens = total_tokens
        self.plain_interval_seconds = plain_interval_seconds
        self._last_plain = 0.0
        self._bar: Progress | None = None
        self._owns_bar = False
        self._on_tokens = hooks.on_tokens if hooks else None
        if enabled and hooks is not None and hooks.display is not None:
            self._bar = hooks.display
        elif enabled and self.stream.isatty():
            self._bar = Progress(*progress_columns(), console=Console(file=self.stream), transient=False)
            self._owns_bar = True
            self._bar.start()
        if self._bar is not None:
            self._task = self._bar.add_task(label, total=total_tokens, completed=start_tokens, info="")
        self.label = label

    def update(self, tokens_seen: int, loss: float, tokens_per_second: float) -> None:
        """Report the state after an optimiser step."""
        if self._on_tokens is not None:
            self._on_tokens(tokens_seen)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=tokens_seen,
                             info=f"{tokens_per_second:,.0f} tok/s  loss {loss:.4f}")
            return
        now = time.monotonic()
        if now - self._last_plain >= self.plain_interval_seconds or tokens_seen >= self.total_tokens:
            self._last_plain = now
            eta = (self.total_tokens - tokens_seen) / tokens_per_second if tokens_per_second > 0 else 0.0
            self.log(f"{tokens_seen:,}/{self.total_tokens:,} tok  {tokens_per_second:,.0f} tok/s  "
                     f"loss {loss:.4f}  ETA {eta:,.0f} s")

    def log(self, message: str) -> None:
        """Print one line above the bar (or plainly)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message)
        else:
            print(f"[{self.label}] {message}", file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the live display (or take this run's bar off a shared one)."""
        if self._bar is not None:
            if self._owns_bar:
                self._bar.stop()
            else:
                self._bar.remove_task(self._task)
            self._bar = None
