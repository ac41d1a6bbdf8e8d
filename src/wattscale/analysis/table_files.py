"""Reading a user's table file (CSV, Parquet, or a JSON array of records) with one-line errors that name the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from wattscale.errors import DataError

READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet}


def read_table(path: str | Path, flag: str, suffixes: tuple[str, ...] = (".csv",)) -> pd.DataFrame:
    """The file as a DataFrame; a missing, unreadable or wrongly typed file raises DataError naming ``flag``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag}: no file {str(path)!r}; give the path of a {'/'.join(suffixes)} file")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise DataError(f"{flag}: {path.name}: expected a {' or '.join(suffixes)} file")
    try:
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text()))
        return READERS[suffix](path)
    except (ValueError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{flag}: cannot read {str(path)!r} ({first_line})") from None
