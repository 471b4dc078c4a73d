"""The ``speculative`` plugin object: ``propose`` drafts, the strategy's ``verify`` checks them.

This plugin implements ``start``, ``propose``, ``rescore`` (read-only: it returns None and only
feeds token recycling's matrix or ADED's table) and ``advance``. It does *not* implement ``verify``: the
pipeline's strategy verifies every draft exactly (``greedy``: accept while the draft equals
argmax p'; ``sample``: recursive rejection sampling over siblings, one-hot q for deterministic
nodes, min(1, p'/q') and the residual norm(max(0, p' - q')) for sampled ones). Those verifiers
work on the processed p' the host computes with every rescore / mask / warp plugin applied,
so the output stays exact whatever else the pipeline contains.

State, and where it lives:

* per call (``generation.scratch(self)``): the step counter, the drafts of the current step and
  the time their pass started, the drafter's KV cache;
* on the plugin object, on purpose (they describe the model, the device and the workload, and
  only change *which* drafts are proposed, never what is accepted): the measured cost of target
  passes, the ledger of what drafting gained or lost (``planning.DraftLedger``), the acceptance
  estimates, token recycling's adjacency matrix, ADED's tri-gram table (``aded.py``), the dynamic
  trees' estimates (``dynamic_tree.py``), the layer-skip set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from decodekit import invariant_attention
from decodekit.builtins.greedy import Greedy
from decodekit.generation import Generation
from decodekit.hookspecs import hookimpl
from decodekit.positions import Positions
from decodekit.types import Decision, Draft

from decodekit_speculative import layerskip, lookup
from decodekit_speculative.aded import AdedTable
from decodekit_speculative.drafter import DrafterState, ModelDrafter
from decodekit_speculative.dynamic_tree import DynamicTree
from decodekit_speculative.heads import DraftHeads, HeadProposer
from decodekit_speculative.hindsight import HindsightTree
from decodekit_speculative.options import SpeculativeOptions
from decodekit_speculative.planning import (CostModel, DraftLedger, RankStats, depth_tree_template, plan_chain,
                                            tree_template)
from decodekit_speculative.recycling import AdjacencyMatrix, PrefillCapture, recycle_prompt
from decodekit_speculative.trees import TreeInfo

# Prior acceptance before anything is observed.
LOOKUP_PRIOR = (0.35, 0.45, 0.55, 0.65, 0.75, 0.8, 0.85)  # per match-length bucket (lookup.BUCKETS);
                                                          # +0.15 for an anchored match
RESUME_PRIOR = 0.5                                          # a copy resumed after an edit (lookup.py)
RECYCLING_PRIOR_TOP = 0.45                                  # rank r: 0.45 * 0.45^r
COLD_PRIOR_TOP = 0.2                                        # a fallback root child of rank r: 0.2 * 0.5^r
MODEL_PRIOR = 0.6
RECYCLING_CANDIDATES = 2   # token recycling's candidate tree: this many times max_draft_tokens nodes


@dataclass
class CallState:
    """What one ``generate`` call keeps between steps (lives in ``generation.scratch``)."""

    step: int = 0
    drafts: list[Draft | None] = field(default_factory=list)
    info: list[Any] = field(default_factory=list)  # per row: what the proposer's statistics need
    proposed: float = 0.0                          # perf_counter when propose began
    started: float = 0.0                           # perf_counter when the target pass began
    width: int = 1                                 # new tokens per row in that pass (1 + nodes)
    active: list[int] = field(default_factory=list)  # the rows decoding in that pass
    drafter: DrafterState | None = None
    offsets: dict[int, int | None] = field(default_factory=dict)  # prompt lookup: each row's copy offset
    counted: list[int] = field(default_factory=list)  # token recycling: tokens of each row counted so far
    prefill: PrefillCapture | None = None             # token recycling: the prefill's hidden states
    sighted: list[Sighted] = field(default_factory=list)  # token recycling: candidate trees to count

    @property
    def rows(self) -> int:
        """How many rows decoded in the last pass (the cost table is kept per row count)."""
        return len(self.active)


class Sighted(NamedTuple):
    """A token-recycling candidate tree instantiated for row ``row`` when it held ``start`` tokens,
    waiting for the tokens committed after it (hindsight.py)."""

    row: int
    start: int
    tree: HindsightTree
    tokens: list[int]


class Speculative:
    """Speculative decoding. See the package docstring and docs/plugins/speculative.md.

    ``draft_model``: a loaded causal LM to draft with (instead of ``options.draft``), for
    library use and tests: ``Speculative(SpeculativeOptions(proposer="draft_model"), pipe,
    draft_model=model)``.
    """

    name = "speculative"

    def __init__(self, options: SpeculativeOptions | None = None, pipeline: Any = None, *,
                 draft_model: torch.nn.Module | None = None, draft_heads: DraftHeads | None = None):
        if pipeline is None:
            raise ValueError("speculative needs the pipeline (its model and tokenizer)")
        o = self.options = options or SpeculativeOptions()
        self.target = pipeline.model
        self.vocab_size = int(self.target.get_output_embeddings().weight.shape[0])
        self.pad_token_id = pipeline.pad_token_id
        self.prefill_alone = invariant_attention.prefill_is_one_call(self.target)
        self.costs = CostModel(o.verify_costs)
        self.ledger = DraftLedger()  # measured costs only: what drafting gained or lost so far
        self.matrix: AdjacencyMatrix | None = None
        self.drafter: ModelDrafter | None = None
        self.skip: list[int] | None = None
        self.aded = AdedTable(min(o.top_k, self.vocab_size), o.explore) if o.proposer == "aded" else None
        self.dytree = DynamicTree() if o.tree == "dynamic" else None  # draft_model / layer_skip
        self.heads: HeadProposer | None = None  # proposer heads: trained draft heads (heads.py)
        # keyed by (match-length bucket, anchored), and lookup.RESUME_KEY
        self.lookup_stats: dict[tuple[int, bool] | str, RankStats] = {
            (k, anc): RankStats([min(0.9, p + 0.15 * anc)]) for k, p in enumerate(LOOKUP_PRIOR) for anc in (False, True)}
        self.lookup_stats[lookup.RESUME_KEY] = RankStats([RESUME_PRIOR])
        self.word_starts = None  # prompt_lookup: which tokens begin a word (to resume a copy)
        if o.proposer == "prompt_lookup" and pipeline.tokenizer is not None:
            self.word_starts = lookup.word_starts(pipeline.tokenizer, self.vocab_size)
        self.model_stats = RankStats([MODEL_PRIOR])
        if draft_model is not None and o.proposer != "draft_model":
            raise ValueError(f"a draft_model object is only used by proposer draft_model, not {o.proposer}")
        if draft_heads is not None and o.proposer != "heads":
            raise ValueError(f"a draft_heads object is only used by proposer heads, not {o.proposer}")
        if o.proposer == "heads":
            self.heads = HeadProposer(o, pipeline, self.costs, draft_heads)
        self.warm_tree: HindsightTree | None = None  # token recycling's candidate trees: after a token with
        self.cold_tree: HindsightTree | None = None  # a row in the matrix, and from the fallback root
        if o.proposer == "token_recycling":
            self.matrix = AdjacencyMatrix(self.vocab_size, o.top_k)
            candidates = RECYCLING_CANDIDATES * o.max_draft_tokens
            warm = [RECYCLING_PRIOR_TOP ** (r + 1) for r in range(self.matrix.k)]
            cold = [COLD_PRIOR_TOP * 0.5 ** r for r in range(self.matrix.k)]
            self.warm_tree = HindsightTree(tree_template(warm, candidates))
            self.cold_tree = HindsightTree([(parent, rank, reach) for parent, _, rank, reach in
                                            depth_tree_template([cold] + [warm] * (candidates - 1), candidates)])
        elif o.proposer == "draft_model":
            self.drafter = ModelDrafter(self._draft_model(draft_model, pipeline), self.vocab_size, self.pad_token_id)
        elif o.proposer == "layer_skip":
            _, layers = layerskip.decoder_layers(self.target)
            if o.skip_layers is not None:
                self._use_skip(o.skip_layers)
            elif not o.search:
                self._use_skip(layerskip.default_skip(len(layers), o.skip_ratio))

    def _draft_model(self, given: torch.nn.Module | None, pipeline: Any) -> torch.nn.Module:
        if given is not None:
            return given
        if self.options.draft is None:
            raise ValueError("proposer draft_model needs the option draft: a model alias or local directory")
        from decodekit.errors import ModelNotFoundError
        from decodekit.models import load

        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
            self.target.dtype, "auto")
        try:
            model, tok = load(self.options.draft, str(pipeline.device), dtype)
        except ModelNotFoundError as e:
            raise ValueError(f"draft: {e}") from None
        if tok is not None and pipeline.tokenizer is not None and len(tok) != len(pipeline.tokenizer):
            raise ValueError(f"draft {self.options.draft!r}: its tokenizer has {len(tok)} tokens, the target's "
                             f"{len(pipeline.tokenizer)}; a draft model must share the target's tokenizer")
        return model

    def _use_skip(self, skip: list[int]) -> None:
        self.skip = sorted(skip)
        view = layerskip.skipped_view(self.target, self.skip)
        self.drafter = ModelDrafter(view, self.vocab_size, self.pad_token_id)

    # -- hooks ---------------------------------------------------------------------------------

    @hookimpl
    def start(self, generation: Generation) -> None:
        st = CallState(counted=list(generation.prompt_lengths))
        generation.scratch(self)["state"] = st
        if self.matrix is not None and self.options.recycle_prompt > 0 and generation.rows_per_prompt == 1:
            st.prefill = PrefillCapture(self.target)
        if self.aded is not None and not self.options.persist_table:
            self.aded.reset()
        if self.options.proposer == "layer_skip" and self.drafter is None:  # search: true, first call
            self._use_skip(layerskip.search_skip_set(self.target, generation.tokens[0], self.options.skip_ratio))
        if self.drafter is not None:
            st.drafter = self.drafter.start(generation)
        if self.heads is not None:
            self.heads.start(generation)

    @hookimpl
    def propose(self, generation: Generation) -> list[Draft | None] | None:
        gen = generation
        st: CallState = gen.scratch(self)["state"]
        st.proposed = time.perf_counter()
        B = gen.num_rows
        st.drafts, st.info = [None] * B, [None] * B
        if gen.rows_per_prompt > 1:  # beam search: its rows are reordered; this plugin stays out
            return None
        st.active = active = [b for b in range(B) if not gen.done[b]]
        cost = self._cost_fn(st, len(active))
        # rows that draft: none on the prefill of a model whose prefill is one call over the prompt
        # (bfloat16 on a CPU, decodekit/invariant_attention.py): a draft riding on it would change
        # how the prompt is computed, and with it the tokens
        drafting = [] if st.step == 0 and self.prefill_alone else active
        proposer = self.options.proposer
        if proposer == "prompt_lookup":
            self._propose_lookup(gen, st, drafting, cost)
        elif proposer == "token_recycling":
            self._propose_recycling(gen, st, drafting, cost)
        elif proposer == "aded":
            st.drafts, st.info = self.aded.propose(gen, drafting, cost, self.options.max_draft_tokens,
                                                   self.options.adaptive)
        elif proposer == "heads":
            st.drafts, st.info = self.heads.propose(gen, drafting, cost)
        else:
            self._propose_model(gen, st, drafting, cost)
        st.width = 1 + max((len(d) for d in st.drafts if d is not None), default=0)
        st.started = time.perf_counter()
        return st.drafts

    @hookimpl
    def rescore(self, positions: Positions, logits: torch.Tensor) -> None:
        """Token recycling reads the target's scores here; the logits are left as they are."""
        if self.aded is not None and not positions.is_draft:
            self.aded.rescore(positions, logits)
        if self.matrix is None or positions.is_draft:
            return None
        gen = positions.generation
        prev, scored = [], []
        for i, row in enumerate(positions.rows):
            if gen.done[row]:
                continue
            n = positions.length(i)
            prev += [path[-1] if path else gen.tokens[row][-1] for path in positions.paths[i]]  # token before j
            scored.append(logits[i, :n])                                                     # [n, V], a view
        if prev:
            self.matrix.update(torch.tensor(prev), scored[0] if len(scored) == 1 else torch.cat(scored))
        return None

    @hookimpl
    def advance(self, generation: Generation, decision: Decision) -> None:
        st: CallState = generation.scratch(self)["state"]
        if st.step > 0:  # the first pass is the prefill: not a verify cost
            now = time.perf_counter()
            self.costs.record(st.rows, st.width, now - st.started)
            self._settle_ledger(st, decision, now - st.proposed)
        for b, (d, v) in enumerate(zip(st.drafts, decision.verdicts)):
            if d is not None:
                self._observe(d, st.info[b], v.accepted)
        if st.sighted:
            st.sighted = [s for s in st.sighted if not self._count_sighted(generation, s)]
        if st.prefill is not None:  # the first pass was the prefill: recycle its scores of the prompts
            hidden = st.prefill.take()
            st.prefill = None
            if hidden is not None and self._recycling_pays(st.rows):
                prompts = [t[:n] for t, n in zip(generation.tokens, generation.prompt_lengths)]
                began = time.perf_counter()
                recycle_prompt(self.matrix, self.target.get_output_embeddings(), hidden, prompts,
                               self.options.recycle_prompt)
                plain_pass = self._ledger_pass(st.rows)
                if plain_pass is not None:
                    self.ledger.spend(time.perf_counter() - began, plain_pass)
        if self.matrix is not None:
            for b, tokens in enumerate(generation.tokens):
                self.matrix.count(tokens[st.counted[b]:])
                st.counted[b] = len(tokens)
        for s in [*self.lookup_stats.values(), self.model_stats]:
            s.step()
        for tree_stats in (self.aded, self.dytree):
            if tree_stats is not None:
                tree_stats.step()
        if st.drafter is not None and self.drafter is not None:
            self.drafter.commit(generation, st.drafter, st.drafts, decision)
        if self.heads is not None:
            self.heads.advance(generation, decision)
        st.step += 1

    @hookimpl
    def finish(self, generation: Generation) -> None:
        """Remove the hidden-state hooks from the target (if still there)."""
        if self.heads is not None:
            self.heads.finish(generation)
        st: CallState | None = generation.scratch(self).get("state")
        if st is not None and st.prefill is not None:
            st.prefill.close()
        if st is not None:  # the rows stopped: what is committed is all the continuation there is
            for s in st.sighted:
                self._count_sighted(generation, s, final=True)
            st.sighted = []
        return None

    # -- the ledger ----------------------------------------------------------------------------

    def _ledger_applies(self) -> bool:
        """The ledger weighs measured seconds: it is off with fixed ``verify_costs``, and off when
        ``adaptive: false`` asks for every draft the proposer finds."""
        return self.costs.measured and self.options.adaptive

    def _margin(self) -> float:
        return self.ledger.margin() if self._ledger_applies() else 1.0

    def _ledger_pass(self, rows: int) -> float | None:
        """Seconds of a plain pass over ``rows`` rows, the ledger's unit; None while the ledger does
        not apply or the plain pass is not timed yet."""
        if not self._ledger_applies() or not self.costs.trusted(rows, 1):
            return None
        return self.costs.cost(rows, 1)

    def _settle_ledger(self, st: CallState, decision: Decision, seconds: float) -> None:
        """Book the step just verified: ``seconds`` from propose to now, against the plain passes
        that would have committed the same tokens."""
        plain_pass = self._ledger_pass(st.rows)
        if plain_pass is None or not st.active:
            return
        committed = [len(decision.verdicts[b].accepted) + 1 for b in st.active]
        self.ledger.record(seconds, sum(committed) / len(committed), plain_pass, drafted=st.width > 1)

    # -- proposers -----------------------------------------------------------------------------

    def _cost_fn(self, st: CallState | None, rows: int):
        """``cost(n, products=1)``: a target pass with ``n`` draft nodes per row plus the drafting,
        times the ledger's margin for ``n > 0`` while drafting is in debt. Drafting costs one drafter
        forward per node for a draft model, ``products`` LM-head products of the heads for ``heads``
        (one for Medusa, one per tree level for Hydra), nothing else."""
        drafting = self.costs.draft_cost(rows)
        per_node = drafting if self.drafter is not None else 0.0
        per_product = drafting if self.heads is not None else 0.0
        base, margin = self.costs.cost(rows, 1), self._margin()
        first = st is not None and st.step == 0  # the prefill pass: a few more tokens cost next to nothing

        def cost(n: int, products: int = 1) -> float:
            if n == 0:
                return base
            target = base if first else self.costs.cost(rows, 1 + n)
            return (target + n * per_node + products * per_product) * margin
        return cost

    def _propose_lookup(self, gen: Generation, st: CallState, active: list[int], cost) -> None:
        o = self.options
        for b in active:
            found = lookup.lookup_draft(gen.tokens[b], o.ngram_min, o.ngram_max, o.max_draft_tokens,
                                        st.offsets.get(b), self.word_starts)
            st.offsets[b] = found.offset
            if not found.tokens:
                continue
            rate = self.lookup_stats[found.key].rate()[0]
            n = plan_chain(rate, len(found.tokens), cost) if o.adaptive else len(found.tokens)
            if n > 0:
                st.drafts[b], st.info[b] = Draft.chain(found.tokens[:n]), found.key

    def _recycling_pays(self, rows: int) -> bool:
        """Whether the planner would draft a token-recycling tree now (then the prompt's scores are
        worth an LM-head product, which the ledger books as a cost of drafting); a device whose
        plain pass is not timed yet counts as yes."""
        if self.costs.measured and not self.costs.trusted(rows, 1):
            return True
        return bool(self._recycling_plan(self.warm_tree, self._cost_fn(None, rows)))

    def _recycling_plan(self, tree: HindsightTree, cost) -> list[int]:
        """The candidate nodes to draft (hindsight.py): all ``max_draft_tokens`` with
        ``adaptive: false``."""
        return tree.plan(self.options.max_draft_tokens, cost if self.options.adaptive else None)

    def _propose_recycling(self, gen: Generation, st: CallState, drafting: list[int], cost) -> None:
        """Instantiate the candidate tree for every decoding row (counted in hindsight once the
        text after it is committed, drafted or not) and draft the planned part of it."""
        plans: dict[int, list[int]] = {}  # by id of the tree, planned when first needed
        for b in st.active:
            last = gen.tokens[b][-1]
            warm = self.matrix.has_row(last)
            root = None if warm else self.matrix.fallback()
            if not warm and root is None:
                continue  # nothing to draft from yet
            tree = self.warm_tree if warm else self.cold_tree
            tokens = self.matrix.instantiate(last, tree.template, root)
            st.sighted.append(Sighted(b, len(gen.tokens[b]), tree, tokens))
            if b in drafting:
                if id(tree) not in plans:
                    plans[id(tree)] = self._recycling_plan(tree, cost)
                st.drafts[b] = tree.draft(tokens, plans[id(tree)])

    @staticmethod
    def _count_sighted(gen: Generation, s: Sighted, final: bool = False) -> bool:
        """Count ``s`` if the tokens committed since tell which of its nodes verification would
        have accepted; whether it was counted."""
        path = s.tree.matched(s.tokens, gen.tokens[s.row][s.start:], final or gen.done[s.row])
        if path is None:
            return False
        s.tree.observe(path)
        return True

    def _propose_model(self, gen: Generation, st: CallState, active: list[int], cost) -> None:
        o = self.options
        if self.dytree is not None:  # tree: dynamic (dynamic_tree.py)
            sample = not any(isinstance(p, Greedy) for p in gen.hooks.pm.get_plugins())
            st.drafts, st.info = self.dytree.propose(gen, self.drafter, st.drafter, active, self.costs,
                                                     st.step == 0, o.max_draft_tokens, o.adaptive, sample,
                                                     self._margin())
            return
        n = plan_chain(self.model_stats.rate()[0], o.max_draft_tokens, cost) if o.adaptive else o.max_draft_tokens
        if n == 0 or not active:
            return
        lengths = [n if b in set(active) else 0 for b in range(gen.num_rows)]
        sample = not any(isinstance(p, Greedy) for p in gen.hooks.pm.get_plugins())
        drafts, steps, seconds = self.drafter.draft(gen, st.drafter, lengths, o.draft_threshold, sample)
        if steps > 1:  # the first forward also catches up on committed tokens
            self.costs.record_draft(seconds / steps)
        st.drafts = drafts
        st.info = [0] * gen.num_rows

    # -- statistics ----------------------------------------------------------------------------

    def _observe(self, draft: Draft, info: Any, accepted: list[int]) -> None:
        """Count, at the root and each accepted node, which candidate (if any) was accepted."""
        if isinstance(info, TreeInfo):  # aded, tree: dynamic: their own statistics
            info.observe(draft, accepted)
            return
        proposer = self.options.proposer
        if proposer == "heads":
            self.heads.observe(draft, info, accepted)
            return
        if proposer == "token_recycling":  # counted in hindsight instead (advance)
            return
        stats = self.lookup_stats[info] if proposer == "prompt_lookup" else self.model_stats
        k = len(accepted)
        for i in range(min(k + 1, len(draft))):  # k hits, then one miss unless all were accepted
            stats.observe(0, i < k)
