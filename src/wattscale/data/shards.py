"""Token shards: a flat array of token ids on disk behind a fixed-size header, read as a memmap.

File layout (little-endian), `HEADER_BYTES` = 64 bytes of header, then the raw tokens:

    magic        8 bytes   b"WATTSTOK"
    version      uint32    SHARD_FORMAT_VERSION
    dtype code   uint32    1 = uint16, 2 = uint32
    n_tokens     uint64
    vocab_size   uint64
    header_bytes uint32    offset of the first token (64)
    padding      28 bytes  zeros

uint16 holds every id when vocab_size <= 65536, else uint32.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wattscale.errors import DataError

MAGIC = b"WATTSTOK"
SHARD_FORMAT_VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQI28x")
_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
assert _HEADER.size == HEADER_BYTES


@dataclass(frozen=True, eq=False)
class TokenShard:
    """Token ids of one split: `tokens` is a read-only np.memmap (uint16 or uint32) of the shard file."""

    path: Path
    tokens: np.ndarray
    vocab_size: int

    def __len__(self) -> int:
        """Number of tokens."""
        return int(self.tokens.shape[0])


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return _DTYPES[1] if vocab_size <= 1 << 16 else _DTYPES[2]


def write_shard(path: Path, chunks: Iterable[np.ndarray], vocab_size: int) -> int:
    """Write token chunks, in order, as one shard; returns the token count. Ids must be < vocab_size."""
    dtype = token_dtype(vocab_size)
    dtype_code = next(code for code, d in _DTYPES.items() if d == dtype)
    n_tokens = 0
    with path.open("wb") as f:
        f.write(b"\0" * HEADER_BYTES)  # rewritten below, once the count is known
        for chunk in chunks:
            chunk = np.asarray(chunk)
            if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{chunk.min()}, {chunk.max()}]")
            f.write(chunk.astype(dtype, copy=False).tobytes())
            n_tokens += int(chunk.size)
        f.seek(0)
        f.write(_HEADER.pack(MAGIC, SHARD_FORMAT_VERSION, dtype_code, n_tokens, vocab_size, HEADER_BYTES))
        f.flush()
        os.fsync(f.fileno())  # the cache directory is renamed into place next; its shards must be on disk
    return n_tokens


def read_shard(path: Path) -> TokenShard:
    """Open a shard as a read-only memmap, checking its header against the file size (DataError if corrupt)."""
    def corrupt(why: str) -> DataError:
        return DataError(f"data: corrupt shard {path} ({why}); delete {path.parent} to rebuild the data cache")

    if not path.is_file():
        raise corrupt("file missing")
    file_bytes = path.stat().st_size
    if file_bytes < HEADER_BYTES:
        raise corrupt(f"{file_bytes} bytes, shorter than the {HEADER_BYTES}-byte header")
    with path.open("rb") as f:
        magic, version, dtype_code, n_tokens, vocab_size, header_bytes = _HEADER.unpack(f.read(HEADER_BYTES))
    if magic != MAGIC:
        raise corrupt(f"magic {magic!r}, expected {MAGIC!r}")
    if version != SHARD_FORMAT_VERSION:
        raise corrupt(f"format version {version}, expected {SHARD_FORMAT_VERSION}")
    if dtype_code not in _DTYPES or header_bytes != HEADER_BYTES:
        raise corrupt(f"dtype code {dtype_code}, header length {header_bytes}")
    dtype = _DTYPES[dtype_code]
    expected_bytes = header_bytes + n_tokens * dtype.itemsize
    if file_bytes != expected_bytes:
        raise corrupt(f"{file_bytes} bytes but the header says {n_tokens} tokens, i.e. {expected_bytes} bytes")
    if n_tokens == 0:
        raise corrupt("no tokens")
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=header_bytes, shape=(n_tokens,))
    return TokenShard(path=path, tokens=tokens, vocab_size=int(vocab_size))
