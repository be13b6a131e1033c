"""File names as the store keeps them and as messages show them.

Linux names are bytes; Python holds names that are not UTF-8 with surrogate escapes, which
neither SQLite's text nor JSON can carry. The store keeps such a name as a BLOB of its exact
bytes (SQLite columns take either), and messages show it with the bytes as \\xNN.
"""

from __future__ import annotations

import os
import unicodedata
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


# Format characters that are part of writing (joiners in Indic, Persian and emoji sequences; emoji
# tag characters for flags): left alone. Every other format character (bidi overrides such as
# U+202E, which reorder what a reader sees) is escaped.
_KEPT_FORMAT = frozenset({"\u200c", "\u200d", *map(chr, range(0xE0020, 0xE0080))})


def _escape_char(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def for_terminal(text: str, keep: str = "") -> str:
    """Text fit for a terminal: control characters (C0, DEL, C1), line and paragraph separators and
    text-reordering format characters shown as \\x1b, \\u202e …, so a file name or a model's output
    can never colour, move or rewrite what the operator sees, and clipping the result can never cut
    an escape sequence in half. `keep`: characters the caller's layout handles (a newline, a tab).
    Not for JSON or SQL, which carry the exact text."""
    out = []
    for ch in text:
        kind = unicodedata.category(ch)
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogate escape): as displayable
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch not in keep and (kind in ("Cc", "Zl", "Zp", "Cs") or (kind == "Cf" and ch not in _KEPT_FORMAT)):
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)
