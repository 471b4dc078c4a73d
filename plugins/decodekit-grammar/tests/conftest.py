"""Fixtures: a character-level tokenizer wide enough for every shipped grammar, tiny models."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

from decodekit import Draft, hookimpl
from decodekit.testing import DEFAULT_CHARS, tiny_model, tiny_tokenizer

CHARS = DEFAULT_CHARS + "()+*/=#<>_|&" + string.ascii_uppercase
GRAMMARS = Path(__file__).resolve().parents[3] / "grammars"


@pytest.fixture(scope="session")
def ctok():
    return tiny_tokenizer(CHARS)


@pytest.fixture(scope="session")
def cmodel(ctok):
    return tiny_model("llama", ctok, seed=3)


class Nudge:
    """A test rescorer: adds ``bonus`` to the logits of some tokens (EOS, closing brackets), so
    that random tiny models finish grammatical outputs within a few dozen tokens."""

    name = "nudge"

    def __init__(self, ids: list[int], bonus: float):
        self.ids, self.bonus = ids, bonus

    @hookimpl
    def rescore(self, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[..., self.ids] += self.bonus
        return out


def nudge(tok, chars: str, bonus: float = 4.0) -> Nudge:
    ids = [tok.eos_token_id] + [tok.convert_tokens_to_ids(c) for c in chars]
    return Nudge(ids, bonus)


@pytest.fixture(scope="session")
def grammars():
    """The repository's grammars/ directory."""
    return GRAMMARS


@pytest.fixture(scope="session")
def nudger():
    """``nudger(tok, chars, bonus)``: a :class:`Nudge` for EOS and ``chars``."""
    return nudge


class Lookahead:
    """A deterministic proposer: a chain of 4 tokens derived from the last committed token, some
    of which the grammar rejects (so draft states go DEAD) and some of which it accepts."""

    name = "lookahead"

    def __init__(self, vocab_size: int):
        self.V = vocab_size

    @hookimpl
    def propose(self, generation):
        drafts = []
        for b in range(generation.num_rows):
            last = generation.tokens[b][-1]
            drafts.append(Draft.chain([(last * 7 + k * 13) % self.V for k in range(3)] + [last]))
        return drafts


@pytest.fixture(scope="session")
def lookahead():
    """The :class:`Lookahead` proposer class."""
    return Lookahead
