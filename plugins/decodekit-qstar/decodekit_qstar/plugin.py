"""The ``qstar`` rescorer: reward-guided decoding by Transfer Q* or ARGS.

At a scored position (the generated length is a multiple of ``every``) with incoming logits ℓ
(``[V]``; log π_ref up to a constant), the candidates are the top-k tokens among those every mask
plugin allows, and the output is

    transfer_q:  ℓ(z) + α · Q̂(s, z)      for z in top-k, −inf elsewhere   (Chakraborty et al.)
    args:        ℓ(z) + w · r([s, z])    for z in top-k, −inf elsewhere   (Khanov et al.)

so that softmax gives π(z | s) ∝ π_ref(z | s) · exp(α · Q̂(s, z)) on the top-k; the decoding
strategy (greedy or sample) then picks from it. Between scored positions the logits pass unchanged.
α = 0 (or w = 0) leaves exactly the top-k of ℓ: plain greedy decoding, or plain sampling with
``top_k: k``, token for token.

Drafts: every real position of a target pass (``positions.width > 1``) is scored along its own
draft path with rollouts seeded from that path's prefix, so speculative decoding stays exact (and
pays k · R rollouts per draft position). A drafter's own positions (``positions.is_draft``) are left
unchanged, which only lowers acceptance. For the same reason the ``superposed`` strategy, whose
drafts are evaluated with ``is_draft`` set, is refused when the pipeline is validated.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from decodekit.hookspecs import hookimpl
from decodekit_qstar.estimate import q_estimate
from decodekit_qstar.options import QStarOptions, build_reward
from decodekit_qstar.rewards import check_scores
from decodekit_qstar.rollouts import Query, Rollouts, prefix_seed

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def load_baseline(spec: str, pipeline: Any) -> torch.nn.Module:
    """ρ_BL: the target itself (``"self"``) or another causal LM with the target's vocabulary."""
    if spec == "self":
        return pipeline.model
    from decodekit.models import load

    model, tok = load(spec, device=str(pipeline.device), dtype=_DTYPE_NAMES.get(pipeline.model.dtype, "auto"))
    if tok.get_vocab() != pipeline.tokenizer.get_vocab():
        raise ValueError(f"baseline {spec!r}: its tokenizer differs from the target's; rollouts must share "
                         f"the target's vocabulary")
    width = model.get_output_embeddings().weight.shape[0]
    target_width = pipeline.model.get_output_embeddings().weight.shape[0]
    if width != target_width:
        raise ValueError(f"baseline {spec!r}: {width} logits per token, the target has {target_width}")
    return model


class QStar:
    """Reward-guided rescoring over the reference model's top-k; see the module docstring."""

    # Checked when the pipeline is validated. Not ``superposed``: that strategy evaluates its
    # drafts with ``positions.is_draft`` set, which this rescorer leaves unchanged (a drafter's
    # positions), so the reward would be silently ignored.
    strategies = ("greedy", "sample", "beam", "diverse_beam")

    def __init__(self, options: QStarOptions, pipeline: Any):
        self.options = options
        self.reward_name, self.reward = build_reward(options.reward, pipeline)
        self.baseline_reward = None
        if options.baseline_reward is not None:
            self.baseline_reward = build_reward(options.baseline_reward, pipeline)
        self.baseline_model = load_baseline(options.baseline, pipeline) if options.mode == "transfer_q" else None
        self.pad_token_id = pipeline.pad_token_id

    # -- per-call set-up -------------------------------------------------------------------------

    @hookimpl
    def start(self, generation: Any) -> None:
        scratch = generation.scratch(self)
        scratch["stats"] = {"scored_positions": 0, "rollout_tokens": 0, "reward_texts": 0}
        if self.options.mode != "transfer_q":
            return
        scratch["rollouts"] = Rollouts(self.baseline_model, generation.num_rows, self.pad_token_id)
        o = self.options
        disable = None if o.progress is None else not o.progress  # None: tqdm disables off a tty
        scratch["bar"] = tqdm(total=self.expected_rollout_tokens(generation), unit="tok",
                              desc="qstar rollouts", disable=disable, leave=False)

    def expected_rollout_tokens(self, generation: Any) -> int:
        """Upper bound on rollout tokens for the call: every scored position, k · R · H each."""
        o, max_new = self.options, generation.limits.max_new_tokens
        per_row = sum(min(o.rollout_len, max_new - g - 1) for g in range(0, max_new, o.every))
        return per_row * o.k * o.num_rollouts * generation.num_rows

    @hookimpl
    def advance(self, generation: Any, decision: Any) -> None:
        rollouts = generation.scratch(self).get("rollouts")
        if rollouts is not None and decision.source_rows is not None:
            rollouts.reorder(decision.source_rows)

    @hookimpl
    def finish(self, generation: Any) -> None:
        bar = generation.scratch(self).get("bar")
        if bar is not None:
            bar.close()
        return None

    # -- the rescore ----------------------------------------------------------------------------

    @hookimpl
    def rescore(self, positions: Any, logits: torch.Tensor) -> torch.Tensor | None:
        if positions.is_draft:
            return None
        gen = positions.generation
        queries = self._queries(positions, logits)
        if not queries:
            return None
        if self.options.mode == "args":
            values, coef = self._args_values(gen, queries), self.options.w
        else:
            values, coef = self._q_values(gen, queries), self.options.alpha
        out = logits.clone()
        for q, v in zip(queries, values):
            cands = torch.tensor(q.candidates, device=logits.device)
            row = torch.full_like(logits[q.entry, q.pos], float("-inf"))  # [V]
            # ℓ(z) + coef · value(z) on the top-k: softmax ∝ π_ref(z) · exp(coef · value(z))
            row[cands] = logits[q.entry, q.pos, cands] + (coef * v).to(logits.dtype).to(logits.device)
            out[q.entry, q.pos] = row
        gen.scratch(self)["stats"]["scored_positions"] += len(queries)
        return out

    def _queries(self, positions: Any, logits: torch.Tensor) -> list[Query]:
        o, gen = self.options, positions.generation
        allowed = None
        queries = []
        for i, row in enumerate(positions.rows):
            if gen.done[row]:
                continue
            for j in range(positions.length(i)):
                generated = positions.generated(i, j)
                if len(generated) % o.every:
                    continue  # between re-estimates: logits unchanged
                if allowed is None:
                    allowed = positions.allowed(logits)
                    allowed = allowed if allowed is not None else torch.ones_like(logits, dtype=torch.bool)
                scores = logits[i, j].masked_fill(~allowed[i, j], float("-inf"))  # [V]
                k = min(o.k, int(torch.isfinite(scores).sum()))
                if k == 0:
                    continue  # no allowed token: the host reports it
                cands = torch.topk(scores, k).indices.tolist()
                budget = gen.limits.max_new_tokens - len(generated) - 1
                seed = prefix_seed(gen.generators[row].initial_seed(), positions.prefix(i, j))
                queries.append(Query(i, j, row, list(positions.paths[i][j]), generated, cands,
                                     max(0, min(o.rollout_len, budget)), seed))
        return queries

    # -- values: r([s, z]) for ARGS, Q̂(s, z) for Transfer Q* -----------------------------------

    def _text(self, gen: Any, q: Query, tokens: list[int]) -> str:
        ids = (gen.tokens[q.row] + q.path if self.options.reward_text == "full" else q.generated) + tokens
        return gen.tokenizer.decode(ids, skip_special_tokens=True)

    def _score(self, gen: Any, name: str, reward: Any, texts: list[str]) -> torch.Tensor:
        gen.scratch(self)["stats"]["reward_texts"] += len(texts)
        return check_scores(name, reward(texts), len(texts))

    def _args_values(self, gen: Any, queries: list[Query]) -> list[torch.Tensor]:
        texts = [self._text(gen, q, [c]) for q in queries for c in q.candidates]
        r = self._score(gen, self.reward_name, self.reward, texts)  # [Σ k_q]
        return list(torch.split(r, [len(q.candidates) for q in queries]))

    def _q_values(self, gen: Any, queries: list[Query]) -> list[torch.Tensor]:
        o, scratch = self.options, gen.scratch(self)
        R = o.num_rollouts
        bar = scratch.get("bar")
        tails = scratch["rollouts"].run(gen, queries, R, o.rollout_temperature,
                                        on_tokens=bar.update if bar is not None else None)
        scratch["stats"]["rollout_tokens"] += sum(len(t) for t in tails)
        texts = []
        n = 0
        for q in queries:
            for c in q.candidates:
                for _ in range(R):
                    texts.append(self._text(gen, q, [c] + tails[n]))
                    n += 1
        r = self._score(gen, self.reward_name, self.reward, texts).view(-1, R)  # [Σ k_q, R]
        r_bl = None
        if self.baseline_reward is not None:
            name, fn = self.baseline_reward
            r_bl = self._score(gen, name, fn, texts).view(-1, R)
        q_hat = q_estimate(r, r_bl, o.beta)  # [Σ k_q]
        return list(torch.split(q_hat, [len(q.candidates) for q in queries]))
