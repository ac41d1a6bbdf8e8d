"""Turn a data source into cached train/validation token shards and a tokenizer.

`prepare_data` tokenizes once and writes ``<cache_dir>/<cache_key>/{train.bin, val.bin,
tokenizer.json, meta.json}``. The cache key is a hash of everything the tokens depend on: the
source content (file bytes' sha256; generator seed, size and version for the synthetic corpus; the
dataset id for ``hf:``), the tokenizer (its file's sha256, or the BPE recipe), vocab_size,
val_fraction, text_field and the format versions. A cache is built in a temporary directory and
renamed into place, so an interrupted preparation never leaves a directory that looks valid.

The validation split is by document and deterministic: with fraction f, document i (0-based, in
source order) is held out when floor((i + 1) * f) > floor(i * f). That holds out exactly
floor(n * f) documents, evenly spread over the source (so a directory of files sorted by name is
sampled throughout, not only its last file), without a second pass or a random state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from wattscale.errors import ConfigError, DataError
from wattscale.identity import identity_field

from .shards import SHARD_FORMAT_VERSION, TokenShard, read_shard, token_dtype, write_shard
from .sources import TextSource, file_sha256, is_local_path, open_source
from .tokenizer import BPE_RECIPE, check_vocab_size, end_of_text_id, load_tokenizer, train_bpe

CACHE_FORMAT_VERSION = 1
_ENCODE_BATCH_DOCUMENTS = 1024


# The generated corpus is for demonstrations and tests; 10 GB of it is already minutes of generation.
MAX_SYNTHETIC_MB = 10_000


LOCAL_DATA = "local"  # how a file or folder enters a run's identity: its content is in the data fingerprint


def location_free(value: str | None) -> str | None:
    """A data setting as it enters a run's id: a local path as 'local' only (its files' names and sha256 are
    hashed into the data fingerprint), so the same text read from another folder or checkout is the same run."""
    return LOCAL_DATA if is_local_path(value) else value


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from, how it is tokenized and how validation text is held out."""

    # "synthetic" | a .txt/.jsonl/.parquet file or a directory of them | "hf:<dataset>[:<config>][@<split>]"
    source: str = identity_field("synthetic", identify=location_free)
    synthetic_mb: float = identity_field(4.0)  # size of the generated corpus, in MB (10**6 bytes)
    synthetic_seed: int = identity_field(0)  # seed of the generated corpus
    text_field: str = identity_field("text")  # jsonl field / parquet or hf column holding the text
    # path to a tokenizer.json; None -> train a byte-level BPE on the train split
    tokenizer: str | None = identity_field(None, identify=location_free)
    val_fraction: float = identity_field(0.05)  # share of documents held out for validation (ignored with val_source)
    val_source: str | None = identity_field(None, identify=location_free)  # a separate validation source, not a split

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.source, str) or not self.source:
            problems.append(f"data.source: must be 'synthetic', a path or 'hf:<dataset>', got {self.source!r}")
        if not 0 < self.synthetic_mb <= MAX_SYNTHETIC_MB:
            problems.append(f"data.synthetic_mb: must lie in (0, {MAX_SYNTHETIC_MB:,}] MB, got {self.synthetic_mb}; "
                            "for more text than that, train on a real corpus (--data PATH)")
        if not self.text_field:
            problems.append("data.text_field: must name a field, got an empty string")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"data.val_fraction: must be in [0, 1), got {self.val_fraction}")
        elif self.val_fraction == 0 and self.val_source is None:
            problems.append("data.val_fraction: 0 leaves no validation data; set it in (0, 1) or set data.val_source")
        if self.val_source == "synthetic":
            problems.append("data.val_source: 'synthetic' would repeat the training stories; give a file or "
                            "'hf:<dataset>', or leave it unset to split data.source")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, eq=False)
class PreparedData:
    """Token shards and tokenizer ready for training, and where they came from."""

    train: TokenShard
    val: TokenShard
    tokenizer_path: Path
    vocab_size: int
    cache_key: str
    source_description: str


def data_fingerprint(config: DataConfig, vocab_size: int) -> str:
    """The cache key `prepare_data` would use (a run's data fingerprint), without tokenizing anything.

    Reads (hashes) local files but never generates, trains or tokenizes; same errors as prepare_data
    for a missing source or a tokenizer of the wrong size.
    """
    return _resolve(config, vocab_size)[0]


def open_cached_data(config: DataConfig, vocab_size: int, cache_dir: Path) -> PreparedData | None:
    """The prepared data if it is already in the cache, else None (never builds)."""
    final_dir = Path(cache_dir) / data_fingerprint(config, vocab_size)
    return _load(final_dir, vocab_size) if final_dir.is_dir() else None


def _resolve(config: DataConfig, vocab_size: int) -> tuple[str, TextSource, TextSource | None, Tokenizer | None]:
    """(cache key, source, validation source, tokenizer or None) of a data config."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"model.vocab_size: must be a positive integer, got {vocab_size!r}")
    source = _open(config.source, config, "data.source")
    val_source = _open(config.val_source, config, "data.val_source") if config.val_source else None
    tokenizer, tokenizer_sha = None, None
    if config.tokenizer:
        tokenizer_path = Path(config.tokenizer).expanduser()
        tokenizer = load_tokenizer(tokenizer_path)
        check_vocab_size(tokenizer, vocab_size)
        tokenizer_sha = file_sha256(tokenizer_path)
    return cache_key(config, vocab_size, source, val_source, tokenizer_sha), source, val_source, tokenizer


def prepare_data(config: DataConfig, vocab_size: int, cache_dir: Path,
                 log: Callable[[str], None] | None = None) -> PreparedData:
    """Tokenize `config`'s source into cached shards once; later calls with the same inputs reuse them.

    Raises DataError for a missing, empty or malformed source, a tokenizer whose size is not
    `vocab_size`, a corpus too small for the BPE or the split, and a corrupt cache.
    """
    key, source, val_source, tokenizer = _resolve(config, vocab_size)
    cache_dir = Path(cache_dir)
    final_dir = cache_dir / key
    if not final_dir.is_dir():
        _log(log, f"preparing {source.description} -> {final_dir}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
        work_dir.chmod(0o755)  # mkdtemp makes it owner-only; the published cache should be readable like its parent
        try:
            started = time.perf_counter()
            meta = _build(work_dir, config, vocab_size, source, val_source, tokenizer)
            meta.update(cache_key=key, prepare_seconds=round(time.perf_counter() - started, 3))
            (work_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            _publish(work_dir, final_dir)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    else:
        _log(log, f"reusing cached data {final_dir}")
    return _load(final_dir, vocab_size)


def cache_key(config: DataConfig, vocab_size: int, source: TextSource, val_source: TextSource | None,
              tokenizer_sha: str | None) -> str:
    """16 hex digits of sha256 over everything the prepared tokens depend on."""
    parts = {
        "cache_format": CACHE_FORMAT_VERSION,
        "shard_format": SHARD_FORMAT_VERSION,
        "source": source.fingerprint,
        "val_source": val_source.fingerprint if val_source else None,
        "val_fraction": None if val_source else config.val_fraction,
        "tokenizer": tokenizer_sha or BPE_RECIPE,
        "vocab_size": vocab_size,
        "text_field": config.text_field,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def is_validation_document(index: int, val_fraction: float) -> bool:
    """Whether document `index` is held out: floor((index + 1) * f) > floor(index * f)."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def _open(spec: str, config: DataConfig, field: str) -> TextSource:
    """Open a source with the config's source settings."""
    return open_source(str(spec), text_field=config.text_field, synthetic_mb=config.synthetic_mb,
                       synthetic_seed=config.synthetic_seed, field=field)


def _build(out_dir: Path, config: DataConfig, vocab_size: int, source: TextSource,
           val_source: TextSource | None, tokenizer: Tokenizer | None) -> dict:
    """Write tokenizer.json, val.bin and train.bin into `out_dir`; returns the metadata for meta.json."""
    def train_documents() -> Iterator[str]:
        documents = source.iter_documents()
        if val_source is not None:
            return documents
        return (d for i, d in enumerate(documents) if not is_validation_document(i, config.val_fraction))

    def val_documents() -> Iterator[str]:
        if val_source is not None:
            return val_source.iter_documents()
        documents = source.iter_documents()
        return (d for i, d in enumerate(documents) if is_validation_document(i, config.val_fraction))

    if tokenizer is None:
        tokenizer = train_bpe(train_documents(), vocab_size)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    eot_id = end_of_text_id(tokenizer)
    # Validation first: an empty split is reported before the (longer) training shard is written.
    val_docs, val_tokens = _encode_to_shard(out_dir / "val.bin", val_documents(), tokenizer, eot_id, vocab_size)
    if val_docs == 0:  # a val_source with no documents fails when read, so this is the split
        raise DataError(f"data.val_fraction: the validation split is empty ({source.description} has too few "
                        f"documents for val_fraction {config.val_fraction}); raise data.val_fraction, add "
                        f"documents or set data.val_source")
    train_docs, train_tokens = _encode_to_shard(out_dir / "train.bin", train_documents(), tokenizer, eot_id,
                                                vocab_size)
    if train_docs == 0:
        raise DataError(f"data.source: the training split of {source.description} is empty; add documents "
                        f"or lower data.val_fraction")
    return {
        "cache_format": CACHE_FORMAT_VERSION,
        "source": source.description,
        "source_fingerprint": source.fingerprint,
        "val_source": val_source.description if val_source else None,
        "config": asdict(config),
        "tokenizer": config.tokenizer or f"trained {BPE_RECIPE}",
        "vocab_size": vocab_size,
        "end_of_text_id": eot_id,
        "token_dtype": token_dtype(vocab_size).name,
        "train": {"documents": train_docs, "tokens": train_tokens},
        "val": {"documents": val_docs, "tokens": val_tokens},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _encode_to_shard(path: Path, documents: Iterable[str], tokenizer: Tokenizer, eot_id: int,
                     vocab_size: int) -> tuple[int, int]:
    """Tokenize documents in batches, each followed by the end-of-text id; returns (documents, tokens)."""
    # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets, which we never use.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    n_documents = 0

    def chunks() -> Iterator[np.ndarray]:
        nonlocal n_documents
        batch: list[str] = []
        for document in documents:
            batch.append(document)
            if len(batch) == _ENCODE_BATCH_DOCUMENTS:
                yield _encode_batch(encode, batch, eot_id)
                n_documents += len(batch)
                batch = []
        if batch:
            yield _encode_batch(encode, batch, eot_id)
            n_documents += len(batch)

    n_tokens = write_shard(path, chunks(), vocab_size)
    return n_documents, n_tokens


def _encode_batch(encode: Callable, batch: list[str], eot_id: int) -> np.ndarray:
    """Token ids of a batch of documents, concatenated, each document followed by eot_id."""
    ids: list[int] = []
    for encoding in encode(batch, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eot_id)
    return np.array(ids, dtype=np.int64)


def _publish(work_dir: Path, final_dir: Path) -> None:
    """Rename the finished cache into place; if another process got there first, keep theirs."""
    try:
        os.replace(work_dir, final_dir)
    except OSError:
        if not final_dir.is_dir():
            raise


def _load(cache_dir: Path, vocab_size: int) -> PreparedData:
    """Open a finished cache directory, checking its shards' headers and vocab size."""
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"data: corrupt data cache {cache_dir} (meta.json: {e}); delete {cache_dir} to rebuild") from e
    tokenizer_path = cache_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise DataError(f"data: corrupt data cache {cache_dir} (no tokenizer.json); delete {cache_dir} to rebuild")
    shards = {name: read_shard(cache_dir / f"{name}.bin") for name in ("train", "val")}
    for shard in shards.values():
        if shard.vocab_size != vocab_size:
            raise DataError(f"data: shard {shard.path} was written for vocab_size {shard.vocab_size}, not "
                            f"{vocab_size}; delete {cache_dir} to rebuild")
    return PreparedData(train=shards["train"], val=shards["val"], tokenizer_path=tokenizer_path,
                        vocab_size=vocab_size, cache_key=meta.get("cache_key", cache_dir.name),
                        source_description=meta.get("source", "unknown"))


def _log(log: Callable[[str], None] | None, message: str) -> None:
    """Send a progress line to `log` when one is given."""
    if log is not None:
        log(message)
