"""The errors the readers raise: one type a caller can catch for any malformed or unfit file."""

from __future__ import annotations


class FormatError(ValueError):
    """A file that is not a well-formed instance of its format; the message names the file."""


class ConversionError(FormatError):
    """A source checkpoint that cannot be read, or does not fit the model its config describes."""


class DownloadError(ConversionError):
    """A source checkpoint could not be fetched from the hub (offline, or no such repository)."""


def short_list(items: list[str], n: int = 20) -> str:
    """The first `n` items, comma-separated, and how many more there are."""
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
