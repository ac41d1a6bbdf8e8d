"""Data: corpora, tokenizer, cached token shards, and the training sequence stream.

    from wattscale.data import DataConfig, prepare_data, sequence_batch
    data = prepare_data(DataConfig(source="synthetic"), vocab_size=4096, cache_dir=Path(".wattscale_cache"))
    inputs, targets = sequence_batch(data.train, seq_len=512, seed=0, first_sequence=0, n_sequences=16)
"""

from .batches import n_windows, sequence_batch, training_subset
from .prepare import DataConfig, PreparedData, data_fingerprint, open_cached_data, prepare_data
from .shards import TokenShard
from .synthetic import generate_stories

__all__ = [
    "DataConfig",
    "PreparedData",
    "TokenShard",
    "data_fingerprint",
    "generate_stories",
    "n_windows",
    "open_cached_data",
    "prepare_data",
    "sequence_batch",
    "training_subset",
]
