"""File names as the store keeps them and as messages show them.

Linux names are bytes; Python holds names that are not UTF-8 with surrogate escapes, which
neither SQLite's text, PostgreSQL's text nor JSON can carry. SQLite keeps such a name as a BLOB
of its exact bytes (its columns take either); PostgreSQL, whose text columns take text only,
keeps it as BYTES_MARK and the bytes in base64 (a UTF-8 name that happens to begin with the
mark is stored the same way, so every stored value reads back as exactly one name). Messages
show it with the bytes as \\xNN.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Callable, Optional, Union, overload

Stored = Union[str, bytes]


# U+0001 (a control character, legal in Linux names but never in a sane one) and a tag.
BYTES_MARK = "\x01b64:"


def to_db(path: Optional[str], blob: bool = True) -> Optional[Stored]:
    """What the store keeps for a path: the text, or (a name that is not UTF-8, or that begins
    with BYTES_MARK) its bytes, as a BLOB (`blob`, SQLite) or as marked base64 text."""
    if path is None:
        return None
    raw = os.fsencode(path)
    try:
        name = raw.decode("utf-8")
        if not name.startswith(BYTES_MARK):
            return name
    except UnicodeDecodeError:
        pass
    return raw if blob else BYTES_MARK + base64.b64encode(raw).decode("ascii")


@overload
def from_db(value: Stored) -> str: ...


@overload
def from_db(value: None) -> None: ...


def from_db(value: Optional[Stored]) -> Optional[str]:
    """The path as the file system knows it, from what the store kept."""
    if isinstance(value, str) and value.startswith(BYTES_MARK):
        try:
            return os.fsdecode(base64.b64decode(value[len(BYTES_MARK):], validate=True))
        except (binascii.Error, ValueError):
            return value  # not written by to_db (a row typed in by hand): the text as it is
    return os.fsdecode(value) if isinstance(value, bytes) else value


def displayable(path: str) -> str:
    """A path fit for logs, JSON and SQL text: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# What reorders the text a reader sees: the bidi embeddings and overrides (U+202A-U+202E) and
# isolates (U+2066-U+2069), which can make `gpj.exe` read as `exe.jpg`. The other format characters
# are part of writing and stay: soft hyphens (OCR output), LRM/RLM/ALM in Hebrew and Arabic text,
# joiners in Indic, Persian and emoji sequences, word joiners, BOMs, emoji tags.
_REORDERING = frozenset(map(chr, (*range(0x202A, 0x202F), *range(0x2066, 0x206A))))
_LINE_BREAKS = frozenset({"\u2028", "\u2029"})  # line and paragraph separators: they break a row like \n


def _escape_char(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _is_control(ch: str) -> bool:
    """C0, DEL or C1: what a terminal takes as a command (ESC, CSI) rather than as text."""
    n = ord(ch)
    return n < 0x20 or 0x7F <= n <= 0x9F


def _escaped(text: str, keep: str, hurts: Callable[[str], bool], backslash: bool) -> str:
    out = []
    for ch in text:
        n = ord(ch)
        if 0xDC80 <= n <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogate escape): as displayable
            out.append(f"\\x{n - 0xDC00:02x}")
        elif ch in keep:
            out.append(ch)
        elif ch == "\\" and backslash:
            out.append("\\\\")
        elif hurts(ch) or 0xD800 <= n <= 0xDFFF:  # a lone surrogate cannot even be written out
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def _hurts_terminal(ch: str) -> bool:
    return _is_control(ch) or ch in _REORDERING or ch in _LINE_BREAKS


def for_terminal(text: str, keep: str = "", *, stored: bool = False) -> str:
    """Text fit for a terminal: control characters (C0, DEL, C1), line and paragraph separators and
    the bidi embeddings, overrides and isolates shown as \\x1b, \\u202e …, so a file name or a
    model's output can never colour, move or reorder what the operator sees, and clipping the result
    can never cut an escape sequence in half. A backslash is shown as \\\\, so `\\x1b` on screen is
    always an escape and never the text's own. Other format characters (soft hyphen, LRM, ZWJ …) are
    writing and stay. `keep`: characters the caller's layout handles (a newline, a tab).

    `stored`: the text is the store's readable form of a name (`displayable`, jobs.source_path),
    whose \\xNN already stand for bytes: its backslashes stay single, as that form has them.
    Not for JSON or SQL, which carry the exact text."""
    return _escaped(text, keep, _hurts_terminal, backslash=not stored)


def for_csv(text: str) -> str:
    """A CSV cell's text: only C0, DEL and C1 escaped (a CSV is read in terminals too); tabs, CR and
    LF stay, inside the cell's quotes, and every other character is the data's own."""
    return _escaped(text, "\t\r\n", _is_control, backslash=False)
