"""File names as the store keeps them and as messages show them.

Linux names are bytes; Python holds names that are not UTF-8 with surrogate escapes, which
neither SQLite's text nor JSON can carry. The store keeps such a name as a BLOB of its exact
bytes (SQLite columns take either), and messages show it with the bytes as \\xNN.
"""

from __future__ import annotations

import os
from typing import Optional, Union, overload

Stored = Union[str, bytes]


def to_db(path: Optional[str]) -> Optional[Stored]:
    """What the store keeps for a path: the text, or its bytes when they are not UTF-8."""
    if path is None:
        return None
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


@overload
def from_db(value: Stored) -> str: ...


@overload
def from_db(value: None) -> None: ...


def from_db(value: Optional[Stored]) -> Optional[str]:
    """The path as the file system knows it, from what the store kept."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def displayable(path: str) -> str:
    """A path fit for logs, JSON and SQL text: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
