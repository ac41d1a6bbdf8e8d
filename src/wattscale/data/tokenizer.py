"""Tokenizers: train a byte-level BPE with Hugging Face `tokenizers`, or load a tokenizer.json.

The trained tokenizer is GPT-2 style: a ByteLevel pre-tokenizer and decoder (every byte sequence
round-trips, no unknown token), the full 256-byte initial alphabet, and `<|endoftext|>` as special
token id 0, which separates documents in the token shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wattscale.errors import DataError

END_OF_TEXT = "<|endoftext|>"
# Document separators looked for, in order, in a tokenizer given by path.
END_OF_TEXT_CANDIDATES = (END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>")
# Names the training recipe below in the data cache key: change it whenever the recipe changes.
BPE_RECIPE = "bytelevel-bpe-v1"
MIN_BPE_VOCAB = 257  # 256 byte tokens + <|endoftext|>


def train_bpe(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with exactly `vocab_size` tokens (DataError if the corpus is too small)."""
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(f"model.vocab_size: a byte-level BPE needs at least {MIN_BPE_VOCAB} tokens "
                        f"(256 bytes + {END_OF_TEXT}), got {vocab_size}; raise model.vocab_size")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once is noise, and would hide a corpus that is too small
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    trained = tokenizer.get_vocab_size(with_added_tokens=True)
    if trained != vocab_size:
        raise DataError(f"data.source: the training text is too small for a {vocab_size}-token BPE "
                        f"(it yields only {trained} tokens); use a larger corpus or a smaller model.vocab_size")
    return tokenizer


def load_tokenizer(path: Path, field: str = "data.tokenizer") -> Tokenizer:
    """Load a tokenizer.json written by Hugging Face `tokenizers` (or `transformers`)."""
    if not path.is_file():
        raise DataError(f"{field}: {path} does not exist; give the path to a tokenizer.json or leave "
                        f"{field} unset to train a BPE")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON or an unknown model
        raise DataError(f"{field}: cannot load {path} as a tokenizer.json ({e}); give a file saved by "
                        f"Hugging Face tokenizers") from e


def check_vocab_size(tokenizer: Tokenizer, vocab_size: int, field: str = "data.tokenizer") -> None:
    """DataError unless the tokenizer has exactly `vocab_size` tokens, naming both numbers and the fix."""
    n_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
    if n_tokens != vocab_size:
        raise DataError(f"{field}: tokenizer has {n_tokens} tokens but model.vocab_size is {vocab_size}; "
                        f"use a tokenizer with {vocab_size} tokens or set model.vocab_size = {n_tokens}")


def end_of_text_id(tokenizer: Tokenizer, field: str = "data.tokenizer") -> int:
    """The id of the document separator token (the first of `END_OF_TEXT_CANDIDATES` it has)."""
    for token in END_OF_TEXT_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise DataError(f"{field}: tokenizer has none of the end-of-text tokens {', '.join(END_OF_TEXT_CANDIDATES)}; "
                    f"use a tokenizer with one of them to separate documents")
