"""The ``span`` plugin: a mask that only lets through exact spans of a passage, and exact search.

* ``search: greedy`` (default): a :class:`~decodekit.TokenState` mask. The state of a row is the
  automaton state of its answer so far (:mod:`decodekit_span.automaton`); the allowed tokens are
  those that continue a span, plus EOS once the answer is a non-empty span. Any strategy (greedy,
  sampling, beam, speculative proposers) then decodes inside the set of spans.
* ``search: exact``: at ``start``, every span of up to ``max_span_tokens`` tokens is scored by the
  model (:func:`decodekit_span.search.best_span`) and the mask then forces the best one followed
  by its EOS, so the completion *is* the most probable span under the model. Use it with the
  greedy or sample strategy (beam search would only repeat the forced answer).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from decodekit import TokenState, hookimpl
from decodekit.errors import ConfigError
from decodekit_span.automaton import SpanAutomaton, State, build
from decodekit_span.search import Best, best_span


class SpanOptions(BaseModel):
    """Options of the ``span`` plugin."""

    model_config = ConfigDict(extra="forbid")

    passage: str = Field(..., min_length=1, description="the text the answer must be an exact span of")
    search: Literal["greedy", "exact"] = Field(
        "greedy", description="greedy: mask only; exact: return the most probable span (exhaustive search)")
    max_span_tokens: int | None = Field(
        None, ge=1, description="longest span the exact search considers (default: max_new_tokens - 1)")
    chunk: int = Field(32, ge=1, description="spans scored per forward pass by the exact search")


class Span(TokenState[State]):
    """Exact-extract span decoding (see the module docstring)."""

    def __init__(self, options: SpanOptions, pipeline):
        self.options = options
        self.automaton: SpanAutomaton = build(pipeline.tokenizer, options.passage)
        self.eos_ids = sorted(pipeline.eos_token_ids())
        if not self.eos_ids:
            raise ValueError("span: the tokenizer has no EOS token, so an answer could never end")
        self.pad_token_id = pipeline.pad_token_id

    # -- TokenState: the row's automaton state after its generated tokens ------------------------

    def initial_state(self, prompt_ids: list[int]) -> State:
        return self.automaton.initial  # the prompt is not part of the answer

    def next_state(self, state: State, token: int) -> State:
        return self.automaton.step(state, token)

    # -- hooks ------------------------------------------------------------------------------------

    @hookimpl
    def start(self, generation) -> None:
        if self.options.search != "exact":
            return
        limit = generation.limits.max_new_tokens - 1  # one slot for the EOS
        L = min(self.options.max_span_tokens or limit, limit)
        if L < 1:
            raise ConfigError("span: search: exact needs max_new_tokens >= 2 (a span token and EOS)")
        sources = self.automaton.sources(L)
        found: dict[tuple[int, ...], Best] = {}
        forced = []
        for row in range(generation.num_rows):
            prompt = tuple(generation.tokens[row])
            if prompt not in found:  # beams of one prompt share their search
                found[prompt] = best_span(generation.model, list(prompt), sources, self.eos_ids,
                                          pad_token_id=self.pad_token_id, chunk=self.options.chunk)
            best = found[prompt]
            forced.append(list(best.tokens) + [best.eos])
        generation.scratch(self)["forced"] = forced

    @hookimpl
    def mask(self, positions, logits: torch.Tensor) -> torch.Tensor:
        B, J, V = logits.shape
        allowed = torch.zeros(B, J, V, dtype=torch.bool)  # [B', J, V]
        forced = positions.generation.scratch(self).get("forced")
        states = positions.states(self) if forced is None else None
        eos = set(self.eos_ids)
        for i in range(B):
            for j in range(positions.length(i)):
                if forced is None:
                    toks, complete = self.automaton.allowed(states[i][j])
                    ids = list(toks) + (self.eos_ids if complete else [])
                else:
                    ids = _forced_next(forced[positions.rows[i]], positions.generated(i, j))
                if ids:
                    allowed[i, j, ids] = True
                    continue
                path = positions.paths[i][j]
                if path and path[-1] not in eos:
                    # a draft node after a token this mask forbids: never accepted, so any token
                    # will do (as the grammar plugin does); EOS alone could leave another mask's
                    # AND empty at a position that cannot be reached
                    allowed[i, j] = True
                else:
                    allowed[i, j, self.eos_ids] = True  # after the answer's EOS (ignore_eos): EOS again
        return allowed.to(logits.device)


def _forced_next(target: list[int], generated: list[int]) -> list[int]:
    """The one token that continues ``generated`` along ``target``; none off the target."""
    n = len(generated)
    if n < len(target) and generated == target[:n]:
        return [target[n]]
    return []
