"""Tests for wattscale.data: corpus generator, sources, tokenizer, shards, cache, sequence stream."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from wattscale.data import (
    DataConfig,
    PreparedData,
    TokenShard,
    generate_stories,
    n_windows,
    prepare_data,
    sequence_batch,
)
from wattscale.data import prepare as prepare_module
from wattscale.data.prepare import is_validation_document
from wattscale.data.shards import HEADER_BYTES, read_shard, write_shard
from wattscale.data.sources import open_source
from wattscale.errors import ConfigError, DataError

VOCAB = 512
SYNTHETIC_MB = 0.3


def _tinystories_dir() -> Path:
    env = os.environ.get("WATTSCALE_TINYSTORIES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> PreparedData:
    return prepare_data(DataConfig(synthetic_mb=SYNTHETIC_MB), VOCAB, tmp_path_factory.mktemp("cache"))


def _documents(shard: TokenShard, eot_id: int = 0) -> list[np.ndarray]:
    """Split a shard's tokens at the end-of-text id (every document ends with one)."""
    tokens = np.asarray(shard.tokens, dtype=np.int64)
    ends = np.flatnonzero(tokens == eot_id)
    assert ends[-1] == len(tokens) - 1
    return np.split(tokens, ends + 1)[:-1]


def _shard(tmp_path: Path, tokens: np.ndarray, vocab_size: int, name: str = "t.bin") -> TokenShard:
    write_shard(tmp_path / name, [tokens], vocab_size)
    return read_shard(tmp_path / name)


# --- the synthetic corpus ---------------------------------------------------------------------------

def test_generator_is_deterministic_in_its_seed_and_reaches_the_size():
    a, b, c = generate_stories(200_000, seed=1), generate_stories(200_000, seed=1), generate_stories(200_000, seed=2)
    assert a == b
    assert a != c
    total_bytes = sum(len(s.encode()) for s in a)
    assert 200_000 <= total_bytes < 200_000 + max(len(s) for s in a)
    assert all(300 <= len(s) <= 1500 for s in a)
    assert all('"' in s for s in a[:50]), "stories carry dialogue"


def test_generator_is_independent_of_the_global_random_state():
    import random

    random.seed(1)
    a = generate_stories(20_000, seed=5)
    random.seed(2)
    assert generate_stories(20_000, seed=5) == a


def test_synthetic_corpus_has_structure_a_bigram_model_finds(synthetic):
    """Reference check independent of our LM: an interpolated bigram count model trained on the train
    tokens must beat the unigram entropy on the validation tokens by a wide margin."""
    train = np.asarray(synthetic.train.tokens, dtype=np.int64)
    val = np.asarray(synthetic.val.tokens, dtype=np.int64)
    unigram = np.bincount(train, minlength=VOCAB) + 1.0  # add-one, so unseen tokens stay finite
    unigram /= unigram.sum()
    unigram_bits = -np.log2(unigram[val]).mean()
    counts = np.zeros((VOCAB, VOCAB))
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    row = counts.sum(axis=1, keepdims=True)
    bigram = 0.9 * counts / np.maximum(row, 1.0) + 0.1 * unigram[None, :]
    bigram[row[:, 0] == 0] = unigram
    bigram_bits = -np.log2(bigram[val[:-1], val[1:]]).mean()
    assert unigram_bits > 6.0
    assert bigram_bits < 0.75 * unigram_bits


# --- tokenizer, split and shards end to end --------------------------------------------------------

def test_prepared_synthetic_data_round_trips_to_the_generated_stories(synthetic):
    stories = generate_stories(int(SYNTHETIC_MB * 1_000_000), seed=0)
    val_expected = [s for i, s in enumerate(stories) if is_validation_document(i, 0.05)]
    train_expected = [s for i, s in enumerate(stories) if not is_validation_document(i, 0.05)]
    assert len(val_expected) == int(len(stories) * 0.05)
    tokenizer = Tokenizer.from_file(str(synthetic.tokenizer_path))
    assert tokenizer.get_vocab_size() == VOCAB and tokenizer.token_to_id("<|endoftext|>") == 0
    train_docs, val_docs = _documents(synthetic.train), _documents(synthetic.val)
    assert len(train_docs) == len(train_expected) and len(val_docs) == len(val_expected)
    for got, expected in [(train_docs[0], train_expected[0]), (train_docs[-1], train_expected[-1]),
                          (val_docs[0], val_expected[0]), (val_docs[-1], val_expected[-1])]:
        assert tokenizer.decode(got[:-1].tolist()) == expected
    assert synthetic.train.tokens.dtype == np.uint16
    assert synthetic.vocab_size == VOCAB and "synthetic" in synthetic.source_description


def test_byte_level_tokenizer_round_trips_any_text(synthetic):
    tokenizer = Tokenizer.from_file(str(synthetic.tokenizer_path))
    for text in ["Lily saw a cat.", "  two  spaces\n\nand tabs\t!", "Café naïve 東京 🙂 ÿ", "x" * 300]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text
        assert max(ids) < VOCAB


def test_validation_split_holds_out_exactly_floor_n_times_fraction():
    for n, fraction in [(100, 0.05), (1000, 0.1), (7, 0.5), (3, 0.05)]:
        held_out = [i for i in range(n) if is_validation_document(i, fraction)]
        assert len(held_out) == int(n * fraction)


def test_given_tokenizer_is_used_and_vocab_mismatch_names_both_numbers(synthetic, tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("\n\n".join(generate_stories(60_000, seed=3)))
    config = DataConfig(source=str(text), tokenizer=str(synthetic.tokenizer_path))
    prepared = prepare_data(config, VOCAB, tmp_path / "cache")
    assert prepared.tokenizer_path.read_bytes() == synthetic.tokenizer_path.read_bytes()
    with pytest.raises(DataError, match=r"^data\.tokenizer: tokenizer has 512 tokens but model\.vocab_size is 4096"):
        prepare_data(config, 4096, tmp_path / "cache")


# --- sources -------------------------------------------------------------------------------------

def _read(spec: Path | str, **kwargs) -> list[str]:
    return list(open_source(str(spec), **kwargs).iter_documents())


def test_txt_blank_line_separated(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First story.\nSecond line.\n\n\n  \nSecond story.\n \nThird.\n")
    assert _read(path) == ["First story.\nSecond line.", "Second story.", "Third."]


def test_txt_endoftext_separated_keeps_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("One.\n\nStill one.\n<|endoftext|>\nTwo.\n<|endoftext|>\n\n<|endoftext|>\nThree, cut off")
    assert _read(path) == ["One.\n\nStill one.", "Two.", "Three, cut off"]


def test_jsonl_parquet_and_directory(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "Jsonl one.", "id": 1}\n\n{"text": "Jsonl two."}\n{"text": null}\n')
    pq.write_table(pa.table({"body": ["Parquet one.", "", "Parquet two."]}), tmp_path / "a.parquet")
    (tmp_path / "c.txt").write_text("Text one.\n\nText two.")
    (tmp_path / "notes.md").write_text("ignored: not a supported type")
    assert _read(tmp_path / "b.jsonl") == ["Jsonl one.", "Jsonl two."]
    assert _read(tmp_path / "a.parquet", text_field="body") == ["Parquet one.", "Parquet two."]
    (tmp_path / "b.jsonl").write_text('{"body": "Jsonl one."}\n')
    expected = ["Parquet one.", "Parquet two.", "Jsonl one.", "Text one.", "Text two."]  # files in name order
    assert _read(tmp_path, text_field="body") == expected


def test_separate_val_source(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"text": s}) + "\n" for s in generate_stories(60_000, seed=1)))
    val.write_text("".join(json.dumps({"text": s}) + "\n" for s in generate_stories(3_000, seed=2)))
    prepared = prepare_data(DataConfig(source=str(train), val_source=str(val)), VOCAB, tmp_path / "cache")
    tokenizer = Tokenizer.from_file(str(prepared.tokenizer_path))
    val_docs = _documents(prepared.val)
    assert [tokenizer.decode(d[:-1].tolist()) for d in val_docs] == generate_stories(3_000, seed=2)
    assert len(_documents(prepared.train)) == len(generate_stories(60_000, seed=1))


# --- errors name the field and the fix ---------------------------------------------------------------

def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name, content, text_field, pattern", [
    ("missing.txt", None, "text", r"^data\.source: .*missing\.txt does not exist"),
    ("a.csv", "a,b\n", "text", r"^data\.source: unsupported file type '\.csv'"),
    ("empty.txt", "", "text", r"^data\.source: .*empty\.txt is empty"),
    ("blank.txt", "\n \n<|endoftext|>\n\n", "text", r"^data\.source: no documents in"),
    ("bad.jsonl", '{"text": "ok"}\n\n{"text": oops}\n', "text", r"^data\.source: invalid JSON on line 3 of"),
    ("field.jsonl", '{"body": "x"}\n', "text", r"^data\.text_field: line 1 of .* has no field 'text' \(it has: body\)"),
    ("type.jsonl", '{"text": 5}\n', "text", r"^data\.text_field: 'text' in line 1 .* is a int"),
    ("junk.parquet", b"not parquet at all", "text", r"^data\.source: cannot read .* as parquet"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "text", r"^data\.source: .* is not UTF-8"),
])
def test_source_errors(tmp_path, name, content, text_field, pattern):
    path = tmp_path / name
    if content is not None:
        _write(path, content)
    with pytest.raises(DataError, match=pattern):
        prepare_data(DataConfig(source=str(path), text_field=text_field), VOCAB, tmp_path / "cache")


def test_parquet_missing_column_and_empty_directory(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"^data\.text_field: .* has no column 'text' \(it has: body\)"):
        _read(tmp_path / "a.parquet")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"^data\.source: directory .* has no \.txt/\.jsonl/\.parquet files"):
        _read(tmp_path / "sub")


def test_val_source_errors_name_val_source(tmp_path):
    train = _write(tmp_path / "t.txt", "\n\n".join(generate_stories(20_000, seed=0)))
    with pytest.raises(DataError, match=r"^data\.val_source: .*nope\.txt does not exist"):
        prepare_data(DataConfig(source=str(train), val_source=str(tmp_path / "nope.txt")), VOCAB, tmp_path / "c")


def test_hf_source_without_datasets_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail; nothing is downloaded
    with pytest.raises(DataError, match=r"^data\.source: .*pip install 'wattscale\[datasets\]'"):
        prepare_data(DataConfig(source="hf:roneneldan/TinyStories@validation"), VOCAB, tmp_path)


def test_corpus_too_small_for_vocab(tmp_path):
    path = _write(tmp_path / "tiny.txt", "\n\n".join(generate_stories(5_000, seed=0)))
    with pytest.raises(DataError, match=r"^data\.source: the training text is too small for a 4096-token BPE"):
        prepare_data(DataConfig(source=str(path)), 4096, tmp_path / "cache")
    with pytest.raises(DataError, match=r"^model\.vocab_size: a byte-level BPE needs at least 257"):
        prepare_data(DataConfig(source=str(path)), 200, tmp_path / "cache")


def test_empty_validation_split(tmp_path):
    path = _write(tmp_path / "few.txt", "\n\n".join(generate_stories(10_000, seed=0)))  # ~15 documents
    with pytest.raises(DataError, match=r"^data\.val_fraction: the validation split is empty"):
        prepare_data(DataConfig(source=str(path), val_fraction=0.01), 300, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()], "a failed preparation leaves nothing behind"


def test_tokenizer_path_errors(tmp_path):
    with pytest.raises(DataError, match=r"^data\.tokenizer: .*none\.json does not exist"):
        prepare_data(DataConfig(tokenizer=str(tmp_path / "none.json")), VOCAB, tmp_path)
    bad = _write(tmp_path / "bad.json", "{not json")
    with pytest.raises(DataError, match=r"^data\.tokenizer: cannot load"):
        prepare_data(DataConfig(tokenizer=str(bad)), VOCAB, tmp_path)


@pytest.mark.parametrize("kwargs, field", [
    ({"source": ""}, "data.source"), ({"synthetic_mb": 0}, "data.synthetic_mb"),
    ({"val_fraction": 1.0}, "data.val_fraction"), ({"val_fraction": 0.0}, "data.val_fraction"),
    ({"text_field": ""}, "data.text_field"), ({"val_source": "synthetic"}, "data.val_source"),
])
def test_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        DataConfig(**kwargs)


# --- shard files ---------------------------------------------------------------------------------

def test_shard_dtype_follows_vocab_size(tmp_path):
    small = _shard(tmp_path, np.array([0, 65535, 7]), 65536, "small.bin")
    assert small.tokens.dtype == np.uint16 and small.tokens.tolist() == [0, 65535, 7]
    big = _shard(tmp_path, np.array([0, 70_000, 65536, 3]), 70_001, "big.bin")
    assert big.tokens.dtype == np.uint32 and big.tokens.tolist() == [0, 70_000, 65536, 3]
    assert (tmp_path / "big.bin").stat().st_size == HEADER_BYTES + 4 * 4
    assert len(big) == 4 and big.vocab_size == 70_001
    with pytest.raises(ValueError):
        big.tokens[0] = 1  # read-only memmap


def test_shard_rejects_ids_outside_the_vocab(tmp_path):
    with pytest.raises(ValueError):
        write_shard(tmp_path / "x.bin", [np.array([1, 512])], 512)


@pytest.mark.parametrize("damage", ["magic", "version", "truncate", "extend", "short"])
def test_corrupt_shard_header_is_detected(tmp_path, damage):
    path = tmp_path / "s.bin"
    write_shard(path, [np.arange(100)], 1000)
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[0:1] = b"X"
    elif damage == "version":
        data[8] = 99
    elif damage == "truncate":
        data = data[:-2]
    elif damage == "extend":
        data += b"\0\0"
    else:
        data = data[:10]
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"^data: corrupt shard .*; delete .* to rebuild"):
        read_shard(path)


# --- the cache ------------------------------------------------------------------------------------

def test_cache_is_reused_without_retokenizing(tmp_path, monkeypatch):
    config = DataConfig(synthetic_mb=0.1, synthetic_seed=4)
    first = prepare_data(config, VOCAB, tmp_path)
    files = sorted((tmp_path / first.cache_key).iterdir())
    assert [f.name for f in files] == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    mtimes = [f.stat().st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(prepare_module, "train_bpe", fail)
    monkeypatch.setattr(prepare_module, "write_shard", fail)
    second = prepare_data(config, VOCAB, tmp_path)
    assert second.cache_key == first.cache_key
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert np.array_equal(second.train.tokens, first.train.tokens)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.cache_key]


def test_cache_key_follows_settings_and_file_content(tmp_path):
    path = _write(tmp_path / "c.txt", "\n\n".join(generate_stories(60_000, seed=0)))
    base = prepare_data(DataConfig(source=str(path)), VOCAB, tmp_path / "cache").cache_key
    assert prepare_data(DataConfig(source=str(path), val_fraction=0.1), VOCAB, tmp_path / "cache").cache_key != base
    assert prepare_data(DataConfig(source=str(path)), VOCAB + 1, tmp_path / "cache").cache_key != base
    _write(path, path.read_text() + "\n\nOne more story.")
    assert prepare_data(DataConfig(source=str(path)), VOCAB, tmp_path / "cache").cache_key != base


def test_interrupted_preparation_leaves_no_cache(tmp_path, monkeypatch):
    calls = []
    real_write_shard = prepare_module.write_shard

    def write_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the validation shard, while writing the training shard
            raise KeyboardInterrupt
        return real_write_shard(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_shard", write_then_die)
    config = DataConfig(synthetic_mb=0.1)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(config, VOCAB, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(prepare_module, "write_shard", real_write_shard)
    assert len(prepare_data(config, VOCAB, tmp_path).train) > 0


def test_corrupt_cached_shard_is_reported(tmp_path):
    config = DataConfig(synthetic_mb=0.1)
    prepared = prepare_data(config, VOCAB, tmp_path)
    with prepared.train.path.open("r+b") as f:
        f.write(b"BROKEN!!")
    with pytest.raises(DataError, match=r"^data: corrupt shard .*train\.bin"):
        prepare_data(config, VOCAB, tmp_path)


# --- the sequence stream --------------------------------------------------------------------------

@pytest.fixture
def positions(tmp_path) -> TokenShard:
    """A shard whose token at position p is p, so a window's first input is its start offset."""
    return _shard(tmp_path, np.arange(1001), 65536)


def test_n_windows(tmp_path, positions):
    assert n_windows(positions, 10) == 100  # windows of 11 tokens starting at 0, 10, ..., 990
    assert n_windows(positions, 1000) == 1
    assert n_windows(positions, 1001) == 0


def test_targets_are_inputs_shifted_by_one(positions):
    inputs, targets = sequence_batch(positions, seq_len=10, seed=0, first_sequence=0, n_sequences=8)
    assert inputs.shape == targets.shape == (8, 10) and inputs.dtype == targets.dtype == torch.int64
    starts = inputs[:, 0]
    assert torch.equal(inputs, starts[:, None] + torch.arange(10))
    assert torch.equal(targets, inputs + 1)
    assert torch.all(starts % 10 == 0)


def test_each_epoch_visits_every_window_once_in_the_documented_order(positions):
    for seed in (0, 7):
        inputs, _ = sequence_batch(positions, seq_len=10, seed=seed, first_sequence=0, n_sequences=300)
        windows = (inputs[:, 0] // 10).numpy()
        for epoch in range(3):
            expected = np.random.default_rng([seed, epoch]).permutation(100)
            assert np.array_equal(windows[epoch * 100:(epoch + 1) * 100], expected)
        assert sorted(windows[:100]) == list(range(100))
        assert not np.array_equal(windows[:100], windows[100:200])


def test_stream_is_a_pure_function_of_its_arguments(positions):
    whole, _ = sequence_batch(positions, 10, seed=3, first_sequence=0, n_sequences=250)
    again, _ = sequence_batch(positions, 10, seed=3, first_sequence=0, n_sequences=250)
    assert torch.equal(whole, again)
    pieces = [sequence_batch(positions, 10, seed=3, first_sequence=a, n_sequences=b - a)[0]
              for a, b in [(0, 37), (37, 95), (95, 105), (105, 250)]]  # (95, 105) crosses an epoch boundary
    assert torch.equal(torch.cat(pieces), whole)
    other, _ = sequence_batch(positions, 10, seed=4, first_sequence=0, n_sequences=250)
    assert not torch.equal(other, whole)


def test_shard_shorter_than_one_window(tmp_path):
    shard = _shard(tmp_path, np.arange(10), 512)
    with pytest.raises(DataError, match=r"has 10 tokens, fewer than seq_len \+ 1 = 11"):
        sequence_batch(shard, 10, seed=0, first_sequence=0, n_sequences=1)


def test_sequence_batch_on_prepared_data(synthetic):
    inputs, targets = sequence_batch(synthetic.train, 64, seed=0, first_sequence=5, n_sequences=4)
    assert inputs.shape == (4, 64) and int(inputs.max()) < VOCAB
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


# --- real text: TinyStories ---------------------------------------------------------------------------

def test_tinystories_validation_file_prepares(tmp_path):
    path = _tinystories_dir() / "tinystories_validation_first1000.txt"
    if not path.is_file():
        pytest.skip(f"TinyStories sample not found at {path}; set WATTSCALE_TINYSTORIES_DIR")
    prepared = prepare_data(DataConfig(source=str(path)), VOCAB, tmp_path)
    meta = json.loads((prepared.tokenizer_path.parent / "meta.json").read_text())
    assert meta["train"]["documents"] + meta["val"]["documents"] == 1000  # SOURCE.md: 1,000 stories
    assert meta["val"]["documents"] == 50
    tokenizer = Tokenizer.from_file(str(prepared.tokenizer_path))
    first = tokenizer.decode(_documents(prepared.train)[0][:-1].tolist())
    assert first.startswith("Spot. Spot saw the shiny car")
    assert "<|endoftext|>" not in first
