"""A run's identity: which configuration fields define what a run computes, marked on the fields themselves.

A field declared with ``identity_field(...)`` is part of the run id; any other field (a new one too) is
not, so adding a setting never changes the ids of stored runs. ``identity_field(..., since=default)``
marks a setting added after runs were first stored: it enters the id only when it differs from
``default``, so the runs stored before it existed keep their ids. ``identity_field(..., identify=f)``
enters ``f(value)`` in place of the value: a data path enters as its kind only, since the data's
content is hashed into the id apart, so moving the files (or the checkout) keeps the id.
``identity_values(config, earlier=True)`` gives the identity as it was before ``identify`` existed,
from which the ids of runs stored then are found again (wattscale.config.earlier_run_ids).

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = identity_field(3e-3)             # part of the id
        repeat: int = identity_field(0, since=0)     # part of the id unless 0 (added later)
        threads: int | None = None                   # not part of the id (how, not what)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

IDENTITY = "identity"  # the metadata key
_ALWAYS = "always"
_UNSET: Any = object()


def identity_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
                   since: Any = _UNSET, identify: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that is part of a run's identity (left out at ``since``, entered as ``identify(value)``)."""
    mark: dict[str, Any] = {IDENTITY: _ALWAYS}
    if since is not _UNSET:
        mark["omit_at"] = since
    if identify is not None:
        mark["identify"] = identify
    return dataclasses.field(default=default, default_factory=default_factory, metadata=mark)


def is_identity(f: dataclasses.Field) -> bool:
    """Whether a dataclass field is marked as part of a run's identity."""
    return f.metadata.get(IDENTITY) == _ALWAYS


def identity_names(cls: type) -> tuple[str, ...]:
    """The names of the identity fields of a dataclass type, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if is_identity(f))


def identity_values(obj: Any, *, earlier: bool = False) -> Any:
    """The identity of a config as plain JSON-ready data: its marked fields only, nested configs recursed.

    Values are converted the way ``dataclasses.asdict`` converts them (tuples stay tuples and dump
    as JSON lists), so ids hashed from ``asdict`` before the fields were marked stay the same.
    ``earlier``: enter the values as they are, not through their field's ``identify`` (the identity
    runs had before ``identify`` existed).
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not is_identity(f):
            continue
        value = getattr(obj, f.name)
        if "omit_at" in f.metadata and value == f.metadata["omit_at"]:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = identity_values(value, earlier=earlier)
        elif "identify" in f.metadata and not earlier:
            out[f.name] = f.metadata["identify"](value)
        else:
            out[f.name] = dataclasses.asdict(_Box(value))["value"]
    return out


@dataclasses.dataclass(frozen=True)
class _Box:
    """One value, so that ``dataclasses.asdict`` converts it (lists, tuples, dicts copied deeply)."""

    value: Any
