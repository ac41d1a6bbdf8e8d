"""Validation loss and perplexity on a fixed validation set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

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
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]  # [b, T] each
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            # The chunked loss never holds [b*T, vocab] logits: evaluation memory stays flat in vocab.
            loss = model.loss(inputs, targets, reduction="sum")
        total_loss += loss.item()
        total_tokens += targets.numel()
    model.train(was_training)
    mean = total_loss / total_tokens
    return Evaluation(val_loss=mean, val_ppl=math.exp(mean) if mean < 700 else math.inf, tokens=total_tokens)
