"""Fixtures: tiny random models, the embedded model, a synthetic Markov model, a stateful mask,
and the committed HF v4 reference outputs.

Helpers are handed out as fixtures because pytest runs with ``--import-mode=importlib``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from decodekit import Pipeline, TokenState, hookimpl
from decodekit.testing_fixtures import llama, tiny, tok  # noqa: F401  (shared fixtures)

REFERENCE = Path(__file__).parent / "data" / "hf_group_beam_reference.json"


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct model, as a diverse_beam pipeline."""
    return Pipeline("smollm2-135m", decoding={"strategy": "diverse_beam", "num_beams": 6, "num_groups": 3,
                                              "max_new_tokens": 10})


@pytest.fixture(scope="session")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture
def logits_checksum():
    def checksum(model, ids: list[int]) -> float:
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([ids])).logits.double().abs().sum())

    return checksum


# -- a synthetic model: next-token distribution given only the last token ------------------------

class MarkovLM(torch.nn.Module):
    """A causal "LM" whose next-token log-probabilities depend only on the last token:
    ``table[last]`` (``[V, V]``). It follows the call convention decodekit's KV cache uses
    (``input_ids``, ``logits_to_keep``; no cache is needed since nothing depends on the past)."""

    def __init__(self, table: torch.Tensor, eos: int = 1, pad: int = 0):
        super().__init__()
        self.table = torch.nn.Parameter(table.float(), requires_grad=False)
        self.generation_config = SimpleNamespace(eos_token_id=eos, pad_token_id=pad)

    @property
    def dtype(self):
        return torch.float32

    def forward(self, input_ids, logits_to_keep: int = 1, **_):
        logits = self.table[input_ids][:, -logits_to_keep:]  # [B, keep, V]
        return SimpleNamespace(logits=logits, cache=None)


@pytest.fixture
def markov():
    """``markov(tok, rows)``: a MarkovLM whose rows are ``{token: probability}`` dicts keyed by
    the previous token (``"*"``: any other token); unlisted tokens get probability 0."""

    def build(tok, rows: dict) -> MarkovLM:
        V = len(tok)
        table = torch.full((V, V), float("-inf"))
        default = rows["*"]
        for prev in range(V):
            for t, prob in rows.get(prev, default).items():
                table[prev, t] = math.log(prob)
        return MarkovLM(table)

    return build


# -- a stateful mask ---------------------------------------------------------------------------

class AlternateParity(TokenState):
    """Mask: after a generated token of parity q, the next token must have the other parity.

    Its state (parity of the last generated token) is a TokenState, so the host reorders it with
    the beams: a beam that continues another's history inherits that history's constraint."""

    name = "alternate_parity"

    def initial_state(self, prompt_ids):
        return None

    def next_state(self, state, token):
        return token % 2

    @hookimpl
    def mask(self, positions, logits):
        parity = torch.arange(logits.shape[-1]) % 2
        allowed = torch.ones(logits.shape, dtype=torch.bool)
        for i, per_pos in enumerate(positions.states(self)):
            for j, state in enumerate(per_pos):
                if state is not None:
                    allowed[i, j] = parity != state
        return allowed.to(logits.device)


@pytest.fixture
def alternate_parity():
    return AlternateParity
