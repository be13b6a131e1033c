"""A correct `tokenizer.json` for Gemma 3 rebuilt from the vocabulary stored in its GGUF file.

A GGUF carries no `tokenizer.json`. transformers 4.x rebuilds a Unigram model from it, which cuts
"capital" into `c ap it al`: Gemma 3 is a SentencePiece *BPE* model, and its GGUF scores are merge
ranks, not log-probabilities. This module rebuilds the BPE model the way SentencePiece encodes:

* Spaces become "▁" (no prefix space is added: `tokenizer.ggml.add_space_prefix` is false).
* A pair of adjacent pieces merges when the joined piece is a NORMAL token; the higher its score,
  the earlier it merges. Only NORMAL pieces take part, as in SentencePiece.
* USER_DEFINED pieces (newline, space and tab runs, HTML tags) are matched whole, longest first,
  and never merge with their neighbours: SentencePiece freezes them, here they are added tokens.
  (transformers 5 reaches space runs through merges instead, and so departs from SentencePiece
  on runs of 32 spaces or more: 31 is the longest such piece.)
* Characters that are not in the vocabulary fall back to the byte tokens `<0x00>`..`<0xFF>`.
* CONTROL pieces and the multimodal markers are special added tokens, so that a caller can set
  `Tokenizer.encode_special_tokens = True` and have user text like "<end_of_turn>" stay text.

No post-processor adds `<bos>`: the engine prepends it itself, so one place decides about it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, normalizers
from tokenizers.models import BPE

__all__ = ["GgufVocab", "TokenType", "build_tokenizer", "read_gguf_vocab", "write_tokenizer_json"]

SPACE_MARK = "\u2581"


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values: llama.cpp's names for SentencePiece's piece types."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# USER_DEFINED in the file, yet markers the engine places itself: user text must not forge them.
MULTIMODAL_MARKERS = frozenset({"<start_of_image>", "<end_of_image>", "<image_soft_token>", "[multimodal]"})


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer part of a GGUF's metadata: everything needed to rebuild the tokenizer."""

    tokens: list[str]
    scores: list[float]
    token_types: list[int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    model: str  # tokenizer.ggml.model: "llama" means SentencePiece
    pre: str | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None


# --- GGUF metadata -------------------------------------------------------------------------------
# gguf's GGUFReader builds a numpy view per array element: ~20 s for a 262k vocabulary on a small
# box. This reader walks only the key/value section (never the tensors) in well under a second,
# and needs nothing beyond the standard library, so edge boxes without `gguf` can use it too.

_GGUF_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _KvReader:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.scalar("Q")
        start, self.pos = self.pos, self.pos + size
        return self.buf[start : self.pos].decode("utf-8")

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type in _SCALARS:
            return self.scalar(_SCALARS[value_type])
        if value_type != _ARRAY:
            raise ValueError(f"unknown GGUF value type {value_type}")
        item_type, count = self.scalar("I"), self.scalar("Q")
        if item_type in _SCALARS:  # one unpack for the whole array, not one per item
            fmt = f"<{count}{_SCALARS[item_type]}"
            items = list(struct.unpack_from(fmt, self.buf, self.pos))
            self.pos += struct.calcsize(fmt)
            return items
        return [self.value(item_type) for _ in range(count)]


def _read_tokenizer_metadata(gguf_path: Path) -> dict[str, Any]:
    try:
        return _read_metadata(gguf_path)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{gguf_path}: truncated or corrupt GGUF metadata ({exc})") from exc


def _read_metadata(gguf_path: Path) -> dict[str, Any]:
    if gguf_path.stat().st_size < 24:
        raise ValueError(f"{gguf_path} is not a GGUF file")
    with open(gguf_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        reader = _KvReader(buf)
        if buf[:4] != _GGUF_MAGIC:
            raise ValueError(f"{gguf_path} is not a GGUF file")
        reader.pos = 4
        version = reader.scalar("I")
        if version not in (2, 3):  # v1 used 32-bit lengths; other values mean another byte order
            raise ValueError(f"{gguf_path}: unsupported GGUF version {version}")
        _tensor_count, kv_count = reader.scalar("Q"), reader.scalar("Q")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = reader.string()
            value = reader.value(reader.scalar("I"))
            if key.startswith("tokenizer."):
                metadata[key] = value
        return metadata


def read_gguf_vocab(gguf_path: str | Path) -> GgufVocab:
    """Read the tokenizer metadata of a GGUF; the tensors after it are never touched."""
    meta = _read_tokenizer_metadata(Path(gguf_path))
    try:
        tokens = meta["tokenizer.ggml.tokens"]
    except KeyError:
        raise ValueError(f"{gguf_path} holds no tokenizer vocabulary") from None
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = meta.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    if not len(tokens) == len(scores) == len(types):
        raise ValueError(f"{gguf_path}: tokens, scores and token types differ in length")
    ggml = {key.removeprefix("tokenizer.ggml."): value for key, value in meta.items()}
    return GgufVocab(
        tokens=list(tokens), scores=[float(s) for s in scores], token_types=[int(t) for t in types],
        bos_id=ggml.get("bos_token_id"), eos_id=ggml.get("eos_token_id"),
        unk_id=ggml.get("unknown_token_id"), pad_id=ggml.get("padding_token_id"),
        model=str(ggml.get("model", "")), pre=ggml.get("pre"),
        add_bos=bool(ggml.get("add_bos_token", False)), add_eos=bool(ggml.get("add_eos_token", False)),
        add_space_prefix=bool(ggml.get("add_space_prefix", False)),
        chat_template=meta.get("tokenizer.chat_template"),
    )


# --- tokenizer -----------------------------------------------------------------------------------


def _piece(token: str) -> str:
    # llama.cpp writes Gemma's space-run pieces with real spaces; SentencePiece spells them "▁▁".
    return SPACE_MARK * len(token) if token and token.strip(" ") == "" else token


def _merges(pieces: list[str], vocab: GgufVocab) -> list[tuple[str, str]]:
    """Every split of a NORMAL piece into two NORMAL pieces, best score first.

    SentencePiece merges the adjacent pair whose joined piece scores highest; listing each piece's
    splits at that piece's rank makes tokenizers' BPE pick the same merge.
    """
    normal = {p: i for i, p in enumerate(pieces) if vocab.token_types[i] == TokenType.NORMAL}
    ranked = []
    for piece, index in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-vocab.scores[index], index, len(left), left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(vocab: GgufVocab) -> Tokenizer:
    """A `tokenizers` BPE tokenizer that encodes like Gemma's SentencePiece model."""
    if vocab.model != "llama":
        raise ValueError(f"expected a SentencePiece ('llama') vocabulary, got {vocab.model!r}")
    if vocab.add_space_prefix:
        raise ValueError("vocabularies that add a prefix space are not supported")
    pieces = [_piece(t) for t in vocab.tokens]
    ids = {p: i for i, p in enumerate(pieces)}
    if len(ids) != len(pieces):
        raise ValueError("the vocabulary has duplicate pieces")
    unk = pieces[vocab.unk_id] if vocab.unk_id is not None else None
    model = BPE(vocab=ids, merges=_merges(pieces, vocab), unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", SPACE_MARK)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    special, plain = [], []
    for piece, kind in zip(pieces, vocab.token_types, strict=True):
        if kind in (TokenType.CONTROL, TokenType.UNKNOWN) or piece in MULTIMODAL_MARKERS:
            special.append(AddedToken(piece, special=True, normalized=False))
        elif kind == TokenType.USER_DEFINED:
            # Matched after " " -> "▁", as SentencePiece matches them, so "  " finds "▁▁".
            plain.append(AddedToken(piece, special=False, normalized=True))
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)
    return tokenizer


def write_tokenizer_json(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/tokenizer.json`, all the engine needs to tokenize for this GGUF's model."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "tokenizer.json"
    build_tokenizer(read_gguf_vocab(gguf_path)).save(str(target))
    return target
