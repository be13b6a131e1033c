"""File names as the store keeps them and as messages show them.

Linux names are bytes; Python holds names that are not UTF-8 with surrogate escapes, which
neither SQLite nor JSON can carry. The store keeps a readable form (bytes shown as \\xNN) and,
for such names only, the exact bytes beside it.
"""

from __future__ import annotations

import os
from typing import Optional


def storable(path: str) -> tuple[str, Optional[bytes]]:
    """(readable text, raw bytes or None when the text is exact) of a path as Python holds it."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def displayable(path: str) -> str:
    """A path fit for logs, JSON and SQL text: bytes that are not UTF-8 shown as \\xNN."""
    return storable(path)[0]


def real(path: str, raw: Optional[bytes]) -> str:
    """The path as the file system knows it, from what the store kept."""
    return os.fsdecode(raw) if raw is not None else path
