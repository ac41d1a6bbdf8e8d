"""torch's intra-op thread count for one block of work, restored afterwards.

A library call (a training run, a law fit) that sets the count must not leave it changed for the caller's
later work, in a notebook or a test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with n torch threads (None: leave the setting alone), then restore the previous setting."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
