"""Gemma 3 prompts as token ids: user text is always text, control tokens come only from us.

`tokenizers` would turn the literal text "<end_of_turn>" inside a file into the control
token 106 and let a document end the user turn and speak as the model. With
`encode_special_tokens` on, every string is tokenized as plain text, and the chat frame
(<bos>, <start_of_turn>, image tokens) is inserted by id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from tokenizers import Tokenizer

from edged.models.manifest import Tokens

Part = Union[str, int, Sequence[int]]


class GemmaTokenizer:
    def __init__(self, path: Path, tokens: Tokens) -> None:
        self.tok = Tokenizer.from_file(str(path))
        self.tok.encode_special_tokens = True
        self.tokens = tokens

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def _join(self, parts: Sequence[Part]) -> list[int]:
        """Adjacent strings are tokenized together (as one text between control tokens)."""
        ids: list[int] = []
        pending = ""
        for part in parts:
            if isinstance(part, str):
                pending += part
                continue
            ids += self.encode(pending)
            pending = ""
            ids += [part] if isinstance(part, int) else list(part)
        return ids + self.encode(pending)

    def image_block(self, n_tokens: int) -> list[Part]:
        t = self.tokens
        if t.start_of_image is None or t.image_soft_token is None or t.end_of_image is None:
            raise ValueError("this model has no image tokens")
        return ["\n\n", t.start_of_image, [t.image_soft_token] * n_tokens, t.end_of_image, "\n\n"]

    def prompt(self, text: str, chat: bool, images: int = 0, image_tokens: int = 0,
               crops: Sequence[int] = ()) -> list[int]:
        """<bos> [chat frame] [image blocks] text [end of turn, model turn].

        `crops[i]` pan-and-scan crops of image i are introduced the way Gemma's processor
        does it: "Here is the original image <image> and here are some crops to help you
        see better <image> <image>".
        """
        t = self.tokens
        parts: list[Part] = [t.bos]
        if chat:
            parts += [t.start_of_turn, "user\n"]
        for i in range(images):
            n = crops[i] if i < len(crops) else 0
            if not n:
                parts += self.image_block(image_tokens)
                continue
            parts += ["Here is the original image ", *self.image_block(image_tokens),
                      " and here are some crops to help you see better "]
            for k in range(n):
                parts += ([" "] if k else []) + self.image_block(image_tokens)
        parts.append(text)
        if chat:
            parts += [t.end_of_turn, "\n", t.start_of_turn, "model\n"]
        return self._join(parts)
