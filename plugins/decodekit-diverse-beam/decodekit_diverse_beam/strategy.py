"""The ``diverse_beam`` strategy: group beam search with a diversity penalty between groups.

Each prompt owns ``B = num_beams`` rows, split into ``G`` groups of ``g = B / G`` beams (group
``j`` is rows ``p*B + j*g .. p*B + j*g + g - 1``). One step, groups in order ``j = 0 .. G-1``:

1. ``s(beam, x) = running[beam] + log p'(x | beam) - D_j(x)``, where ``D_j`` is the diversity term
   of the tokens that groups ``0 .. j-1`` chose *at this step* (Hamming: ``λ · count``). The
   penalty is applied after log-softmax and accumulates into the running scores.
2. The top ``K = max(2, 1 + n_eos) · g`` candidates of the group, best first: an EOS candidate in
   the top ``g`` becomes a finished hypothesis of the group (an EOS ranked lower is dropped); the
   first ``g`` non-EOS candidates are the group's running beams for the next step.
3. The group is *done* once its n-best list is full and (per ``early_stopping``) no running beam
   can enter it; a done group's beams stop (they count as choosing the pad token for the
   diversity term of later groups, as in HF).

Initial running scores: 0 for the first beam of each group, -1e9 for the others. When
``max_new_tokens`` is reached, the running beams of groups that are not done join their group's
list. The result pools every group's list and sorts it by score (ties: the later group first).

This is HF transformers v4's ``_group_beam_search`` + ``BeamSearchScorer`` +
``HammingDiversityLogitsProcessor`` step for step; the deliberate differences are in
docs/plugins/diverse_beam.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit import hookimpl
from decodekit.builtins.beam import (
    DEAD,
    candidate_count,
    check_plain_step,
    top_candidates,
)
from decodekit.types import Decision, Draft, Sequence, Verdict
from decodekit_diverse_beam.diversity import DIVERSITY_TERMS
from decodekit_diverse_beam.hypotheses import Hypotheses
from decodekit_diverse_beam.options import DiverseBeamOptions


@dataclass
class _State:
    """Per-call state for ``P`` prompts (kept in ``generation.scratch``)."""

    running: torch.Tensor  # [P, B] float32 accumulated scores of the running beams
    hyps: list[list[Hypotheses]]  # [P][G] each group's n-best finished hypotheses
    done: list[list[bool]]  # [P][G] the group has stopped
    step: int = 0  # tokens generated so far by the running beams


def pad_token_id(pipeline: object) -> int:
    """The token a done group's beams "choose" (HF: ``pad_token_id``, else the first EOS id)."""
    gc = getattr(getattr(pipeline, "model", None), "generation_config", None)
    pad = getattr(gc, "pad_token_id", None)
    if pad is None:
        eos = getattr(gc, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if pad is None:
        pad = getattr(pipeline, "pad_token_id", 0) if pipeline is not None else 0
    return int(pad)


class DiverseBeam:
    """Diverse beam search (see the module docstring)."""

    accepts_drafts = False  # beams are re-chosen every step; a proposer cannot help

    def __init__(self, options: DiverseBeamOptions | None = None, pipeline: object = None):
        self.options = options or DiverseBeamOptions()
        self.rows_per_prompt = self.options.num_beams
        self.group_size = self.options.num_beams // self.options.num_groups
        self.pad_token_id = pad_token_id(pipeline)
        self.diversity = DIVERSITY_TERMS[self.options.diversity]

    @hookimpl
    def start(self, generation) -> None:
        check_plain_step(generation, None, "diverse_beam")
        o, B, g = self.options, self.options.num_beams, self.group_size
        P = generation.num_rows // B
        running = torch.full((P, B), DEAD)
        running[:, ::g] = 0.0  # the first beam of each group is live
        generation.scratch(self)["state"] = _State(
            running=running,
            hyps=[[Hypotheses(g, o.length_penalty, o.early_stopping, generation.limits.max_new_tokens)
                   for _ in range(o.num_groups)] for _ in range(P)],
            done=[[False] * o.num_groups for _ in range(P)],
        )

    @hookimpl
    def verify(self, generation, drafts: list[Draft | None], logprobs: torch.Tensor) -> Decision:
        check_plain_step(generation, drafts, "diverse_beam")
        st: _State = generation.scratch(self)["state"]
        o, B, g = self.options, self.options.num_beams, self.group_size
        R, V = logprobs.shape[0], logprobs.shape[-1]
        P = R // B
        lp = logprobs[:, 0, :].float().cpu().view(P, B, V)  # [P, B, V] log p' per beam
        eos = set(generation.limits.eos_token_ids)
        keep = candidate_count(g, len(eos))
        n = st.step + 1  # length of every candidate
        decision = Decision([Verdict([], 0) for _ in range(R)], list(range(R)), [False] * R)
        chosen = torch.zeros(P, B, dtype=torch.long)  # tokens chosen this step, per beam

        for j in range(o.num_groups):
            cols = slice(j * g, (j + 1) * g)
            scores = lp[:, cols, :]  # [P, g, V]
            if j > 0 and o.diversity_penalty > 0:
                penalty = self.diversity(chosen[:, :j * g], V, o.diversity_penalty)  # [P, V]
                scores = scores - penalty[:, None, :]
            cand = top_candidates(scores, st.running[:, cols], keep)  # [P, K] best first
            for p in range(P):
                if st.done[p][j]:
                    chosen[p, cols] = self.pad_token_id
                    continue
                self._group_step(generation, st, decision, logprobs, cand, p, j, n, eos, chosen)

        st.step = n
        for p in range(P):
            prompt_done = all(st.done[p]) or n >= generation.limits.max_new_tokens
            for j in range(o.num_groups):
                for i in range(g):
                    decision.finished[p * B + j * g + i] = prompt_done or st.done[p][j]
        return decision

    def _group_step(self, generation, st: _State, decision: Decision, logprobs: torch.Tensor, cand,
                    p: int, j: int, n: int, eos: set[int], chosen: torch.Tensor) -> None:
        """Group ``j`` of prompt ``p``: finish EOS candidates, pick the next running beams."""
        B, g = self.options.num_beams, self.group_size
        first = p * B + j * g  # the group's first row
        hyps = st.hyps[p][j]
        picked: list[int] = []  # candidate ranks that continue
        for rank in range(cand.tokens.shape[1]):
            tok, parent = int(cand.tokens[p, rank]), first + int(cand.beams[p, rank])
            if tok in eos:
                if rank < g:  # only EOS candidates among the top g finish
                    hyps.add(generation.new_tokens(parent) + [tok], float(cand.scores[p, rank]), n)
            else:
                picked.append(rank)
                if len(picked) == g:
                    break
        if len(picked) < g:
            raise RuntimeError(f"diverse_beam: group {j} of prompt {p} has fewer than {g} non-EOS candidates")
        ranks = torch.tensor(picked)
        st.running[p, j * g:(j + 1) * g] = cand.scores[p, ranks]
        for i, rank in enumerate(picked):
            tok, parent = int(cand.tokens[p, rank]), first + int(cand.beams[p, rank])
            decision.source_rows[first + i] = parent
            decision.verdicts[first + i] = Verdict([], tok, float(logprobs[parent, 0, tok]))
            chosen[p, j * g + i] = tok
        best = float(cand.scores[p].max())
        st.done[p][j] = st.done[p][j] or hyps.is_done(best, n)

    @hookimpl
    def finish(self, generation) -> list[list[Sequence]]:
        st: _State = generation.scratch(self)["state"]
        B, g = self.options.num_beams, self.group_size
        out = []
        for p, groups in enumerate(st.hyps):
            for j, hyps in enumerate(groups):
                if st.done[p][j]:
                    continue
                for i in range(g):  # running beams of an open group join its list at the end
                    toks = generation.new_tokens(p * B + j * g + i)
                    hyps.add(list(toks), float(st.running[p, j * g + i]), len(toks))
            pooled = sorted((b for hyps in groups for b in hyps.beams), key=lambda b: b[0])
            best = [pooled.pop() for _ in range(self.options.num_return_sequences)]
            out.append([Sequence(list(toks), score) for score, toks in best])
        return out
