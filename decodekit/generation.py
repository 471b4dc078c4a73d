"""Per-call state of one ``generate`` call: rows, committed tokens, plugin states, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from decodekit.errors import NoAllowedTokenError
from decodekit.positions import Positions
from decodekit.state import TokenState, walk
from decodekit.types import Decision, Draft, Stats

if TYPE_CHECKING:  # pragma: no cover
    from decodekit.hooks import HookRunner


@dataclass
class Limits:
    """When a row stops: EOS ids, stop strings, a budget of new tokens."""

    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """Everything one call knows; handed to the ``start``/``propose``/``verify``/``advance`` hooks.

    * ``tokens[b]``: row ``b``'s committed token ids, prompt first (``prompt_lengths[b]`` of them).
    * ``done[b]`` / ``finish_reasons[b]``: whether row ``b`` has stopped, and why.
    * ``generators[b]``: row ``b``'s random generator, seeded with the call's seed.
    * ``model`` / ``tokenizer``: the target model and its tokenizer.
    * ``rows_per_prompt``: > 1 for beam search (rows ``p * k .. p * k + k - 1`` are prompt ``p``'s).
    """

    model: Any
    tokenizer: Any
    hooks: HookRunner
    tokens: list[list[int]]
    limits: Limits
    generators: list[torch.Generator]
    rows_per_prompt: int = 1
    prompt_lengths: list[int] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    _scratch: dict[int, dict[str, Any]] = field(default_factory=dict)
    _token_states: dict[int, list[Any]] = field(default_factory=dict)
    _token_state_plugins: list[TokenState[Any]] = field(default_factory=list)
    _branches: dict[int, list[list[int]]] = field(default_factory=dict)  # id(plugin) -> contexts
    _branch_logits: dict[int, torch.Tensor] = field(default_factory=dict)
    _started: bool = False

    def __post_init__(self) -> None:
        self.prompt_lengths = [len(t) for t in self.tokens]
        self.done = [False] * len(self.tokens)
        self.finish_reasons = [None] * len(self.tokens)

    # -- rows and plugin state ----------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return len(self.tokens)

    def new_tokens(self, row: int) -> list[int]:
        return self.tokens[row][self.prompt_lengths[row]:]

    def scratch(self, plugin: object) -> dict[str, Any]:
        """A dict private to ``plugin`` for the length of this call."""
        return self._scratch.setdefault(id(plugin), {})

    def init_token_states(self, plugins: list[object]) -> None:
        """Set up every :class:`TokenState` plugin's committed state from the prompts."""
        self._token_state_plugins = [p for p in plugins if isinstance(p, TokenState)]
        for p in self._token_state_plugins:
            self._token_states[id(p)] = [p.initial_state(list(t)) for t in self.tokens]

    def state_of(self, plugin: TokenState[Any], row: int) -> Any:
        """``plugin``'s committed state for ``row``."""
        return self._token_states[id(plugin)][row]

    # -- branches: extra rows in the target's own forward pass ---------------------------------

    def attach_branch(self, plugin: object, contexts: list[list[int]]) -> None:
        """Run a second context per row *inside* the target's forward pass (call from ``start``).

        Row ``b``'s twin reads ``contexts[b]`` (at least one token) instead of row ``b``'s prompt,
        then follows row ``b`` exactly: the same generated tokens, the same draft tree at every
        pass, the same accepted nodes, the same beam reordering. Its logits at the target pass's
        positions come from :meth:`branch_logits`. This is classifier-free guidance's
        unconditional branch batched with the target (one forward of ``2B`` rows instead of two
        of ``B``); the rows cost memory and compute like any batch rows, and never appear in
        ``tokens``, the statistics or the results.
        """
        if self._started:
            raise RuntimeError("attach_branch() must be called from the start hook")
        if len(contexts) != self.num_rows:
            raise ValueError(f"a branch needs one context per row: got {len(contexts)} for {self.num_rows} rows")
        if any(len(c) == 0 for c in contexts):
            raise ValueError("every branch context needs at least one token")
        if id(plugin) in self._branches:
            raise ValueError("this plugin already attached a branch in this call")
        self._branches[id(plugin)] = [list(c) for c in contexts]

    def branch_logits(self, plugin: object) -> torch.Tensor:
        """``[B, 1 + N, V]`` float32 logits of ``plugin``'s branch at the current target pass."""
        try:
            return self._branch_logits[id(plugin)]
        except KeyError:
            raise RuntimeError("branch_logits(): this plugin attached no branch in start, "
                               "or no target pass has run yet") from None

    # -- processing: logits -> p' --------------------------------------------------------------

    def process(self, positions: Positions, logits: torch.Tensor) -> torch.Tensor:
        """rescore (chain) → mask (AND) → warp (chain) → log-softmax: ``[B', J, V]`` log p'."""
        logits = self.hooks.chain("rescore", "logits", positions=positions, logits=logits)
        masks = positions.masks(logits)
        allowed = positions.allowed(logits)
        finished = [i for i, row in enumerate(positions.rows) if self.done[row]]
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        self._check_alive(positions, logits, masks, finished)
        logits = self.hooks.chain("warp", "logits", positions=positions, logits=logits)
        return torch.log_softmax(logits.float(), dim=-1)

    def process_draft(self, rows: list[int], paths: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
        """A drafter's processed distribution q': ``logits [len(rows), V]`` → probabilities.

        ``paths[i]`` is the draft so far for row ``rows[i]``; the same plugins apply as to the
        target (``positions.is_draft`` is True), evaluated at the end of that path.
        """
        positions = Positions(self, rows, [[p] for p in paths], is_draft=True)
        return self.process(positions, logits[:, None, :])[:, 0].exp()

    def _check_alive(self, positions: Positions, logits: torch.Tensor,
                     masks: list[tuple[str, torch.Tensor]], finished: list[int]) -> None:
        """Every real position must keep a token with a finite score; else name the culprits."""
        alive = logits.amax(dim=-1) > float("-inf")  # [B', J]; cheaper than isfinite over V
        if bool(alive.all()):
            return
        skip = set(finished)
        for i in range(len(positions)):
            n = positions.length(i)
            if i in skip or bool(alive[i, :n].all()):
                continue
            j = int((~alive[i, :n]).nonzero()[0])
            empty = [name for name, m in masks if not bool(m[i, j].any())]
            if empty:
                why = f"plugin(s) {', '.join(map(repr, empty))} allow no token"
            elif masks and not bool(torch.stack([m[i, j] for _, m in masks]).all(dim=0).any()):
                why = f"the masks of {', '.join(repr(n) for n, _ in masks)} allow no token in common"
            else:
                rescorers = self.hooks.implementers("rescore")
                why = (f"no token has a finite score after the rescore plugin(s) "
                       f"{', '.join(map(repr, rescorers)) or '(none)'} and the masks")
            text = self.tokenizer.decode(positions.generated(i, j)) if self.tokenizer is not None else ""
            raise NoAllowedTokenError(f"row {positions.rows[i]}: {why} after the generated text {text!r}")

    # -- committing ----------------------------------------------------------------------------

    def commit(self, decision: Decision, drafts: list[Draft | None]) -> list[list[int]]:
        """Append each row's accepted tokens and next token; return what each row appended.

        Truncates at EOS, at a stop string and at ``max_new_tokens``; marks rows done; walks every
        TokenState plugin's committed state along the appended tokens (after reordering rows for
        beam search). The target cache is committed separately by the engine.
        """
        if decision.source_rows is not None:
            src = decision.source_rows
            self.tokens = [list(self.tokens[s]) for s in src]
            for key, states in self._token_states.items():
                self._token_states[key] = [states[s] for s in src]
        appended: list[list[int]] = []
        for b, verdict in enumerate(decision.verdicts):
            if self.done[b]:
                appended.append([])
                continue
            draft = drafts[b]
            new = [draft.tokens[i] for i in verdict.accepted] if draft is not None else []
            new.append(verdict.next_token)
            kept = self._truncate(b, new)
            self.tokens[b].extend(kept)
            for p in self._token_state_plugins:
                states = self._token_states[id(p)]
                states[b] = walk(p, states[b], kept)
            appended.append(kept)
        if decision.finished is not None:
            for b, fin in enumerate(decision.finished):
                if fin and not self.done[b]:
                    self.done[b], self.finish_reasons[b] = True, self.finish_reasons[b] or "beam"
        return appended

    def _truncate(self, row: int, new: list[int]) -> list[int]:
        budget = self.limits.max_new_tokens - len(self.new_tokens(row))
        kept: list[int] = []
        for tok in new:
            kept.append(tok)
            if tok in self.limits.eos_token_ids:
                self.done[row], self.finish_reasons[row] = True, "eos"
                return kept
            if self.limits.stop and self._hits_stop(row, kept):
                self.done[row], self.finish_reasons[row] = True, "stop"
                return kept
            if len(kept) >= budget:
                self.done[row], self.finish_reasons[row] = True, "length"
                return kept
        return kept

    def _hits_stop(self, row: int, kept: list[int]) -> bool:
        # Decode a tail long enough to contain any stop string that ends in the newest token.
        tail_tokens = (self.new_tokens(row) + kept)[-(max(map(len, self.limits.stop)) + 8):]
        text = self.tokenizer.decode(tail_tokens, skip_special_tokens=False)
        return any(s in text for s in self.limits.stop)
