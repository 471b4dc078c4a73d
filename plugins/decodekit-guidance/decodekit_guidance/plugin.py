"""The ``guidance`` plugin object: a ``rescore`` backed by a second model pass.

Per call (``generation.scratch(self)``):

* ``cfg``: the unconditional rows, row ``b`` starting from the negative prompt of its prompt (or
  the last prompt token). By default they are attached to the target's own forward pass
  (``generation.attach_branch``: one pass over ``2B`` rows, the host keeps them in step);
  with ``batch_branch: false`` they are a :class:`~decodekit_guidance.branch.Branch`, a second
  pass with its own cache;
* ``contrastive`` with ``amateur`` or ``amateur_skip_layers``: a Branch over the amateur starting
  from the full prompt; with ``amateur_context`` no state at all (a
  :class:`~decodekit_guidance.branch.WindowBranch`).

A target pass of ``[B, 1 + N, V]`` logits (root + draft nodes) triggers one branch forward over
the same drafts; ``advance`` commits the accepted nodes. A drafter's own positions
(``positions.is_draft``) are left unchanged by the cached branches (allowed by the hook contract:
it lowers acceptance, never exactness); the windowed amateur scores them too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from decodekit import hookimpl
from decodekit.errors import ConfigError
from decodekit_guidance.branch import Branch, WindowBranch
from decodekit_guidance.layers import check_skip, skipping
from decodekit_guidance.masks import allowed_tokens, check_head_survives
from decodekit_guidance.options import GuidanceOptions
from decodekit_guidance.scores import cfg_scores, contrastive_scores, plausible

if TYPE_CHECKING:  # pragma: no cover
    from decodekit.generation import Generation
    from decodekit.positions import Positions
    from decodekit.types import Decision


STRATEGY_PREFIX = "strategy:"  # how the host names the strategy among a call's plugins


def _vocab_width(model: torch.nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _is_one_prompt(x: Any) -> bool:
    """A single prompt: text, chat messages (list of dicts) or token ids (list of ints)."""
    if isinstance(x, str):
        return True
    return isinstance(x, list) and bool(x) and (all(isinstance(t, int) for t in x)
                                                 or all(isinstance(t, dict) for t in x))


class Guidance:
    """Classifier-free guidance (``mode: cfg``) or contrastive decoding (``mode: contrastive``)."""

    def __init__(self, options: GuidanceOptions | None, pipeline: Any):
        self.options = o = options or GuidanceOptions()
        self.model = pipeline.model
        self.pad_token_id = int(pipeline.pad_token_id)
        self.negatives: list[list[int] | None] | None = None  # per prompt; None: one for all
        self.negative: list[int] | None = None
        self.amateur: torch.nn.Module | None = None
        self.skip: list[int] | None = None
        self.window: WindowBranch | None = None
        self._check_strategy(pipeline.config.decoding.strategy)
        if o.mode == "cfg":
            self._encode_negative(o, pipeline)
        elif o.amateur_context is not None:
            self.window = WindowBranch(self.model, o.amateur_context, self.pad_token_id)
        elif o.amateur_skip_layers is not None:
            self.skip = check_skip(self.model, o.amateur_skip_layers)
            self.amateur = self.model
        else:
            self.amateur = self._load_amateur(o.amateur, pipeline)

    # -- construction --------------------------------------------------------------------------

    def _encode_negative(self, o: GuidanceOptions, pipeline: Any) -> None:
        neg = o.negative_prompt
        if neg is None:
            return
        if _is_one_prompt(neg):
            self.negative = pipeline.encode(neg, raw=o.negative_raw)
            return
        if not isinstance(neg, list) or not neg:
            raise ValueError("negative_prompt must be text, chat messages, token ids, or a non-empty list "
                             "of these (one per prompt; null for the default)")
        bad = [k for k, n in enumerate(neg) if n is not None and not _is_one_prompt(n)]
        if bad:
            raise ValueError(f"negative_prompt[{bad[0]}] is not text, chat messages or token ids")
        self.negatives = [None if n is None else pipeline.encode(n, raw=o.negative_raw) for n in neg]

    def _load_amateur(self, spec: Any, pipeline: Any) -> torch.nn.Module:
        if isinstance(spec, torch.nn.Module):
            model = spec
        elif isinstance(spec, str):
            from decodekit.models import load

            model, tok = load(spec, pipeline.config.device, pipeline.config.dtype)
            if tok.get_vocab() != pipeline.tokenizer.get_vocab():
                raise ValueError(f"amateur {spec!r} does not share the expert's tokenizer")
        else:
            raise ValueError(f"amateur must be a model alias, a local model directory or a model object, "
                             f"got {type(spec).__name__}")
        if _vocab_width(model) != _vocab_width(self.model):
            raise ValueError(f"amateur's vocabulary has {_vocab_width(model)} entries, the expert's "
                             f"{_vocab_width(self.model)}: they must share the tokenizer")
        return model.to(pipeline.device).eval()

    def _check_strategy(self, strategy: str) -> None:
        """Refuse ``superposed`` when guidance needs its cached second pass.

        That strategy runs its own loop and evaluates every draft with ``positions.is_draft``
        set; a cached branch follows only the host's target passes and leaves such positions
        unchanged, so guidance would be silently ignored. The windowed amateur
        (``amateur_context``) is stateless and scores any position: it is allowed.
        """
        if strategy == "superposed" and self.active and self.options.amateur_context is None:
            raise ConfigError(
                "plugin 'guidance' (mode: cfg, or contrastive with amateur / amateur_skip_layers) does not "
                "work with strategy 'superposed': that strategy scores its drafts in its own loop, which "
                "guidance's cached second pass does not follow, so guidance would be ignored; use mode: "
                "contrastive with amateur_context, or another strategy")

    @property
    def active(self) -> bool:
        """False for ``cfg`` with γ = 1, which leaves every distribution unchanged."""
        return not (self.options.mode == "cfg" and self.options.guidance_scale == 1.0)

    # -- hooks ---------------------------------------------------------------------------------

    def _start_ids(self, generation: Generation) -> list[list[int]]:
        """Row ``b``'s branch context before any generated token."""
        if self.options.mode == "contrastive":
            return [list(t) for t in generation.tokens]
        k = generation.rows_per_prompt
        n_prompts = generation.num_rows // k
        if self.negatives is not None and len(self.negatives) != n_prompts:
            raise ConfigError(f"negative_prompt has {len(self.negatives)} entries for {n_prompts} prompts")
        out = []
        for b, toks in enumerate(generation.tokens):
            neg = self.negatives[b // k] if self.negatives is not None else self.negative
            out.append(list(neg) if neg is not None else [toks[-1]])  # HF: only the last prompt token
        return out

    @hookimpl
    def start(self, generation: Generation) -> None:
        for name in generation.hooks.implementers("verify"):  # a call may override the strategy
            if name.startswith(STRATEGY_PREFIX):
                self._check_strategy(name[len(STRATEGY_PREFIX):])
        if not self.active or self.window is not None:
            return
        if self.options.mode == "cfg" and self.options.batch_branch:
            generation.attach_branch(self, self._start_ids(generation))
            generation.scratch(self)["attached"] = True
            return
        context = (lambda: skipping(self.amateur, self.skip)) if self.skip else None
        branch = Branch(self.amateur or self.model, self._start_ids(generation), generation,
                        self.pad_token_id, context)
        generation.scratch(self)["branch"] = branch

    @hookimpl
    def rescore(self, positions: Positions, logits: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        o = self.options
        if self.window is not None:  # stateless: any position, a drafter's included
            amateur = self.window.logits(positions, logits.shape[-1]).to(logits.device)
            return self._contrast(positions, logits, amateur)
        if positions.is_draft:
            return None
        gen = positions.generation
        scratch = gen.scratch(self)
        if scratch.get("attached"):
            if positions.rows != list(range(gen.num_rows)):
                raise ValueError("the guidance branch evaluates target passes over all rows only; "
                                 f"got positions for rows {positions.rows}")
            other = gen.branch_logits(self)  # [B, 1 + N, V], from the target's own pass
        else:
            branch: Branch | None = scratch.get("branch")
            if branch is None:
                raise RuntimeError("guidance: rescore before start (the branch is set up in the start hook)")
            other = branch.logits(positions).to(logits.device)  # [B, 1 + N, V]
        if other.shape != logits.shape:
            raise ValueError(f"branch logits {tuple(other.shape)} do not match the target's {tuple(logits.shape)}")
        if o.mode == "cfg":
            return cfg_scores(logits, other, o.guidance_scale)
        return self._contrast(positions, logits, other)

    def _contrast(self, positions: Positions, logits: torch.Tensor, amateur: torch.Tensor) -> torch.Tensor:
        """The CD score ``[B', J, V]``, its head taken among the mask-allowed tokens (``head: allowed``).

        Restricting the expert to the allowed tokens shifts ``log p_exp`` by a constant per
        position (no change to p') and makes ``max p_exp`` the best *allowed* token's, so a mask
        can never rule out the whole head.
        """
        o = self.options
        allowed = allowed_tokens(positions, logits)
        if allowed is not None and o.head == "allowed":
            logits = logits.masked_fill(~allowed, float("-inf"))
        elif allowed is not None:
            check_head_survives(positions, plausible(logits, o.alpha) & allowed)
        return contrastive_scores(logits, amateur, o.alpha, o.beta, o.amateur_temperature)

    @hookimpl
    def advance(self, generation: Generation, decision: Decision) -> None:
        branch: Branch | None = generation.scratch(self).get("branch")
        if branch is not None:
            branch.advance(generation, decision)
