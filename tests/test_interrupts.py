"""wattscale.interrupts: the CLI's SIGINT/SIGTERM handling records the signal, and puts the handlers back."""

from __future__ import annotations

import os
import signal

import pytest

from wattscale.interrupts import raise_if_interrupted, recorded_interrupts


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
