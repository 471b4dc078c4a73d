"""The ``momentum`` rescore plugin: momentum decoding as a transform of the logits.

At each position, with ``p = softmax(logits)`` and ``C`` the ``k`` most likely tokens::

    score(v) = p(v) − α · R(L(v))    for v in C          (L: graph.py, R: resistance.py)
    score(v) = −inf                  otherwise

Momentum decoding emits ``argmax_v score(v)``. The plugin returns ``score`` as the new logits, so
the built-in ``greedy`` strategy (argmax of the processed distribution) makes exactly that choice,
and greedy verification of a draft accepts a node exactly when it is the momentum choice there:
speculation stays token-for-token exact. Tokens already at ``−inf`` (ruled out by an earlier
rescorer) stay ``−inf`` even inside the top k.

Only ``strategy: greedy`` is accepted. ``score`` is a probability minus a penalty, not a
log-probability: a softmax over it (what ``sample`` or ``beam`` would do) is close to uniform over
the k candidates and means nothing the paper defines, so the plugin refuses those strategies
with a :class:`~decodekit.ConfigError` when the pipeline is built and when a call overrides the
strategy.

Masks: the host applies them after the rescore chain, so the plugin asks the pipeline's mask
plugins itself (:func:`allowed_only`): the k candidates are the top k *allowed* tokens and p is
renormalised over the allowed tokens, so momentum composes with a grammar or a banned-words mask.

Example (a tiny random model, so it runs anywhere)::

    >>> from decodekit import Pipeline
    >>> from decodekit.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> pipe = Pipeline(tiny_model("llama", tok), tokenizer=tok, decoding={"max_new_tokens": 8},
    ...                 plugins=[{"name": "momentum", "k": 5, "alpha": 0.2}])
    >>> len(pipe.generate("once upon a time").token_ids)
    8
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from decodekit import ConfigError, Positions, TokenState, hookimpl
from decodekit_momentum.graph import Graph
from decodekit_momentum.resistance import Resistance, TableResistance

STRATEGY_PREFIX = "strategy:"  # how the host names the strategy among a call's plugins


class MomentumOptions(BaseModel):
    """Options of the ``momentum`` plugin (defaults: the authors' reference implementation)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1, description="number of candidates: the k most likely tokens")
    alpha: float = Field(0.2, ge=0, allow_inf_nan=False, description="weight of the resistance")
    max_ngram: int = Field(5, ge=1, le=64, description="cap on the repetition length L")
    resistance: Resistance = Field(default_factory=TableResistance,
                                   description="R(L): table (default), constant, log or exp")
    include_prompt: bool = Field(True, description="the prompt's tokens are graph nodes (reference)")
    exempt_eos: bool = Field(False, description="never penalise end-of-sequence tokens")

    @field_validator("resistance", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # "log" → {"form": "log"}; a mapping without a form is a table
        if isinstance(v, str):
            return {"form": v}
        if isinstance(v, dict) and "form" not in v:
            return {"form": "table", **v}
        if isinstance(v, list):
            return {"form": "table", "values": v}
        return v

    @model_validator(mode="after")
    def _table_fits(self) -> MomentumOptions:
        self.resistance.values_for(self.max_ngram)  # raises when a table's length is wrong
        return self


class Momentum(TokenState[Graph]):
    """Momentum decoding (Lan et al., "open-ended text generation as graph exploration")."""

    strategies = ("greedy",)  # the scores are not log-probabilities: argmax only (checked at validation)

    def __init__(self, options: MomentumOptions | None = None, pipeline: Any = None):
        self.options = o = options or MomentumOptions()
        self.k, self.alpha, self.max_n = o.k, o.alpha, o.max_ngram
        self.table = torch.tensor(o.resistance.values_for(o.max_ngram), dtype=torch.float32)  # [max_n + 1]
        self.exempt: frozenset[int] = frozenset()
        if pipeline is not None:
            _check_strategy(pipeline.config.decoding.strategy)
            if o.exempt_eos:
                self.exempt = frozenset(pipeline.eos_token_ids())

    # -- state: the graph of prompt + committed text (+ draft path) ----------------------------

    def initial_state(self, prompt_ids: list[int]) -> Graph:
        return Graph.build(prompt_ids if self.options.include_prompt else [], self.max_n)

    def next_state(self, state: Graph, token: int) -> Graph:
        return state.append(int(token))

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def start(self, generation: Any) -> None:
        for name in generation.hooks.implementers("verify"):
            if name.startswith(STRATEGY_PREFIX):
                _check_strategy(name[len(STRATEGY_PREFIX):])

    @hookimpl
    def rescore(self, positions: Positions, logits: torch.Tensor) -> torch.Tensor:
        x = allowed_only(positions, logits.float())                     # [B', J, V]
        top = torch.topk(x, min(self.k, x.shape[-1]), dim=-1)           # [B', J, k] each
        lengths = self.repetition_lengths(positions, top.indices)
        return momentum_scores(x, lengths, self.k, self.alpha, self.table, top=top)

    def repetition_lengths(self, positions: Positions, top_ids: torch.Tensor) -> torch.Tensor:
        """``L`` of the candidates ``top_ids [B', J, k]``: long, same shape (0 at padding)."""
        ids_list = top_ids.tolist()  # one device → host copy: [B'][J][k]
        states = positions.states(self)
        exempt = self.exempt
        out = []
        for i, per_pos in enumerate(ids_list):
            n = positions.length(i)
            rows = []
            for j, ids in enumerate(per_pos):
                if j >= n:  # padding: any finite score will do
                    rows.append([0] * len(ids))
                    continue
                g = states[i][j]
                rows.append([0 if v in exempt else g.repetition_length(v) for v in ids])
            out.append(rows)
        return torch.tensor(out, dtype=torch.long).reshape(top_ids.shape)


def momentum_scores(logits: torch.Tensor, lengths: torch.Tensor, k: int, alpha: float,
                    table: torch.Tensor, top: Any = None) -> torch.Tensor:
    """The momentum rescore of ``logits [..., V]`` given ``lengths [..., k]`` = L of the top k.

    Returns float32 ``[..., V]``: ``p(v) − α · R(L(v))`` on the top k (``−inf`` where the logit
    was ``−inf``), ``−inf`` elsewhere. ``table [max_n + 1]``: R(0) .. R(max_n). ``top``: the
    result of ``torch.topk(logits.float(), k)`` when the caller already has it.
    """
    x = logits.float()
    top_logits, top_ids = top if top is not None else torch.topk(x, min(k, x.shape[-1]), dim=-1)  # [..., k]
    # log_softmax + gather rather than logsumexp, and an in-place scatter: on CPU, ops over a
    # single row of V logits that stay single-threaded (no OpenMP region per step)
    p_top = torch.log_softmax(x, dim=-1).gather(-1, top_ids).exp()  # [..., k]: p(v | x<t)
    resistance = table.to(x.device)[lengths.to(x.device)]           # [..., k]: R(L(v))
    score = (p_top - alpha * resistance).masked_fill(torch.isneginf(top_logits), float("-inf"))
    out = torch.full_like(x, float("-inf"))                          # [..., V]
    return out.scatter_(-1, top_ids, score)


def allowed_only(positions: Positions, logits: torch.Tensor) -> torch.Tensor:
    """``logits [B', J, V]`` with every token that some mask plugin forbids set to ``−inf``.

    The host masks after the rescore chain; asking the mask plugins here (they are pure
    functions of the positions) makes the k candidates the top k *allowed* tokens and p the
    distribution renormalised over them. A position where nothing is allowed, and a finished
    row, are left as they are: the host reports the former and ignores the latter.
    """
    allowed = positions.allowed(logits)  # [B', J, V] bool, finished rows unrestricted
    if allowed is None:
        return logits
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)          # nothing allowed: leave it
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def _check_strategy(strategy: str) -> None:
    if strategy != "greedy":
        raise ConfigError(
            f"plugin 'momentum' needs decoding.strategy: greedy (got {strategy!r}); momentum decoding "
            f"is deterministic: its scores p(v) − α·R(L(v)) are not log-probabilities to sample from"
        )
