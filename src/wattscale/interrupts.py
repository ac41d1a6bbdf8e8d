"""Ctrl-C and SIGTERM that a long job cannot lose.

Python turns SIGINT into a KeyboardInterrupt raised in the main thread at the next bytecode. When that
bytecode belongs to a weakref callback or a ``__del__`` the garbage collector is running, CPython prints
"Exception ignored in ..." and drops the exception: the interrupt is gone and training goes on. SQLAlchemy's
event registry has such callbacks and a training run creates connections all the time, so about one Ctrl-C in
five was lost (measured: a run interrupted right after its first evaluation, 15 tries).

The handler installed here raises KeyboardInterrupt as before and also records the signal; the training
loop calls :func:`raise_if_interrupted` at every step, so a swallowed interrupt stops the run one step later.

A KeyboardInterrupt raised inside a store transaction can also land where nothing rolls it back: in
contextlib's ``__exit__`` of the store's transaction block, before the block's generator resumes. The write
transaction then stays open, holding SQLite's write lock, for as long as the exception's traceback keeps the
generator alive: exactly while the run records itself "interrupted", which failed 30 s later with "database is
locked" (about one Ctrl-C in 30; reproduced deterministically in tests/test_interrupts.py). Inside
:class:`deferred_interrupts` (each store transaction is) the handler only records the signal, and the block
raises it when it ends, after its commit or rollback.

The record is process state by nature (a signal is delivered to the process); it lives in this module alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_pending_signal: int | None = None  # the signal handled since recorded_interrupts() began (raised or not)
_deferred_signal: int | None = None  # a signal that arrived inside a deferred_interrupts block, not raised yet
_deferring_depth = 0  # the main thread's nesting of deferred_interrupts blocks


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending_signal, _deferred_signal
    _pending_signal = signum
    if _deferring_depth > 0:
        _deferred_signal = signum
        return
    raise KeyboardInterrupt


class deferred_interrupts:  # noqa: N801 - used as a statement, like contextlib's
    """A block that a Ctrl-C must not cut in two (a store transaction): in the main thread, a SIGINT or SIGTERM
    that arrives inside is raised as KeyboardInterrupt when the block ends (unless it ends with an exception of
    its own). Elsewhere (other threads, or without :func:`recorded_interrupts`) it changes nothing."""

    def __enter__(self) -> None:
        global _deferring_depth
        self._counted = threading.current_thread() is threading.main_thread()
        if self._counted:
            _deferring_depth += 1

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        global _deferring_depth, _deferred_signal
        if not self._counted:
            return
        _deferring_depth -= 1
        if _deferring_depth == 0 and _deferred_signal is not None:
            _deferred_signal = None
            if exc_type is None:
                raise KeyboardInterrupt


@contextmanager
def recorded_interrupts() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM (a scheduler's stop) raise a recorded KeyboardInterrupt. On exit the earlier
    handlers are back and the record is cleared.

    SIGINT stays ignored where the process was started with it ignored (a background job of a script).
    """
    global _pending_signal, _deferred_signal
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    _pending_signal = _deferred_signal = None
    signal.signal(signal.SIGTERM, _on_signal)
    if previous[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set from outside Python; left as it is
                signal.signal(number, handler)
        _pending_signal = _deferred_signal = None


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a handled signal arrived and its KeyboardInterrupt may have been swallowed."""
    if _pending_signal is not None:
        raise KeyboardInterrupt
