"""Fixtures and small test plugins: tiny models, the embedded model, a deterministic proposer, a mask.

The helpers are defined here and handed out as fixtures because pytest runs with
``--import-mode=importlib`` (test modules cannot import each other).
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from decodekit import Draft, hookimpl
from decodekit.testing_fixtures import llama, tiny, tok  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct pipeline (greedy), loaded once per session."""
    from decodekit import Pipeline

    return Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 16})


# -- a deterministic proposer ------------------------------------------------------------------

class ScriptProposer:
    """Proposes drafts from a known continuation ``script[b]`` of each row (e.g. plain decoding's).

    Each step, for a row whose generated text is still a prefix of its script, it proposes the next
    ``k`` script tokens, corrupting one of them every other step (so some drafts are accepted in
    full, some in part); as a ``tree`` it adds a wrong sibling before each correct node. Rows that
    left their script get the previous ``k`` tokens as a chain (prompt-lookup style). The output
    of greedy decoding must not depend on any of this: only the number of target passes does.
    """

    def __init__(self, scripts: list[list[int]], k: int = 4, tree: bool = False, vocab: int = 32):
        self.scripts, self.k, self.tree, self.vocab = scripts, k, tree, vocab
        self.steps = 0

    def _chain(self, b: int, generated: list[int], tokens: list[int]) -> list[int]:
        script = self.scripts[b]
        if generated == script[: len(generated)] and len(generated) < len(script):
            chain = list(script[len(generated): len(generated) + self.k])
            if self.steps % 2 == 1 and len(chain) > 1:
                i = self.steps % len(chain)
                chain[i] = (chain[i] + 1) % self.vocab
            return chain
        return tokens[-self.k:]

    @hookimpl
    def propose(self, generation) -> list[Draft | None]:
        self.steps += 1
        out: list[Draft | None] = []
        for b in range(generation.num_rows):
            chain = self._chain(b, generation.new_tokens(b), generation.tokens[b])
            if not self.tree:
                out.append(Draft.chain(chain))
                continue
            tokens: list[int] = []
            parents: list[int] = []
            parent = -1
            for t in chain:  # a wrong sibling first, then the chain node, which the next hangs from
                tokens += [(t + 3) % self.vocab, t]
                parents += [parent, parent]
                parent = len(tokens) - 1
            out.append(Draft(tokens, parents))
        return out


@pytest.fixture
def script_proposer() -> type[ScriptProposer]:
    return ScriptProposer


# -- a path-dependent mask ---------------------------------------------------------------------

class NoRepeatMask:
    """Bans the token just before each position (no immediate repetition): a mask whose answer
    depends on the draft path, so it checks that positions are evaluated along drafts."""

    @hookimpl
    def mask(self, positions, logits: torch.Tensor) -> torch.Tensor:
        allowed = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)  # [B', J, V]
        for i in range(len(positions)):
            for j in range(positions.length(i)):
                allowed[i, j, positions.prefix(i, j)[-1]] = False
        return allowed


@pytest.fixture
def no_repeat() -> type[NoRepeatMask]:
    return NoRepeatMask


# -- an uncached reference decoder -------------------------------------------------------------

@torch.inference_mode()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    """``[V]`` float32 next-token logits after ``ids``, recomputed from scratch (no cache)."""
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()


def reference_greedy(score: Callable[[list[int]], torch.Tensor], prompt: list[int], n: int,
                     eos: set[int], ban_repeat: bool = False) -> list[int]:
    """Greedy decoding of ``score(prefix) -> [V]`` (optionally with the no-repeat mask), uncached."""
    out: list[int] = []
    for _ in range(n):
        s = score(prompt + out).clone()
        if ban_repeat:
            s[(prompt + out)[-1]] = float("-inf")
        t = int(s.argmax())
        out.append(t)
        if t in eos:
            break
    return out


@pytest.fixture
def reference() -> dict[str, Callable]:
    return {"last_logits": last_logits, "greedy": reference_greedy}
