"""Splitting long texts into chunks within a token budget, and reassembling the translations."""

from __future__ import annotations

import random
import re
import time
import unicodedata
from collections.abc import Callable

import pytest

from edged.tasks.chunking import Chunk, Split, reassemble, split_text


def words(s: str) -> int:
    return len(s.split())


def utf8_quarters(s: str) -> int:
    """Not additive: joining two texts costs less than the sum of their counts."""
    return len(s.encode()) // 4 + 1


SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’»)\]」』）]*$")
LATIN = ["the", "river", "quietly", "carried", "boats", "toward", "morning", "light", "and", "we"]
ACCENTED = ["café", "naïve", "Zürich", "crème", "façade", "señor", "Ærø", "e\u0301te\u0301"]
EMOJI = ["🎉", "👩\u200d💻", "👍🏽", "🇫🇷"]
CJK = ["我们今天去公园散步", "天气很好", "你想一起来吗", "東京の朝は静かだ"]


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(CJK) + rng.choice("。！？") + rng.choice(["", "」"])
    pool = LATIN * 3 + ACCENTED + EMOJI
    body = " ".join(rng.choice(pool) for _ in range(rng.randint(4, 18)))
    return body[0].upper() + body[1:] + rng.choice([".", "!", "?", "…", '."', ".)"])


def _paragraph(rng: random.Random, n_sentences: int) -> str:
    out = _sentence(rng)
    for _ in range(n_sentences - 1):
        nxt = _sentence(rng)
        # CJK sentences follow each other without a space; a lone line break is a wrapped line.
        sep = "" if out[-1] in "。！？」" and rng.random() < 0.7 else rng.choice([" ", " ", "  ", "\n"])
        out += sep + nxt
    return out


def generated_text(seed: int = 7, paragraphs: int = 500, size: int = 200_000) -> str:
    rng = random.Random(seed)
    per_para = size // paragraphs
    paras = []
    for i in range(paragraphs):
        para = ""
        while len(para) < per_para * rng.uniform(0.3, 1.7):
            para = _paragraph(rng, rng.randint(2, 12)) if not para else para + " " + _sentence(rng)
        if i % 97 == 50:  # a paragraph that is one sentence, far over any budget used here
            para = " ".join(rng.choice(LATIN + ACCENTED) for _ in range(900)) + "."
        if i % 61 == 30:  # a paragraph several budgets long, to be split at sentences
            para = _paragraph(rng, 60)
        paras.append(para)
    seps = ["\n\n", "\n\n", "\n \n", "\n\n\n", " \n\t\n  "]
    text = "\n" + paras[0]
    for para in paras[1:]:
        text += rng.choice(seps) + para
    return text + "\n"


def _identity(split: Split) -> str:
    return reassemble(split, [c.body for c in split.chunks])


def _check_chunks(split: Split, budget: int, count: Callable[[str], int]) -> None:
    for chunk in split.chunks:
        assert chunk.body and chunk.body == chunk.body.strip() and "\r" not in chunk.body
        assert chunk.gap.strip() == ""
        assert chunk.tokens == count(chunk.body) <= budget, chunk


def test_200kb_text_is_chunked_within_budget_in_order_and_round_trips() -> None:
    text = generated_text()
    assert len(text.encode()) > 200_000 and len(re.split(r"\n[ \t]*\n", text)) >= 500
    counted = 0

    def counter(s: str) -> int:
        nonlocal counted
        counted += len(s)
        return utf8_quarters(s)

    t0 = time.perf_counter()
    split = split_text(text, 300, counter)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    # Linear work: re-counting ever-growing bodies would count many times the text.
    assert counted < 8 * len(text), counted / len(text)

    _check_chunks(split, 300, utf8_quarters)
    assert _identity(split) == text
    assert split.prefix == "\n" and split.chunks[-1].gap == "\n" and split.newline == "\n"
    # In order, each body where it stands in the text (which has only "\n" line endings).
    pos = len(split.prefix)
    for chunk in split.chunks:
        assert text.startswith(chunk.body, pos) and text.startswith(chunk.gap, pos + len(chunk.body))
        pos += len(chunk.body) + len(chunk.gap)
    assert pos == len(text)
    hard = [c for c in split.chunks if c.hard_split]
    assert hard, "the 900-word sentences must be hard-split"
    for chunk in split.chunks[:-1]:
        if not chunk.hard_split:
            assert SENTENCE_END.search(chunk.body), chunk.body[-40:]
    for chunk in hard:  # the over-budget sentences have no punctuation before their end
        assert not re.search(r"[.!?…。！？]", chunk.body)
    assert len(split.chunks) < 500  # small paragraphs were packed


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_texts_round_trip_and_bodies_have_no_cr(newline: str) -> None:
    text = generated_text(seed=3, paragraphs=60, size=20_000).replace("\n", newline)
    split = split_text(text, 60, words)
    _check_chunks(split, 60, words)
    assert split.newline == newline
    assert _identity(split) == text
    assert any(newline + newline in c.gap for c in split.chunks)
    assert any("\n" in c.body for c in split.chunks)  # lone line breaks inside paragraphs
    outputs = [c.body.upper() for c in split.chunks]
    assert reassemble(split, outputs) == split.prefix + "".join(
        o.replace("\n", newline) + c.gap for o, c in zip(outputs, split.chunks, strict=False))


def test_dominant_newline_and_mixed_line_endings() -> None:
    assert split_text("a\r\nb\r\n\nc\r\n", 10, words).newline == "\r\n"
    assert split_text("one line", 10, words).newline == "\n"
    split = split_text("a\r\n\r\nb\n\nc", 1, words)
    assert [c.body for c in split.chunks] == ["a", "b", "c"]
    assert [c.gap for c in split.chunks] == ["\r\n\r\n", "\n\n", ""]


def test_over_budget_sentence_is_hard_split_at_whitespace() -> None:
    sentence = " ".join(f"w{i}" for i in range(50)) + "."
    split = split_text(f"Short one. {sentence} Tail here.", 8, words)
    _check_chunks(split, 8, words)
    assert _identity(split) == f"Short one. {sentence} Tail here."
    flags = [c.hard_split for c in split.chunks]
    assert flags.count(True) == 6 and not flags[0] and not flags[-1]
    assert all(c.tokens == 8 for c in split.chunks if c.hard_split)  # cut as late as fits
    assert split.chunks[-1].body == "w48 w49. Tail here."  # the tail packs with the next sentence


def test_hard_split_never_cuts_a_combining_sequence() -> None:
    word = "e\u0301a\u0308\u0323o" + "👩\u200d💻" + "👍🏽"
    text = word * 40
    split = split_text(text, 5, utf8_quarters)
    _check_chunks(split, 5, utf8_quarters)
    assert len(split.chunks) > 10 and all(c.hard_split for c in split.chunks[:-1])
    assert _identity(split) == text
    for chunk in split.chunks:
        first, last = chunk.body[0], chunk.body[-1]
        assert not unicodedata.category(first).startswith("M"), repr(chunk.body)
        assert first not in "\u200d\U0001f3fd" and last != "\u200d", repr(chunk.body)


def test_character_over_budget_is_an_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        split_text("🎉🎉🎉", 1, utf8_quarters)


def test_cjk_sentences_without_spaces_split_at_full_stops() -> None:
    sentences = ["今天天气很好。", "我们去公园散步吧！", "你想一起来吗？", "「好的。」", "東京の朝は静かだ。"] * 6
    text = "".join(sentences)
    split = split_text(text, 12, len)
    _check_chunks(split, 12, len)
    assert _identity(split) == text
    assert not any(c.hard_split for c in split.chunks)
    assert all(c.gap == "" for c in split.chunks)
    assert all(c.body[-1] in "。！？」" for c in split.chunks)
    assert split.chunks[0].body == "今天天气很好。"  # with the next sentence it would be 16


def test_leading_and_trailing_whitespace_is_kept() -> None:
    text = " \t\n\n  First paragraph here.\n\nSecond one.\n \n"
    split = split_text(text, 100, words)
    assert split.prefix == " \t\n\n  "
    assert [(c.body, c.gap) for c in split.chunks] == [("First paragraph here.\n\nSecond one.", "\n \n")]
    assert _identity(split) == text
    assert split_text("no space", 5, words).chunks[-1].gap == ""


@pytest.mark.parametrize("text", ["", " ", "\r\n\r\n", " \t\u3000\n"])
def test_empty_and_whitespace_only_texts_have_no_chunks(text: str) -> None:
    split = split_text(text, 10, words)
    assert split.prefix == text and split.chunks == []
    assert reassemble(split, []) == text


def test_small_paragraphs_are_packed_greedily() -> None:
    paras = [" ".join(["word"] * n) + "." for n in [3, 5, 2, 7, 4, 4, 1, 6, 3, 2]]
    text = "\n\n".join(paras)
    assert len(split_text(text, 1000, words).chunks) == 1
    split = split_text(text, 10, words)
    _check_chunks(split, 10, words)
    assert _identity(split) == text
    assert 1 < len(split.chunks) < len(paras)
    assert not any(c.hard_split for c in split.chunks)
    for chunk, nxt in zip(split.chunks, split.chunks[1:], strict=False):  # the next paragraph did not fit
        assert words(chunk.body + "\n\n" + nxt.body.split("\n\n")[0]) > 10


def test_packing_is_exact_when_counts_are_not_additive() -> None:
    text = "\n\n".join(f"Item {i}." for i in range(60))
    split = split_text(text, 20, utf8_quarters)
    _check_chunks(split, 20, utf8_quarters)
    assert _identity(split) == text
    for chunk, nxt in zip(split.chunks, split.chunks[1:], strict=False):  # summed counts would stop earlier
        assert utf8_quarters(chunk.body + "\n\n" + nxt.body.split("\n\n")[0]) > 20


def test_long_sentence_is_split_in_linear_work() -> None:
    text = " ".join(LATIN[i % len(LATIN)] for i in range(10_000)) + "."
    counted = 0

    def counter(s: str) -> int:
        nonlocal counted
        counted += len(s)
        return words(s)

    split = split_text(text, 20, counter)
    _check_chunks(split, 20, words)
    assert len(split.chunks) == 500 and _identity(split) == text
    # Each piece is found by a search over prefixes of about its own length (~16 counts of a
    # piece); counting the whole remainder per piece would be ~250 times the text.
    assert counted < 30 * len(text), counted / len(text)


def test_packing_checks_real_counts_of_joined_text() -> None:
    def superadditive(s: str) -> int:  # joining costs more than the parts: estimates run low
        n = len(s.split())
        return n + (n // 4) ** 2

    text = "\n\n".join(f"Paragraph {i} has five words." for i in range(40))
    split = split_text(text, 20, superadditive)
    _check_chunks(split, 20, superadditive)
    assert _identity(split) == text
    assert len(split.chunks) < 40


def test_reassemble_places_the_original_gaps_between_outputs() -> None:
    text = "  Hello world.\r\n\r\nHow are you? I am fine.\r\n \r\nBye.\r\n"
    split = split_text(text, 3, words)
    assert [c.body for c in split.chunks] == ["Hello world.", "How are you?", "I am fine.", "Bye."]
    out = reassemble(split, ["Hallo Welt.", "Wie geht's?", "Mir geht's\ngut.", "Tschüss.\r\n"])
    assert out == "  Hallo Welt.\r\n\r\nWie geht's? Mir geht's\r\ngut.\r\n \r\nTschüss.\r\n\r\n"
    with pytest.raises(ValueError):
        reassemble(split, ["only one"])


@pytest.mark.parametrize("budget", [0, -1])
def test_budget_below_one_is_an_error(budget: int) -> None:
    with pytest.raises(ValueError, match="budget"):
        split_text("text", budget, words)


def test_chunk_fields() -> None:
    split = split_text("One. Two three four five.", 3, words)
    assert split.chunks[0] == Chunk(body="One.", gap=" ", tokens=1, hard_split=False)
    assert split.chunks[1] == Chunk(body="Two three four", gap=" ", tokens=3, hard_split=True)


def test_real_tokenizer_counts_stay_within_budget() -> None:
    """Gemma 3's tokenizer (262k pieces), not a stand-in: budgets are counted as the model counts."""
    from tokenizers import Tokenizer

    from model_cache import gemma_tokenizer_json

    tok = Tokenizer.from_file(str(gemma_tokenizer_json()))
    assert tok.get_vocab_size() >= 262_144

    def count(s: str) -> int:
        return len(tok.encode(s, add_special_tokens=False).ids)

    text = generated_text(seed=11, paragraphs=40, size=16_000)
    split = split_text(text, 96, count)
    _check_chunks(split, 96, count)
    assert _identity(split) == text
