"""``ban_words``: a mask plugin that forbids every token that would start a banned word.

A token is banned when its text, stripped of leading spaces, is a non-empty prefix of a banned
word (case-insensitive) — so the model can't begin any banned word, whichever way it would
tokenize it. Example pipeline entry::

    plugins:
      - name: ban_words
        words: [Paris, London]
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from decodekit import hookimpl


class BanWordsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    words: list[str] = Field(min_length=1, description="words the model must not write")


class BanWords:
    """Forbid the tokens that start any of the banned words."""

    def __init__(self, options: BanWordsOptions, pipeline):
        tok = pipeline.tokenizer
        words = [w.lower() for w in options.words if w.strip()]
        if not words:
            raise ValueError("words: give at least one non-blank word")
        vocab_size = pipeline.model.get_output_embeddings().weight.shape[0]
        banned = []
        for token_id in range(len(tok)):
            piece = tok.decode([token_id]).lstrip().lower()
            if piece and any(w.startswith(piece) for w in words):
                banned.append(token_id)
        self.allowed = torch.ones(vocab_size, dtype=torch.bool)  # [V]
        self.allowed[banned] = False

    @hookimpl
    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        # the same mask at every position: [V] broadcast to [B', J, V]
        return self.allowed.to(logits.device).expand_as(logits)


@hookimpl
def register_plugins(register):
    register("ban_words", BanWords, options=BanWordsOptions, description="forbid a list of words")
