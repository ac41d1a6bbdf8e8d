"""wattscale.interrupts: the CLI's SIGINT/SIGTERM handling records the signal, and puts the handlers back."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from wattscale.interrupts import raise_if_interrupted, recorded_interrupts
from wattscale.store import Store, open_store


def test_a_signal_raises_and_stays_recorded_until_the_block_ends() -> None:
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt), recorded_interrupts():
        raise_if_interrupted()  # nothing recorded yet: no-op
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass  # swallowed, as a weakref callback would
        raise_if_interrupted()  # the record raises it again
    raise_if_interrupted()  # cleared on exit
    assert {number: signal.getsignal(number) for number in before} == before


def test_an_ignored_sigint_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script
    try:
        with recorded_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_at_the_end_of_a_store_write_leaves_no_write_lock(tmp_path: Path) -> None:
    """The signal (SIGTERM, handled as Ctrl-C) lands in contextlib's __exit__ of the store's transaction block,
    before the block's generator resumes (the window that kept SQLite's write lock while a run recorded itself
    interrupted): the write still commits, the KeyboardInterrupt comes after it, and another writer gets the
    lock at once."""
    exit_code = contextlib._GeneratorContextManager.__exit__.__code__
    transaction_code = Store._tx.__wrapped__.__code__
    armed = [True]

    def send_sigint_in_the_window(frame: Any, event: str, arg: Any) -> None:
        in_window = event == "call" and frame.f_code is exit_code
        if armed and in_window and frame.f_locals["self"].gen.gi_code is transaction_code:
            armed.clear()
            os.kill(os.getpid(), signal.SIGTERM)  # the same handler as Ctrl-C's (xdist workers ignore SIGINT)

    path = tmp_path / "s.db"
    with open_store(path) as store, recorded_interrupts():
        sys.setprofile(send_sigint_in_the_window)
        try:
            store.create_run({"run_id": "r1", "kind": "measured", "config_json": "{}", "config_hash": "x"})
        except KeyboardInterrupt:
            sys.setprofile(None)
            other = sqlite3.connect(path, timeout=0)  # while the exception is handled, as the trainer's is
            try:
                other.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the transaction were still open
                other.rollback()
            finally:
                other.close()
        else:
            pytest.fail("the Ctrl-C was not raised")
        finally:
            sys.setprofile(None)
        assert not armed and [r["run_id"] for r in store.list_runs()] == ["r1"]  # committed before the interrupt
