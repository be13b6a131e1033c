"""Decoding text inputs: BOMs, UTF-8, and a clear refusal for binary content."""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

from edged.tasks.base import InputError

_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
]


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding). Line endings are kept as they are."""
    if not data:
        raise InputError("empty file (0 bytes)")
    for bom, encoding in _BOMS:  # UTF-32 LE's BOM starts with UTF-16 LE's: test it first
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding), encoding
            except UnicodeDecodeError as exc:
                raise InputError(f"file starts with a {encoding} byte-order mark but does not decode: {exc}") from None
    if b"\x00" in data:
        raise InputError("binary content (NUL bytes): not a text file")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()
    if best is None:
        raise InputError("not text: no text encoding fits this content")
    return str(best), best.encoding
