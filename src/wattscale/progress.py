"""Live training progress: a rich progress bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """Shows tokens seen / budget, tokens per second, the latest loss and the ETA."""

    def __init__(self, label: str, total_tokens: int, start_tokens: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, plain_interval_seconds: float = 15.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total_tokens = total_tokens
        self.plain_interval_seconds = plain_interval_seconds
        self._last_plain = 0.0
        self._bar: Progress | None = None
        if enabled and self.stream.isatty():
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
                TextColumn("{task.fields[tok_s]:,.0f} tok/s"), TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(), console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task(label, total=total_tokens, completed=start_tokens,
                                            tok_s=0.0, loss="-")
            self._bar.start()
        self.label = label

    def update(self, tokens_seen: int, loss: float, tokens_per_second: float) -> None:
        """Report the state after an optimiser step."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=tokens_seen, tok_s=tokens_per_second, loss=f"{loss:.4f}")
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
        """Stop the live display."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
