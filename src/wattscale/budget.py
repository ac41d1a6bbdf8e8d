"""The exact token budget, turned into optimiser steps.

A full step consumes `batch_size` sequences of `seq_len` tokens. When the budget is not a
multiple of `batch_size * seq_len`, one last, smaller step takes ceil(remainder / seq_len)
sequences and masks every target past the remainder (ignore index -100). So the number of tokens
that contribute to the loss is exactly the budget; the masked tail of the last sequence is
computed in the forward pass but contributes nothing, and causal attention keeps it from
influencing the counted positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class StepPlan:
    """How a token budget splits into optimiser steps."""

    tokens_budget: int
    batch_size: int
    seq_len: int

    @property
    def tokens_per_full_step(self) -> int:
        """Tokens in a full step (batch_size * seq_len)."""
        return self.batch_size * self.seq_len

    @property
    def full_steps(self) -> int:
        """Number of full steps."""
        return self.tokens_budget // self.tokens_per_full_step

    @property
    def remainder_tokens(self) -> int:
        """Tokens left for the final partial step (0 if the budget divides evenly)."""
        return self.tokens_budget % self.tokens_per_full_step

    @property
    def total_steps(self) -> int:
        """All optimiser steps, including a partial last one."""
        return self.full_steps + (1 if self.remainder_tokens else 0)

    def tokens_in_step(self, step: int) -> int:
        """Tokens that count towards the budget in step `step` (0-based)."""
        return self.tokens_per_full_step if step < self.full_steps else self.remainder_tokens

    def sequences_in_step(self, step: int) -> int:
        """Sequences fed to the model in step `step`."""
        return -(-self.tokens_in_step(step) // self.seq_len)

    def tokens_before_step(self, step: int) -> int:
        """Tokens seen before step `step` starts."""
        partial = self.remainder_tokens if step > self.full_steps else 0
        return min(step, self.full_steps) * self.tokens_per_full_step + partial


def mask_targets(targets: torch.Tensor, counted_tokens: int) -> torch.Tensor:
    """Set every target position at or past `counted_tokens` (row-major) to IGNORE_INDEX."""
    n_seq, seq_len = targets.shape
    if counted_tokens >= n_seq * seq_len:
        return targets
    flat = targets.clone().view(-1)  # [n_seq * seq_len]
    flat[counted_tokens:] = IGNORE_INDEX
    return flat.view(n_seq, seq_len)
