"""Errors a user can cause. The CLI turns each into a one-line message and exit code 2."""

from __future__ import annotations


class WattscaleError(Exception):
    """Base class: a problem with the user's input or environment, not a bug.

    The message should name the field (e.g. ``train.tokens``) and say how to fix it.
    """

    exit_code = 2


class ConfigError(WattscaleError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(WattscaleError):
    """A data source is missing, unreadable or inconsistent with the tokenizer or model."""


class StoreError(WattscaleError):
    """The results database cannot be opened or is inconsistent."""


class StoreFileGone(StoreError):
    """A SQLite store's file was deleted or replaced while a process had it open: nothing more is written."""
