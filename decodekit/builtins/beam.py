"""Built-in strategy ``beam``: beam search with length penalty and early stopping.

The semantics are those of HF transformers 5's ``generate(num_beams=k, do_sample=False)``:

* Each prompt owns ``k`` rows (``rows_per_prompt = k``). At the first step only the first beam is
  live: the running scores start at ``[0, -1e9, ..., -1e9]``, so the ``k`` identical prompt rows
  do not all propose the same tokens.
* A step scores every continuation ``s(beam, x) = running[beam] + log p'(x | beam)`` over the
  ``k * V`` pairs of a prompt and keeps the top ``K = max(2, 1 + n_eos) * k`` candidates (enough
  that ``k`` of them never end the sequence).
* A candidate *hits a stop* when its token is an EOS or when it reaches ``max_new_tokens``.
  Running beams are the best ``k`` candidates that do not (a hit gets ``-1e9``), so a running beam
  never emits EOS. Candidates that hit a stop and rank in the top ``k`` become finished
  hypotheses with score ``s / n ** length_penalty`` (``n``: new tokens, EOS included); each prompt
  keeps its best ``k`` finished hypotheses.
* Early stopping (``early_stopping``): ``True`` ends a prompt once it has ``k`` finished
  hypotheses. ``False`` and ``"never"`` end it once no running beam can beat the worst finished
  one, estimating the best reachable score as ``best_running / n ** length_penalty`` with the
  current length ``n`` (``False``) or, for ``"never"`` with a positive length penalty, the longest
  possible length ``max_new_tokens`` (the exact bound).

``num_beams = 1`` is greedy decoding, as in HF (``generate`` runs greedy search then): the argmax
token each step, EOS ends the row; the sequence's score is its ``sum log p' / n ** length_penalty``.

The per-prompt state (running scores, finished hypotheses, the early-stop flag) lives in
``generation.scratch(self)``; the host reorders the rows (tokens, KV cache, TokenState plugin
states) by the ``source_rows`` each step returns. The tensor arithmetic mirrors HF's op for op, so
scores and ties come out the same. :func:`top_candidates`, :func:`stop_hits`,
:func:`select_running` and :func:`BeamOptions` are shared with the ``diverse_beam`` plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from decodekit.errors import ConfigError
from decodekit.hookspecs import hookimpl
from decodekit.types import Decision, Draft, Sequence, Verdict

DEAD = -1.0e9  # the score HF gives beams that must not be chosen


class BeamOptions(BaseModel):
    """Options of the ``beam`` strategy (HF ``generate`` names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    num_beams: int = Field(4, ge=1, description="beams kept per prompt")
    length_penalty: float = Field(
        1.0, description="finished scores are sum log p / length ** length_penalty (> 0 favours long outputs)")
    early_stopping: bool | Literal["never"] = Field(
        False, description="True: stop at num_beams finished; False: heuristic; 'never': exact bound")
    num_return_sequences: int = Field(1, ge=1, description="sequences returned per prompt, best first")

    @model_validator(mode="after")
    def _check_counts(self) -> "BeamOptions":
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})")
        return self


# -- pieces shared by beam search variants ------------------------------------------------------


@dataclass
class Candidates:
    """The top ``K`` continuations of each prompt: ``[A, K]`` tensors, best first."""

    scores: torch.Tensor  # float32 accumulated log-probabilities
    beams: torch.Tensor  # long, the beam (0..k-1 within the prompt) each continues
    tokens: torch.Tensor  # long, the appended token


def candidate_count(num_beams: int, n_eos: int) -> int:
    """``K = max(2, 1 + n_eos) * num_beams``: enough that ``num_beams`` candidates are not EOS."""
    return max(2, 1 + n_eos) * num_beams


def top_candidates(logprobs: torch.Tensor, running: torch.Tensor, keep: int) -> Candidates:
    """Best ``keep`` of the ``k * V`` continuations of each prompt.

    ``logprobs``: ``[A, k, V]`` log p' of each beam; ``running``: ``[A, k]`` running scores.
    Flattens beam-major (index ``beam * V + token``) as HF does, so ties break the same way.
    """
    A, k, V = logprobs.shape
    scores = (logprobs + running[:, :, None]).reshape(A, k * V)  # s(beam, x) = running + log p'
    top, idx = torch.topk(scores, k=keep)  # [A, K], sorted descending
    return Candidates(top, idx // V, idx % V)


def stop_hits(tokens: torch.Tensor, eos: torch.Tensor, at_max_length: bool) -> torch.Tensor:
    """``[A, K]`` bool: the candidate ends its sequence (an EOS token, or the length budget)."""
    hits = torch.isin(tokens, eos) if eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
    return hits | at_max_length


def select_running(cand: Candidates, hits: torch.Tensor, k: int) -> Candidates:
    """The ``k`` best candidates that do not stop (a stopping one gets ``-1e9``): ``[A, k]``."""
    penalised = cand.scores + hits.to(torch.float32) * DEAD
    sel = torch.topk(penalised, k=k)[1]
    return Candidates(penalised.gather(1, sel), cand.beams.gather(1, sel), cand.tokens.gather(1, sel))


def replace_eos(logprobs: torch.Tensor, token: int, eos: set[int]) -> int:
    """A running beam must not emit EOS (the host would end its row alone). HF can pick one only
    for a dead beam (score <= -1e9, when masks leave fewer than ``K`` tokens); such a beam goes on
    with its most likely non-EOS token instead. ``logprobs``: ``[V]`` of its parent."""
    if token not in eos:
        return token
    lp = logprobs.clone()
    lp[list(eos)] = float("-inf")
    return int(lp.argmax())


def check_plain_step(generation, drafts: list[Draft | None] | None, strategy: str) -> None:
    """Beam search takes no drafts and supports no stop strings (each would end one row alone)."""
    if drafts is not None and any(d is not None for d in drafts):
        raise ConfigError(f"strategy {strategy!r} does not verify drafts: remove the proposer plugin")
    if generation.limits.stop:
        raise ConfigError(f"strategy {strategy!r} does not support decoding.stop strings; use EOS or max_new_tokens")


def eos_tensor(generation, device: torch.device) -> torch.Tensor:
    return torch.tensor(sorted(generation.limits.eos_token_ids), dtype=torch.long, device=device)


# -- the strategy -------------------------------------------------------------------------------


@dataclass
class _State:
    """Per-call state for ``P`` prompts of ``k`` beams (kept in ``generation.scratch``)."""

    running: torch.Tensor  # [P, k] float32 running scores (sum of log p')
    finished: torch.Tensor  # [P, k] float32 scores of the finished hypotheses, best first
    is_finished: torch.Tensor  # [P, k] bool: slot holds a real finished hypothesis
    open: torch.Tensor  # [P, 1] bool: a running beam may still beat the worst finished one
    sequences: list[list[list[int]]]  # [P][k] new tokens of each finished hypothesis


class Beam:
    """Beam search (see the module docstring); rows ``p*k .. p*k+k-1`` are prompt ``p``'s beams."""

    accepts_drafts = False  # each beam is re-chosen every step; a proposer cannot help

    def __init__(self, options: BeamOptions | None = None, pipeline: object = None):
        self.options = options or BeamOptions()
        self.rows_per_prompt = self.options.num_beams

    @hookimpl
    def start(self, generation) -> None:
        check_plain_step(generation, None, "beam")
        k = self.options.num_beams
        P = generation.num_rows // k
        running = torch.zeros(P, k)
        running[:, 1:] = DEAD  # only the first beam is live at the first step
        generation.scratch(self)["state"] = _State(
            running=running,
            finished=torch.full((P, k), DEAD),
            is_finished=torch.zeros(P, k, dtype=torch.bool),
            open=torch.ones(P, 1, dtype=torch.bool),
            sequences=[[[] for _ in range(k)] for _ in range(P)],
        )

    @hookimpl
    def verify(self, generation, drafts: list[Draft | None], logprobs: torch.Tensor) -> Decision:
        check_plain_step(generation, drafts, "beam")
        st: _State = generation.scratch(self)["state"]
        o, k = self.options, self.options.num_beams
        B, V = logprobs.shape[0], logprobs.shape[-1]
        if k == 1:
            return self._greedy(generation, st, logprobs)
        lp = logprobs[:, 0, :].float().cpu().view(B // k, k, V)  # [P, k, V] log p' per beam
        source = list(range(B))
        verdicts = [Verdict([], 0) for _ in range(B)]
        finished = [False] * B
        active = [p for p in range(B // k) if not generation.done[p * k]]
        if not active:
            return Decision(verdicts, source, finished)

        eos = eos_tensor(generation, torch.device("cpu"))
        eos_set = set(generation.limits.eos_token_ids)
        a = torch.tensor(active)
        t = len(generation.new_tokens(active[0] * k))  # tokens generated so far (same for every beam)
        n = t + 1  # length of every candidate
        max_new = generation.limits.max_new_tokens

        cand = top_candidates(lp[a], st.running[a], candidate_count(k, len(eos_set)))
        hits = stop_hits(cand.tokens, eos, n >= max_new)  # [A, K]
        run = select_running(cand, hits, k)  # [A, k]
        self._update_finished(generation, st, a, active, cand, hits, n)
        st.running[a] = run.scores

        # Early stop: can the best running beam still beat the worst finished hypothesis?
        best_len = max_new if (o.early_stopping == "never" and o.length_penalty > 0.0) else n
        best = run.scores[:, :1] / (best_len ** o.length_penalty)  # [A, 1]
        worst = torch.where(st.is_finished[a], st.finished[a].min(dim=1, keepdim=True)[0], DEAD)  # [A, k]
        st.open[a] = st.open[a] & (best > worst).any(dim=-1, keepdim=True)
        done = (~st.open[a][:, 0]) | (st.is_finished[a].all(dim=-1) & (o.early_stopping is True)) | hits.all(dim=-1)

        for i, p in enumerate(active):
            for j in range(k):
                row = p * k + j
                parent = p * k + int(run.beams[i, j])
                source[row] = parent
                tok = replace_eos(logprobs[parent, 0], int(run.tokens[i, j]), eos_set)
                verdicts[row] = Verdict([], tok, float(logprobs[parent, 0, tok]))
                finished[row] = bool(done[i])
        return Decision(verdicts, source, finished)

    def _greedy(self, generation, st: _State, logprobs: torch.Tensor) -> Decision:
        """One beam: argmax p' (the host ends a row at EOS); the running score is Σ log p'."""
        lp = logprobs[:, 0, :].float().cpu()  # [P, V]
        best = lp.argmax(dim=-1)  # [P]
        verdicts = []
        for p in range(lp.shape[0]):
            tok = int(best[p])
            if not generation.done[p]:
                st.running[p, 0] += lp[p, tok]
            verdicts.append(Verdict([], tok, float(lp[p, tok])))
        return Decision(verdicts)

    def _update_finished(self, generation, st: _State, a: torch.Tensor, active: list[int],
                         cand: Candidates, hits: torch.Tensor, n: int) -> None:
        """Merge the candidates that stop (top ``k`` ranks only) into each prompt's best ``k``."""
        o, k = self.options, self.options.num_beams
        K = cand.scores.shape[1]
        top_k = torch.arange(K) < k  # [K]: only the top k candidates may finish
        just = hits & top_k[None, :]  # [A, K]
        scores = cand.scores / (n ** o.length_penalty)  # length-normalised: s / n ** lp
        full = st.is_finished[a].all(dim=-1, keepdim=True) & (o.early_stopping is True)
        scores = scores + full.to(torch.float32) * DEAD  # early_stopping=True: k finished is enough
        scores = scores + (~st.open[a]).to(torch.float32) * DEAD  # no improvement possible any more
        scores = scores + (~just) * DEAD  # running candidates are not finished hypotheses
        merged = torch.cat((st.finished[a], scores), dim=1)  # [A, k + K]
        keep = torch.topk(merged, k=k)[1]  # [A, k]
        merged_fin = torch.cat((st.is_finished[a], just), dim=1)
        st.finished[a] = merged.gather(1, keep)
        st.is_finished[a] = merged_fin.gather(1, keep)
        for i, p in enumerate(active):
            old = st.sequences[p]
            new = []
            for idx in keep[i].tolist():
                if idx < k:
                    new.append(old[idx])
                else:
                    c = idx - k
                    parent = p * k + int(cand.beams[i, c])
                    new.append(generation.new_tokens(parent) + [int(cand.tokens[i, c])])
            st.sequences[p] = new

    @hookimpl
    def finish(self, generation) -> list[list[Sequence]]:
        st: _State = generation.scratch(self)["state"]
        r = self.options.num_return_sequences
        if self.options.num_beams == 1:  # greedy: each row's tokens, score Σ log p' / n ** lp
            out = []
            for p in range(generation.num_rows):
                toks = generation.new_tokens(p)
                score = float(st.running[p, 0]) / max(1, len(toks)) ** self.options.length_penalty
                out.append([Sequence(list(toks), score)])
            return out
        return [
            [Sequence(list(st.sequences[p][j]), float(st.finished[p, j])) for j in range(r)]
            for p in range(len(st.sequences))
        ]


@hookimpl
def register_plugins(register):
    register("beam", Beam, options=BeamOptions, kind="strategy",
             description="beam search with length penalty and early stopping (HF generate semantics)")
