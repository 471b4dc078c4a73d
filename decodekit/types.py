"""Plain data that crosses the hook boundary: drafts, verdicts, decisions, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Draft:
    """Tokens proposed for one row, as a chain or a tree rooted at the row's next position.

    * ``tokens``: ``n`` token ids, one per node.
    * ``parents``: ``n`` ints; ``parents[i]`` is ``-1`` when node ``i`` follows the root (the
      committed text) and otherwise the index of an earlier node (``parents[i] < i``).
    * ``q``: optional ``[n, V]`` float tensor; ``q[i]`` is the (processed) draft distribution
      that node ``i``'s token was sampled from, i.e. the drafter's distribution at node ``i``'s
      parent. None means the draft is deterministic (prompt lookup, recycling): a one-hot q.
    """

    tokens: list[int]
    parents: list[int]
    q: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"draft has {len(self.tokens)} tokens but {len(self.parents)} parents")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"draft node {i} has parent {p}; parents must be -1 or an earlier node")
        if self.q is not None and (self.q.dim() != 2 or self.q.shape[0] != len(self.tokens)):
            raise ValueError(f"draft q must be [n, V] with n={len(self.tokens)}, got {tuple(self.q.shape)}")

    @classmethod
    def chain(cls, tokens: list[int], q: torch.Tensor | None = None) -> "Draft":
        """A linear draft: node ``i`` follows node ``i - 1``."""
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), q)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def depth(self, i: int) -> int:
        """Number of nodes on the path root → node ``i``, node ``i`` included (a root child has 1)."""
        d = 0
        while i >= 0:
            d, i = d + 1, self.parents[i]
        return d

    def path(self, i: int) -> list[int]:
        """Node indices from the root's child down to node ``i`` (``[]`` for ``i = -1``)."""
        nodes = []
        while i >= 0:
            nodes.append(i)
            i = self.parents[i]
        return nodes[::-1]

    def children(self, i: int) -> list[int]:
        """Indices of the nodes whose parent is ``i`` (``-1`` = the root), in order."""
        return [k for k, p in enumerate(self.parents) if p == i]


@dataclass
class Verdict:
    """What one row commits this step: the accepted draft nodes, then one token from p'."""

    accepted: list[int]
    next_token: int
    logprob: float | None = None


@dataclass
class Decision:
    """The verify hook's answer for the whole batch.

    ``source_rows[b]`` (beam search only): row ``b`` continues the history of that row before
    appending its tokens. ``finished[b]``: the strategy declares row ``b`` finished (beam search
    finishes a prompt's beams together).
    """

    verdicts: list[Verdict]
    source_rows: list[int] | None = None
    finished: list[bool] | None = None


@dataclass
class Sequence:
    """One returned sequence: the new tokens (prompt excluded), its text and a score."""

    token_ids: list[int]
    score: float | None = None
    text: str = ""


@dataclass
class Stats:
    """Per-call statistics.

    ``row_passes`` counts, over every target forward pass, the rows still decoding in it, so
    ``mean_tokens_per_pass = new_tokens / row_passes`` is the mean number of tokens a row commits
    per target pass: 1.0 for plain decoding, more when drafts are accepted.
    """

    new_tokens: int = 0
    target_passes: int = 0
    row_passes: int = 0
    drafted_tokens: int = 0
    accepted_draft_tokens: int = 0
    wall_time_s: float = 0.0

    @property
    def mean_tokens_per_pass(self) -> float:
        return self.new_tokens / self.row_passes if self.row_passes else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "new_tokens": self.new_tokens,
            "target_passes": self.target_passes,
            "mean_tokens_per_pass": round(self.mean_tokens_per_pass, 4),
            "drafted_tokens": self.drafted_tokens,
            "accepted_draft_tokens": self.accepted_draft_tokens,
            "wall_time_s": round(self.wall_time_s, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
        }


@dataclass
class Completion:
    """The result for one prompt: text, new token ids, why it stopped, and extra sequences."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    sequences: list[Sequence] = field(default_factory=list)


@dataclass
class Result:
    """What ``Pipeline.generate`` returns: one completion per prompt and the call's statistics.

    For a single prompt, ``result.text`` / ``result.token_ids`` are the completion's.
    """

    completions: list[Completion]
    stats: Stats

    @property
    def text(self) -> str:
        return self.completions[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.completions[0].token_ids

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]

    def as_dict(self) -> dict[str, Any]:
        def one(c: Completion) -> dict[str, Any]:
            d: dict[str, Any] = {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
            if c.sequences:
                d["sequences"] = [{"text": s.text, "token_ids": s.token_ids, "score": s.score} for s in c.sequences]
            return d

        if len(self.completions) == 1:
            return {**one(self.completions[0]), "stats": self.stats.as_dict()}
        return {"completions": [one(c) for c in self.completions], "stats": self.stats.as_dict()}
