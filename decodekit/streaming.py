"""Turning a growing list of token ids into text pieces without breaking multi-byte characters."""

from __future__ import annotations

from typing import Any


class TextStream:
    """Incremental detokenizer.

    ``push(ids)`` returns the new text since the last call. A byte-level BPE token can end in the
    middle of a UTF-8 character; the tokenizer then decodes it as U+FFFD, so a piece is held back
    until the character is complete. Decoding the whole list each time (rather than token by
    token) keeps SentencePiece's leading-space rules right.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self._decode()
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        return self._advance(self._decode())

    def _advance(self, text: str) -> str:
        # Normally text extends what was emitted; if a tokenizer re-normalised earlier text, emit
        # from the first differing character (a terminal cannot take back what it printed).
        k = 0
        limit = min(len(text), len(self.emitted))
        while k < limit and text[k] == self.emitted[k]:
            k += 1
        piece = text[max(k, len(self.emitted)):] if k == len(self.emitted) else text[k:]
        self.emitted = text
        return piece
