"""Splitting a long text into chunks that each fit the model's token budget, and putting it back.

Chunks are whole paragraphs packed together where they fit, else sentences of one paragraph,
else (one sentence alone over budget) pieces cut at whitespace or between characters. The
whitespace between chunks is kept verbatim so that the translations can be joined with the
original paragraph breaks; the model only ever sees "\n" line endings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

Counter = Callable[[str], int]

_CLOSERS = re.escape("\"'”’»›)]}」』）】〉》")
# Latin punctuation needs whitespace after it (so "3.14" is not an end); CJK needs none.
# One Latin mark, not a run: a run followed by a failed lookahead would backtrack quadratically.
_SENTENCE_END = re.compile(rf"([.!?…][{_CLOSERS}]*(?=\s)|[。！？｡]+[{_CLOSERS}]*)(\s*)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Plain `\s+` runs in linear time; patterns such as `\s*\n\s*\n` backtrack quadratically on
# long runs of spaces, so paragraph breaks are found by inspecting each whitespace run.
_WHITESPACE = re.compile(r"\s+")
_ZWJ = "\u200d"
_SKIN_TONES = range(0x1F3FB, 0x1F400)


@dataclass(frozen=True)
class Chunk:
    body: str  # sent to the model: no surrounding whitespace, "\n" line endings
    gap: str  # the whitespace that followed this chunk in the input, verbatim
    tokens: int  # count_tokens(body)
    hard_split: bool  # ends inside a sentence because that sentence alone was over budget


@dataclass(frozen=True)
class Split:
    prefix: str  # leading whitespace of the whole text, verbatim
    chunks: list[Chunk]
    newline: str  # the text's dominant line ending, restored on the outputs by reassemble()


class _Part(NamedTuple):
    body: str
    gap: str
    tokens: int
    mid_sentence: bool


def split_text(text: str, budget: int, count_tokens: Counter) -> Split:
    """Cut `text` into chunks whose bodies each have count_tokens(body) <= budget.

    Raises ValueError when budget < 1, or when a single character alone is over budget.
    """
    if budget < 1:
        raise ValueError(f"token budget must be at least 1, got {budget}")
    newline = _dominant_newline(text)
    core = text.strip()
    if not core:
        return Split(prefix=text, chunks=[], newline=newline)
    prefix = text[: len(text) - len(text.lstrip())]
    suffix = text[len(prefix) + len(core):]

    chunks: list[Chunk] = []
    small: list[_Part] = []
    for para, gap in _paragraphs(core, suffix):
        body = _normalise(para)
        tokens = count_tokens(body)
        if tokens <= budget:
            small.append(_Part(body, gap, tokens, False))
            continue
        # A long paragraph gets chunks of its own, so a chunk is either whole paragraphs or
        # part of exactly one paragraph.
        chunks += _pack(small, budget, count_tokens)
        small = []
        chunks += _pack(_sentence_parts(para, gap, budget, count_tokens), budget, count_tokens)
    chunks += _pack(small, budget, count_tokens)
    return Split(prefix=prefix, chunks=chunks, newline=newline)


def reassemble(split: Split, outputs: Sequence[str]) -> str:
    """prefix + each output (in the text's own line endings) + the gap that followed its chunk."""
    if len(outputs) != len(split.chunks):
        raise ValueError(f"{len(outputs)} outputs for {len(split.chunks)} chunks")
    pieces = [split.prefix]
    for output, chunk in zip(outputs, split.chunks, strict=True):
        # Normalise first so that a "\r\n" from the model does not become "\r\r\n".
        out = _normalise(output)
        pieces.append(out.replace("\n", split.newline) if split.newline != "\n" else out)
        pieces.append(chunk.gap)
    return "".join(pieces)


def _normalise(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n") if "\r" in s else s


def _dominant_newline(text: str) -> str:
    crlf = text.count("\r\n")
    counts = {"\n": text.count("\n") - crlf, "\r\n": crlf, "\r": text.count("\r") - crlf}
    best = max(counts, key=counts.__getitem__)  # ties go to the first key, "\n"
    return best if counts[best] else "\n"


def _paragraphs(core: str, suffix: str) -> list[tuple[str, str]]:
    """(paragraph, whitespace after it) in the stripped text; the last is followed by `suffix`."""
    out: list[tuple[str, str]] = []
    start = 0
    for m in _WHITESPACE.finditer(core):
        ws = m.group()
        if ("\n" in ws or "\r" in ws) and len(_LINE_BREAK.findall(ws)) >= 2:
            out.append((core[start:m.start()], ws))
            start = m.end()
    out.append((core[start:], suffix))
    return out


def _sentence_parts(para: str, gap: str, budget: int, count: Counter) -> list[_Part]:
    sentences: list[tuple[str, str]] = []
    start = 0
    for m in _SENTENCE_END.finditer(para):
        if m.end() >= len(para):
            break
        sentences.append((para[start:m.end(1)], m.group(2)))
        start = m.end()
    sentences.append((para[start:], gap))

    parts: list[_Part] = []
    for sentence, sep in sentences:
        body = _normalise(sentence)
        tokens = count(body)
        if tokens <= budget:
            parts.append(_Part(body, sep, tokens, False))
        else:
            parts += _hard_parts(sentence, sep, budget, count)
    return parts


def _hard_parts(s: str, gap: str, budget: int, count: Counter) -> list[_Part]:
    """Pieces of one over-budget sentence, each cut as late as the budget allows."""
    parts: list[_Part] = []
    pos, guess = 0, budget
    while True:
        k = _longest_fit(s, pos, guess, budget, count)
        if pos + k == len(s):
            body = _normalise(s[pos:])
            parts.append(_Part(body, gap, count(body), False))
            return parts
        limit = k
        while True:  # a counter need not be monotonic: re-check the piece actually cut
            if limit < 1:
                raise ValueError(f"token budget {budget} is too small for the character {s[pos]!r}")
            cut, resume = _cut(s, pos, pos + limit)
            body = _normalise(s[pos:cut])
            tokens = count(body)
            if tokens <= budget:
                break
            limit = cut - pos - 1
        parts.append(_Part(body, s[cut:resume], tokens, True))
        pos, guess = resume, max(1, cut - pos)


def _longest_fit(s: str, pos: int, guess: int, budget: int, count: Counter) -> int:
    """Largest k with s[pos:pos+k] within budget (0 if none).

    Galloping up from `guess` keeps the strings counted within twice the answer's length;
    probing the whole remainder each time would be quadratic on a long sentence.
    """
    n = len(s) - pos

    def fits(k: int) -> bool:
        return count(_normalise(s[pos:pos + k])) <= budget

    lo, hi = 0, min(max(guess, 1), n)
    while fits(hi):
        lo = hi
        if hi == n:
            return n
        hi = min(2 * hi, n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _cut(s: str, pos: int, limit: int) -> tuple[int, int]:
    """(end of the piece, start of the next) for a piece s[pos:cut] with cut <= limit < len(s).

    Prefers the last whitespace run starting by `limit` (the run becomes the gap); else cuts
    between characters, never before a combining mark or around a zero-width joiner.
    """
    i = limit
    while i > pos and not s[i].isspace():
        i -= 1
    if i > pos:
        start, end = i, i
        while s[start - 1].isspace():  # s[pos] is not whitespace, so this stops
            start -= 1
        while s[end].isspace():  # nor is the sentence's last character
            end += 1
        return start, end
    cut = limit
    while cut > pos and _joined(s, cut):
        cut -= 1
    # One grapheme cluster over budget (e.g. hundreds of stacked marks): cut inside it.
    return (cut, cut) if cut > pos else (limit, limit)


def _joined(s: str, i: int) -> bool:
    """Whether cutting before s[i] would split what is displayed as one character."""
    c, before = s[i], s[i - 1]
    return (unicodedata.category(c).startswith("M") or c == _ZWJ or before == _ZWJ
            or ord(c) in _SKIN_TONES or (before == "\r" and c == "\n"))


def _join(parts: Sequence[_Part]) -> str:
    pieces: list[str] = []
    for p in parts[:-1]:
        pieces += (p.body, _normalise(p.gap))
    pieces.append(parts[-1].body)
    return "".join(pieces)


def _pack(parts: Sequence[_Part], budget: int, count: Counter) -> list[Chunk]:
    """Greedily join consecutive parts into chunks within budget.

    Sums of part counts (plus the separator's count) estimate a join without re-counting the
    growing body. The real body is counted when the estimate is over budget, and once more
    when a chunk is finished unless that count is already exact: counts of joined text need
    not be additive.
    """
    sep_tokens: dict[str, int] = {}
    chunks: list[Chunk] = []
    i = 0
    while i < len(parts):
        j, estimate, exact = i + 1, parts[i].tokens, True
        while j < len(parts):
            sep = _normalise(parts[j - 1].gap)
            if sep not in sep_tokens:
                sep_tokens[sep] = count(sep) if sep else 0
            candidate = estimate + sep_tokens[sep] + parts[j].tokens
            if candidate <= budget:
                estimate, exact = candidate, False
            else:
                real = count(_join(parts[i:j + 1]))
                if real > budget:
                    break
                estimate, exact = real, True
            j += 1
        body = _join(parts[i:j])
        tokens = estimate if exact else count(body)
        while tokens > budget:  # the estimate was low: give the last parts to the next chunk
            j -= 1
            body = _join(parts[i:j])
            tokens = parts[i].tokens if j == i + 1 else count(body)
        chunks.append(Chunk(body, parts[j - 1].gap, tokens, parts[j - 1].mid_sentence))
        i = j
    return chunks
