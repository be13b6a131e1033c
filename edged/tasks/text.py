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
    matches = list(from_bytes(data))
    if not matches:
        raise InputError("not text: no text encoding fits this content")
    return _pick(matches)


# charset-normalizer often finds several single-byte code pages equally plausible for short
# Western text (French Latin-1 scores the same as cp1250 and cp1257, which turn "è" into "č").
# Among equally good candidates, prefer the encodings such files are most often in.
_PREFERRED = ("cp1252", "latin_1", "iso8859_15", "cp1251", "cp1250", "koi8_r", "shift_jis", "gb18030", "big5",
              "euc_kr")


def _pick(matches: list) -> tuple[str, str]:
    """(text, encoding) of the best match, breaking ties by how common the encoding is.

    A match also lists the encodings that decode the bytes to the very same text
    (`could_be_from_charset`); the most common of those is the one reported.
    """
    best = matches[0]
    tied = [m for m in matches if abs(m.chaos - best.chaos) < 1e-9 and abs(m.coherence - best.coherence) < 1e-9]

    def rank(encoding: str) -> int:
        return _PREFERRED.index(encoding) if encoding in _PREFERRED else len(_PREFERRED)

    options = [(rank(enc), i, m, enc) for i, m in enumerate(tied) for enc in [m.encoding, *m.could_be_from_charset]]
    _rank, _i, match, encoding = min(options, key=lambda o: (o[0], o[1]))
    return str(match), encoding
