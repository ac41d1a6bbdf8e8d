"""Validation loss and perplexity on a fixed validation set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from wattscale.budget import IGNORE_INDEX
from wattscale.data import TokenShard
from wattscale.errors import DataError
from wattscale.model import Llama


@dataclass(frozen=True)
class Evaluation:
    """Mean next-token cross-entropy (nats/token) over `tokens` validation tokens, and exp of it."""

    val_loss: float
    val_ppl: float
    tokens: int


def validation_windows(shard: TokenShard, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The fixed validation set: the first non-overlapping (seq_len+1)-token windows of the shard.

    Returns int64 [n_windows, seq_len + 1]; the same windows are used at every evaluation, so
    losses at different token counts are comparable.
    """
    available = (len(shard) - 1) // seq_len
    n = min(available, max(1, max_tokens // seq_len))
    if n < 1:
        raise DataError(f"data: the validation split has {len(shard)} tokens, fewer than one sequence "
                        f"of {seq_len + 1}; use more data or a larger data.val_fraction")
    starts = np.arange(n) * seq_len
    rows = np.stack([np.asarray(shard.tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)


@torch.no_grad()
def evaluate(model: Llama, windows: torch.Tensor, batch_size: int, device: torch.device,
             autocast_dtype: torch.dtype | None) -> Evaluation:
    """Mean token loss of `model` over `windows` (as built by `validation_windows`)."""
    inputs, targets = window_pairs(windows)
    return evaluation_from_sums(loss_and_tokens(model, inputs, targets, batch_size, device, autocast_dtype))


def window_pairs(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation windows [n, T+1] as (inputs, targets), [n, T] each: every token predicts the next."""
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def loss_and_tokens(model: Llama, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                    device: torch.device, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """[summed token loss, counted tokens] of `model` on the rows of `inputs`/`targets` ([n, T] each), float64
    on `device`; targets equal to IGNORE_INDEX do not count. Read once by the caller: no host sync per batch.

    A forward runs per `batch_size` rows, also for rows that count nothing (FSDP gathers in every forward, so
    ranks of a sharded evaluation feed the same number of batches).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start:start + batch_size].to(device)  # [b, T]
        y = targets[start:start + batch_size].to(device)  # [b, T]
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            # The chunked loss never holds [b*T, vocab] logits: evaluation memory stays flat in vocab.
            loss = model.loss(x, y, reduction="sum", ignore_index=IGNORE_INDEX)
        sums[0] += loss.double()
        sums[1] += (y != IGNORE_INDEX).sum()
    model.train(was_training)
    return sums


def evaluation_from_sums(sums: torch.Tensor) -> Evaluation:
    """The Evaluation of a [summed loss, counted tokens] pair (as `loss_and_tokens` returns, or its sum over ranks)."""
    total_loss, total_tokens = sums.tolist()
    mean = total_loss / total_tokens
    return Evaluation(val_loss=mean, val_ppl=math.exp(mean) if mean < 700 else math.inf, tokens=int(total_tokens))
