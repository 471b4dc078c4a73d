"""The decodekit hook specifications: the whole contract between the host and a plugin.

One decoding step of the engine, for a batch of ``B`` rows (prompts, or beams of prompts)::

    propose ──► target forward over pending tokens + draft ──► logits [B, J, V]
                                                                   │
        rescore (chain, pipeline order) ──► mask (AND) ──► warp (chain) ──► log_softmax = p'
                                                                   │
                            verify(p', drafts) ──► Decision ──► advance (commit)

``J = 1 + N``: position ``0`` is the *root* (the next token after everything committed) and
position ``j >= 1`` is "after draft node ``j - 1``". With no draft, ``J = 1`` and the step is
plain autoregressive decoding. ``V`` is the model's vocabulary size (the width of its logits).

Every per-step hook receives a :class:`~decodekit.positions.Positions`: for each entry ``i`` of
the batch and each position ``j`` it knows the row, the committed tokens and the draft path that
leads there (``positions.prefix(i, j)``), and it computes the per-position state of any
:class:`~decodekit.state.TokenState` plugin by walking the draft from the committed state
(``positions.states(plugin)``). That is how a grammar mask, a momentum graph or a diversity
history is evaluated *along a draft without committing anything*: the host keeps the committed
state and forgets the speculative ones; only ``advance`` commits.

Rules that keep composition exact (see DESIGN.md):

* ``rescore``, ``mask`` and ``warp`` must be pure functions of ``(positions, logits)`` and the
  committed state: the same prefix must give the same output whether it is reached by a draft or
  by plain decoding.
* They are also applied to a drafter's own logits (``positions.is_draft`` is True then), so that
  a draft is sampled from a processed distribution q'. A rescorer that cannot evaluate the
  drafter's positions (it needs a second model forward, say) may return the logits unchanged
  when ``is_draft``: that only lowers the acceptance rate, never exactness.

Hook calling conventions (pluggy, project name ``decodekit``):

=================  ===========  ==========================================================
hook               called on    result
=================  ===========  ==========================================================
register_plugins   all plugins  none; each calls ``register(...)``
register_models    all plugins  none; each calls ``register(alias, loader)``
register_rewards   all plugins  none; each calls ``register(name, factory)``
start              all plugins  none; per-call set-up
propose            first wins   a list of drafts (one per row) or None
rescore            chain        new logits, fed to the next plugin in pipeline order
mask               all          bool masks, AND-ed by the host
warp               chain        new logits (temperature, top-k, ... : the strategy's own)
verify             first wins   a :class:`~decodekit.types.Decision`
advance            all          none; stateful plugins commit
finish             all          the final sequences (strategy first) or None
=================  ===========  ==========================================================

A plugin that raises inside a hook is reported as a :class:`~decodekit.errors.PluginError`
naming the plugin and the hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from decodekit.generation import Generation
    from decodekit.positions import Positions
    from decodekit.types import Decision, Draft, Sequence

PROJECT = "decodekit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_plugins(register: Callable[..., None]) -> None:
    """Register named plugin factories, so that a pipeline can say ``name: <name>``.

    Called once, on every installed plugin module, when the plugin manager is built.

    ``register(name, factory, *, options=None, kind="plugin", description="")``:

    * ``name`` (str): what a pipeline file writes in ``plugins: [{name: ...}]`` or, for
      ``kind="strategy"``, in ``decoding: {strategy: ...}``.
    * ``factory`` (callable): ``factory(options, pipeline) -> plugin object``; ``options`` is an
      instance of ``options`` (validated), ``pipeline`` the :class:`~decodekit.Pipeline` being
      built (model, tokenizer, config). The returned object carries ``@hookimpl`` methods.
    * ``options`` (pydantic model class): the plugin's options; unknown fields must be forbidden
      (``model_config = ConfigDict(extra="forbid")``) so that a typo is an error.
    * ``kind``: ``"plugin"`` (goes in ``plugins:``) or ``"strategy"`` (greedy, sample, beam: the
      decoding block's ``strategy:``; a strategy implements ``verify`` and usually ``warp``).

    Example::

        @hookimpl
        def register_plugins(register):
            register("ban_words", BanWords, options=BanWordsOptions,
                     description="forbid a list of words")
    """


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register model aliases, so that a pipeline can say ``model: <alias>``.

    ``register(alias, loader, *, description="")``: ``loader(cache_dir: Path) -> Path`` returns a
    local HuggingFace model directory (config, weights, tokenizer), building it on first use
    under ``cache_dir`` if needed. It must never download from a model hub; when what it needs
    is missing it raises :class:`~decodekit.errors.ModelNotFoundError` saying how to get it.

    Example (the built-in ``smollm2-135m`` alias converts a GGUF file shipped in a pip package)::

        @hookimpl
        def register_models(register):
            register("smollm2-135m", convert_smollm2, description="SmolLM2-135M-Instruct")
    """


@hookspec
def register_rewards(register: Callable[..., None]) -> None:
    """Register named reward functions for reward-guided decoding (``qstar``'s ``reward: <name>``).

    ``register(name, factory, *, options=None, description="")``: ``factory(options, pipeline)``
    returns a callable ``reward(texts: list[str]) -> list[float]`` (a batch of texts to a batch of
    scores). ``options`` is a pydantic model class with ``extra="forbid"``, as for plugins.

    Example::

        @hookimpl
        def register_rewards(register):
            register("length", lambda options, pipeline: (lambda texts: [len(t) for t in texts]))
    """


@hookspec
def start(generation: Generation) -> None:
    """Set up per-call state before the first step of a ``generate`` call.

    ``generation`` holds the rows (``generation.num_rows``, ``generation.tokens[b]``: the prompt
    token ids of row ``b``), the tokenizer, the model and a per-call scratch space
    (``generation.scratch(self)``, a dict private to this plugin and this call). Anything kept
    between calls on the plugin object itself must be deliberate and documented (a token
    recycling matrix, an ASAp trie), never an accident.

    A plugin that needs the target model's logits over a second context (one per row) attaches
    it here with ``generation.attach_branch(self, contexts)``: the host runs those rows inside its
    own forward pass and keeps them in step with their rows; ``generation.branch_logits(self)``
    returns them at each target pass (classifier-free guidance's unconditional branch).

    Called on every plugin; the result is ignored.
    """


@hookspec(firstresult=True)
def propose(generation: Generation) -> list[Draft | None] | None:
    """Propose draft tokens for each row, to be checked by the target in one forward pass.

    Returns a list of ``generation.num_rows`` entries, each a :class:`~decodekit.types.Draft`
    (``tokens``: n ints; ``parents``: n ints, ``-1`` for a child of the root, otherwise the index
    of an earlier node, so a chain is ``[-1, 0, 1, ...]`` and a tree anything else; ``q``: an
    ``[n, V]`` float tensor of the processed draft probabilities node ``i`` was sampled from, or
    None for a deterministic draft) or None for a row with nothing to propose (finished rows
    always get None). Returning None altogether means "no draft this step".

    First non-None result wins. A proposer that samples from a model must process its logits with
    ``generation.process_draft(rows, paths, logits)`` so that masks and rescorers apply to q'
    along the draft's own path.

    Example: prompt lookup returns ``[Draft(tokens=[5, 9, 2], parents=[-1, 0, 1])]``.
    """


@hookspec
def rescore(positions: Positions, logits: torch.Tensor) -> torch.Tensor | None:
    """Transform the logits at every position: guidance, momentum, reward guidance, penalties.

    * ``positions``: where each logit row sits (see module docstring); ``len(positions)`` = ``B'``
      entries, ``positions.width`` = ``J`` positions each.
    * ``logits``: float tensor ``[B', J, V]``; ``-inf`` marks tokens already ruled out.

    Returns a tensor of the same shape (or None to leave the logits as they are). Called in the
    pipeline's order, each plugin receiving the previous one's output. Entries of ``logits`` at
    positions beyond a row's draft (``j >= positions.length(i)``) are padding: return anything
    finite there. Must not commit state: see ``advance``.
    """


@hookspec
def mask(positions: Positions, logits: torch.Tensor) -> torch.Tensor | None:
    """Say which tokens are allowed at every position: grammars, banned words, span constraints.

    Same arguments as ``rescore``; a mask is a function of the positions only (``logits`` gives
    the shape and device, not values to depend on), so the host evaluates it once per step and
    shares the result with rescorers that need the allowed set (``positions.allowed(logits)``).
    Returns a bool tensor ``[B', J, V]`` (True = allowed), or None for "everything allowed".
    Every plugin is called; the host AND-s the masks and sets disallowed logits to ``-inf``. A
    position where nothing is allowed is an error naming the mask plugins involved
    (:class:`~decodekit.errors.NoAllowedTokenError`), never a NaN.
    """


@hookspec
def warp(positions: Positions, logits: torch.Tensor) -> torch.Tensor | None:
    """The decoding strategy's own transform after masking: temperature, top-k, top-p, min-p.

    Same arguments and chaining as ``rescore``; applied after the masks, so that top-p keeps the
    nucleus of the *allowed* distribution. Greedy and beam search leave logits as they are.
    """


@hookspec(firstresult=True)
def verify(generation: Generation, positions: Positions, drafts: list[Draft | None],
           logprobs: torch.Tensor) -> Decision | None:
    """Choose what each row commits this step, from the processed target distribution p'.

    * ``logprobs``: ``[B, J, V]`` float32 log-probabilities of p' at the root and at every draft
      node (``-inf`` for masked tokens).
    * ``drafts``: what ``propose`` returned (None entries for rows without a draft).

    Returns a :class:`~decodekit.types.Decision`: one :class:`~decodekit.types.Verdict` per row
    (``accepted``: the draft node indices along the accepted path from the root; ``next_token``:
    the bonus or corrected token drawn from p' at the end of that path), and for beam search
    ``source_rows`` (row ``b`` continues the history of row ``source_rows[b]``) and ``finished``.

    First non-None result wins. Greedy: accept while the draft equals argmax p'. Sampling: use
    ``generation.generators[b]`` (one ``torch.Generator`` per row, seeded from the call's
    seed) so that seeded runs repeat and a batch samples as its rows would one by one.
    """


@hookspec
def advance(generation: Generation, decision: Decision) -> None:
    """Commit what verify accepted; drop whatever was computed past it.

    Called on every plugin after the host has committed the tokens (``generation.tokens[b]``
    already ends with the accepted tokens and the next token; ``decision.verdicts[b]`` tells what
    was accepted; ``decision.source_rows``, when not None, the beam reordering to apply to any
    per-row state). :class:`~decodekit.state.TokenState` plugins need not implement it: the host
    commits their state itself. Plugins with a KV cache of their own (guidance) crop it here.
    """


@hookspec
def finish(generation: Generation) -> list[list[Sequence]] | None:
    """End a call: return the final sequences per prompt when the strategy keeps its own (beam
    search), and release per-call resources (a progress bar).

    Returns, for each prompt, a list of :class:`~decodekit.types.Sequence` (token ids of the new
    tokens and a score), best first; or None to let the host return each row's tokens. Called on
    every plugin once generation has stopped; the decoding strategy's answer wins, then the other
    plugins' in reverse pipeline order (the first non-None result in that order is used).
    """


HOOK_NAMES: tuple[str, ...] = (
    "register_plugins",
    "register_models",
    "register_rewards",
    "start",
    "propose",
    "rescore",
    "mask",
    "warp",
    "verify",
    "advance",
    "finish",
)

__all__ = ["PROJECT", "hookspec", "hookimpl", "HOOK_NAMES", *HOOK_NAMES]


def _spec_names() -> list[str]:
    return [n for n in HOOK_NAMES if callable(globals().get(n))]


def hook_signatures() -> dict[str, Any]:
    """Map each hook name to its ``inspect.Signature`` (used by the docs generator and meta-tests)."""
    import inspect

    return {n: inspect.signature(globals()[n]) for n in _spec_names()}
