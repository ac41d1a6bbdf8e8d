"""Text sources: where documents come from, and a fingerprint of their content for the cache key.

A source spec is one of:

- ``synthetic``: the built-in generated stories (`wattscale.data.synthetic`);
- a ``.txt`` file: documents separated by ``<|endoftext|>`` when the file contains that marker
  (TinyStories' format), otherwise by blank lines;
- a ``.jsonl`` file: one JSON object per line, the document in its `text_field`;
- a ``.parquet`` file: the document in its `text_field` column;
- a directory: every ``.txt``/``.jsonl``/``.parquet`` file directly in it, in sorted name order;
- ``hf:<dataset>[:<config>][@<split>]``: a Hugging Face dataset (needs the optional ``datasets``
  package; split defaults to ``train``).

Documents are stripped of surrounding whitespace; empty documents are dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattscale.errors import DataError
from wattscale.units import BYTES_PER_MB

from .synthetic import GENERATOR_VERSION, generate_stories

END_OF_TEXT = "<|endoftext|>"
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
_PARQUET_BATCH_ROWS = 4096
_HF_BATCH_ROWS = 1024


@dataclass(frozen=True)
class TextSource:
    """A re-iterable sequence of documents with a description and a content fingerprint."""

    description: str
    fingerprint: str  # changes whenever the documents could change
    iter_documents: Callable[[], Iterator[str]]


def is_local_path(value: Any) -> bool:
    """A data setting that names a file or folder (not 'synthetic', not an hf: dataset)."""
    return isinstance(value, str) and value != "synthetic" and not value.startswith("hf:")


def open_source(spec: str, *, text_field: str = "text", synthetic_mb: float = 4.0, synthetic_seed: int = 0,
                field: str = "data.source") -> TextSource:
    """Resolve a source spec to a `TextSource`; `field` names the setting in error messages."""
    if spec == "synthetic":
        return _synthetic_source(synthetic_mb, synthetic_seed)
    if spec.startswith("hf:"):
        return _hf_source(spec, text_field, field)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{field}: {spec} does not exist; give an existing file or directory, 'synthetic' "
                        f"or 'hf:<dataset>'")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            raise DataError(f"{field}: directory {path} has no {'/'.join(FILE_SUFFIXES)} files; "
                            f"add some or point {field} at a file")
    else:
        if path.suffix not in FILE_SUFFIXES:
            raise DataError(f"{field}: unsupported file type '{path.suffix}' ({path}); "
                            f"use one of {', '.join(FILE_SUFFIXES)}")
        files = [path]
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{field}: {file} is empty; give a file with text in it")
    return _file_source(path, files, text_field, field)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _synthetic_source(synthetic_mb: float, synthetic_seed: int) -> TextSource:
    """The built-in stories, generated on first use (a cache hit never needs them) and then kept."""
    n_bytes = int(synthetic_mb * BYTES_PER_MB)
    stories: list[str] = []

    def iter_documents() -> Iterator[str]:
        if not stories:
            stories.extend(generate_stories(n_bytes, synthetic_seed))
        return iter(stories)

    return TextSource(
        description=f"synthetic stories ({synthetic_mb:g} MB, seed {synthetic_seed}, generator v{GENERATOR_VERSION})",
        fingerprint=f"synthetic:v{GENERATOR_VERSION}:seed={synthetic_seed}:bytes={n_bytes}",
        iter_documents=iter_documents,
    )


def _file_source(path: Path, files: list[Path], text_field: str, field: str) -> TextSource:
    """Documents from local files, fingerprinted by the names and sha256 of their bytes."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\0".encode())

    def iter_documents() -> Iterator[str]:
        n_documents = 0
        for file in files:
            for document in _read_file(file, text_field, field):
                n_documents += 1
                yield document
        if n_documents == 0:
            raise DataError(f"{field}: no documents in {path}; the text is only whitespace or separators")

    return TextSource(description=str(path.resolve()), fingerprint=f"files:{digest.hexdigest()}",
                      iter_documents=iter_documents)


def _read_file(path: Path, text_field: str, field: str) -> Iterator[str]:
    """Documents of one file, by its suffix."""
    if path.suffix == ".txt":
        yield from _read_txt(path, field)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path, text_field, field)
    else:
        yield from _read_parquet(path, text_field, field)


def _read_txt(path: Path, field: str) -> Iterator[str]:
    """Split on <|endoftext|> when present, else on blank lines (paragraph-separated documents)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{field}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        f"convert it to UTF-8") from e
    if END_OF_TEXT in text:
        pieces = text.split(END_OF_TEXT)
    else:
        # A line holding only whitespace counts as blank.
        pieces = "\n".join(line.rstrip() for line in text.splitlines()).split("\n\n")
    for piece in pieces:
        document = piece.strip()
        if document:
            yield document


def _read_jsonl(path: Path, text_field: str, field: str) -> Iterator[str]:
    """One JSON object per line; blank lines are skipped."""
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{field}: invalid JSON on line {line_number} of {path}: {e.msg}; "
                                f"write one JSON object per line") from e
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"data.text_field: line {line_number} of {path} has no field '{text_field}' "
                                f"(it has: {keys}); set data.text_field to the field holding the text")
            yield from _checked_text(record[text_field], f"line {line_number} of {path}", text_field)


def _read_parquet(path: Path, text_field: str, field: str) -> Iterator[str]:
    """The `text_field` column of a parquet file, read in row batches."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-parquet file
        raise DataError(f"{field}: cannot read {path} as parquet ({type(e).__name__}: {e}); "
                        f"check the file is a valid parquet file") from e
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"data.text_field: {path} has no column '{text_field}' (it has: {', '.join(columns)}); "
                        f"set data.text_field to the column holding the text")
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            yield from _checked_text(value, f"row {row} of {path}", text_field)
            row += 1


def _checked_text(value: object, where: str, text_field: str) -> Iterator[str]:
    """Yield the stripped text if non-empty; None counts as empty; other non-strings are errors."""
    if value is None:
        return
    if not isinstance(value, str):
        raise DataError(f"data.text_field: '{text_field}' in {where} is a {type(value).__name__}, not text; "
                        f"set data.text_field to a text field")
    document = value.strip()
    if document:
        yield document


def parse_hf_spec(spec: str, field: str = "data.source") -> tuple[str, str | None, str]:
    """Split 'hf:<dataset>[:<config>][@<split>]' into (dataset, config or None, split, default 'train')."""
    rest = spec.removeprefix("hf:")
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise DataError(f"{field}: '{spec}' names no dataset; write hf:<dataset>[:<config>][@<split>], "
                        f"e.g. hf:roneneldan/TinyStories@validation")
    return name, config or None, split or "train"


def _hf_source(spec: str, text_field: str, field: str) -> TextSource:
    """A Hugging Face dataset, loaded lazily through the optional `datasets` package."""
    name, config, split = parse_hf_spec(spec, field)
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{field}: '{spec}' needs the Hugging Face 'datasets' package; "
                        f"run pip install 'wattscale[datasets]' or use a local file") from e

    def iter_documents() -> Iterator[str]:
        # Loaded on first use, so a cache hit never touches the hub or the HF cache.
        try:
            dataset = datasets.load_dataset(name, config, split=split)
        except Exception as e:  # network, unknown dataset, bad config or split: all surface as one line
            raise DataError(f"{field}: cannot load Hugging Face dataset '{spec}' ({type(e).__name__}: {e}); "
                            f"check the name, config and split, and the network or HF cache") from e
        if text_field not in dataset.column_names:
            raise DataError(f"data.text_field: dataset '{spec}' has no column '{text_field}' "
                            f"(it has: {', '.join(dataset.column_names)}); set data.text_field")
        for batch in dataset.iter(batch_size=_HF_BATCH_ROWS):
            for value in batch[text_field]:
                yield from _checked_text(value, f"dataset '{spec}'", text_field)

    # The hub id, not the content, keys the cache: a dataset changed upstream needs a cleared cache.
    description = f"Hugging Face dataset {name}" + (f" ({config})" if config else "") + f" [{split}]"
    return TextSource(description=description, fingerprint=f"hf:{name}:{config or ''}@{split}",
                      iter_documents=iter_documents)
