"""Training sequences from a token shard, as a pure function of (seed, sequence index).

The shard is cut into non-overlapping windows of seq_len + 1 tokens, window i starting at token
i * seq_len (consecutive windows share one token: the last target of one is the first input of the
next). Global sequence index g lies in epoch g // n_windows and reads window
perm(seed, epoch)[g % n_windows], where perm is `np.random.default_rng([seed, epoch]).permutation`.
So every window appears exactly once per epoch, each epoch in a fresh order, and a resumed run
needs only the number of sequences already consumed to continue the same stream.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from wattscale.errors import DataError

from .shards import TokenShard


def n_windows(shard: TokenShard, seq_len: int) -> int:
    """Number of seq_len + 1 token windows in the shard (0 when it is shorter than that)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return max(0, (len(shard) - 1) // seq_len)


def training_subset(shard: TokenShard, data_tokens: int | None) -> TokenShard:
    """The first `data_tokens` training tokens (plus the one target after them); the whole shard for None.

    A fixed prefix, not a sample, so that a 500K-token set is contained in the 1M-token set of the
    same study (nested training sets, as in a token-count study). Raises DataError when the shard
    is too short.
    """
    if data_tokens is None:
        return shard
    if data_tokens + 1 > len(shard):
        raise DataError(f"train.data_tokens: {data_tokens:,} unique tokens requested but the training split has "
                        f"{len(shard):,}; lower --data-tokens or use more data (e.g. a larger --synthetic-mb)")
    return TokenShard(path=shard.path, tokens=shard.tokens[:data_tokens + 1], vocab_size=shard.vocab_size)


def sequence_batch(shard: TokenShard, seq_len: int, seed: int, first_sequence: int,
                   n_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences first_sequence .. first_sequence + n_sequences - 1 as int64 (inputs, targets), [n, seq_len] each.

    targets[:, t] == inputs[:, t + 1] within a window: the next-token labels.
    """
    if first_sequence < 0 or n_sequences < 0:
        raise ValueError(f"first_sequence and n_sequences must be >= 0, got {first_sequence}, {n_sequences}")
    windows = n_windows(shard, seq_len)
    if windows == 0:
        raise DataError(f"data: shard {shard.path} has {len(shard)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                        f"use more data or a shorter sequence length")
    sequence_ids = np.arange(first_sequence, first_sequence + n_sequences, dtype=np.int64)
    epochs, positions = np.divmod(sequence_ids, windows)
    window_ids = np.empty_like(sequence_ids)
    for epoch in np.unique(epochs):  # a batch spans at most a few epochs
        in_epoch = epochs == epoch
        window_ids[in_epoch] = _permutation(windows, seed, int(epoch))[positions[in_epoch]]
    # [n, 1] + [1, seq_len + 1] -> token offsets [n, seq_len + 1]
    offsets = window_ids[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    tokens = torch.from_numpy(np.asarray(shard.tokens[offsets], dtype=np.int64))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


@lru_cache(maxsize=4)
def _permutation(windows: int, seed: int, epoch: int) -> np.ndarray:
    """The window order of one epoch; cached since every batch of an epoch needs the same one."""
    order = np.random.default_rng([seed, epoch]).permutation(windows)
    order.flags.writeable = False  # shared by the cache
    return order
