"""The next step's batch, made while the current step runs (CUDA), from pinned host memory.

A step's batch is a pure function of its position in the stream (the step and its first sequence), so a
batch made ahead is the batch the step would have made itself: `BatchPrefetcher.batch` returns exactly
the same tensors in the same order, ahead or not, and a resumed session simply starts without one made
ahead. On CUDA the rows are pinned, so `training_step`'s ``.to(device, non_blocking=True)`` copies really
are asynchronous, and one background thread makes step k+1's batch while the device runs step k. On a CPU
nothing changes: no thread (it would compete with the compute threads) and no pinning.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from wattscale.budget import StepPlan

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), int64 [rows, T] each
LoadBatch = Callable[[int, int, int], Batch]  # (first_sequence, n_sequences, n_tokens) -> batch


def pin(batch: Batch) -> Batch:
    """The batch in page-locked host memory (CUDA copies from it without blocking the host)."""
    return batch[0].pin_memory(), batch[1].pin_memory()


class BatchPrefetcher:
    """Batches of a `StepPlan` from `load`, optionally pinned (`pin_batch`) and made one step ahead (`ahead`)."""

    def __init__(self, plan: StepPlan, load: LoadBatch, *, ahead: bool = False,
                 pin_batch: Callable[[Batch], Batch] | None = None) -> None:
        self.plan, self._load, self._pin = plan, load, pin_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wattscale-batches") if ahead else None
        self._next: tuple[tuple[int, int], Future[Batch]] | None = None

    @classmethod
    def for_device(cls, plan: StepPlan, load: LoadBatch, device: torch.device) -> BatchPrefetcher:
        """Ahead and pinned on CUDA; as before (made when needed, not pinned) anywhere else."""
        cuda = device.type == "cuda"
        return cls(plan, load, ahead=cuda, pin_batch=pin if cuda else None)

    def batch(self, step: int, first_sequence: int) -> Batch:
        """Step `step`'s batch, starting at sequence `first_sequence`; then starts making the next step's."""
        key = (step, first_sequence)
        made = None
        if self._next is not None:
            next_key, future = self._next
            self._next = None
            if next_key == key:
                made = future.result()
            else:
                future.cancel()
        if made is None:
            made = self._make(key)
        if self._pool is not None and step + 1 < self.plan.total_steps:
            following = (step + 1, first_sequence + self.plan.sequences_in_step(step))
            self._next = (following, self._pool.submit(self._make, following))
        return made

    def close(self) -> None:
        """Stop the background thread (a batch being made is finished and dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._next = None, None

    def _make(self, key: tuple[int, int]) -> Batch:
        step, first_sequence = key
        batch = self._load(first_sequence, self.plan.sequences_in_step(step), self.plan.tokens_in_step(step))
        return self._pin(batch) if self._pin is not None else batch
