"""The ``superposed`` strategy: k drafts per prompt for the cost of one forward pass per step.

Design within the host's hook contract. Superposed decoding feeds the model a *mixture* of token
embeddings (``inputs_embeds``), which the host's loop (token ids through its ``CachedLM``) cannot
express. So the strategy drives its own loop, with its own KV cache, inside its first ``verify``
call (by then every plugin's ``start`` has run):

* ``verify`` (first step): for each row, prefill the prompt once, then repeat
  superpose → one forward → per-draft processing → expand → filter (see
  :mod:`decodekit_superposed.superpose`) up to ``max_new_tokens``; it then ends every row
  (``Decision.finished``) so the host's loop stops after this step.
* ``finish``: returns the ``num_drafts`` sequences of each prompt, best first, like beam search.

Each draft's next-token distribution goes through the pipeline's own processing
(``generation.process`` with ``Positions`` along the draft's path, ``is_draft=True``), so masks
(grammar, span, banned words) and rescorers apply per draft exactly as they would to a drafter.
The host's prefill pass of the first step is not used: an overhead of one prompt pass per call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from decodekit import hookimpl
from decodekit.errors import ConfigError
from decodekit.positions import Positions
from decodekit.types import Decision, Draft, Sequence, Verdict
from decodekit_superposed.ngram import NGramModel
from decodekit_superposed.superpose import expand, select, superposed_embedding, superposition_weights


class SuperposedOptions(BaseModel):
    """Options of the ``superposed`` strategy."""

    model_config = ConfigDict(extra="forbid")

    num_drafts: int = Field(3, ge=1, description="k: drafts kept and returned per prompt")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the n-gram term in the filter (0: LLM only)")
    ngram_orders: list[int] = Field([2, 3], description="n-gram orders interpolated by the filter (each >= 2)")
    ngram_floor: float = Field(0.1, gt=0.0, le=1.0, description="n-gram mass given uniformly to the k candidates")
    corpus: str | None = Field(None, description="text the n-gram model is counted from (default: the prompt)")
    corpus_file: str | None = Field(None, description="a UTF-8 text file to count the n-gram model from")
    length_penalty: float = Field(1.0, description="final ranking by score / length ** length_penalty")

    @model_validator(mode="after")
    def _check(self) -> "SuperposedOptions":
        if any(n < 2 for n in self.ngram_orders) or not self.ngram_orders:
            raise ValueError(f"ngram_orders must be a non-empty list of integers >= 2, got {self.ngram_orders}")
        if self.corpus is not None and self.corpus_file is not None:
            raise ValueError("give corpus or corpus_file, not both")
        return self


class Superposed:
    """Superposed Decoding (Shen et al. 2024); see the module docstring."""

    accepts_drafts = False  # it runs its own superposed loop

    rows_per_prompt = 1

    def __init__(self, options: SuperposedOptions | None = None, pipeline=None):
        self.options = o = options or SuperposedOptions()
        text = o.corpus
        if o.corpus_file is not None:
            path = Path(o.corpus_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"superposed: corpus_file {str(path)!r} does not exist")
            text = path.read_text(encoding="utf-8")
        # Counted once per pipeline (deliberately kept on the plugin: it depends only on the options).
        self.corpus_ids: list[int] | None = None
        if text is not None:
            if pipeline is None:
                raise ValueError("superposed: a corpus needs the pipeline's tokenizer")
            self.corpus_ids = pipeline.tokenizer(text, add_special_tokens=False)["input_ids"]

    @hookimpl
    def verify(self, generation, drafts: list[Draft | None], logprobs: torch.Tensor) -> Decision:
        if any(d is not None for d in drafts):
            raise ConfigError("strategy 'superposed' does not verify drafts: remove the proposer plugin")
        if generation.limits.stop:
            raise ConfigError("strategy 'superposed' does not support decoding.stop strings")
        results = [self._decode(generation, b) for b in range(generation.num_rows)]
        generation.scratch(self)["sequences"] = results
        eos = sorted(generation.limits.eos_token_ids)
        verdicts = []
        for seqs in results:  # the host row gets the best sequence's first token; finish returns all
            first = seqs[0].token_ids[0] if seqs and seqs[0].token_ids else (eos[0] if eos else 0)
            verdicts.append(Verdict([], first))
        return Decision(verdicts, None, [True] * generation.num_rows)

    @hookimpl
    def finish(self, generation) -> list[list[Sequence]]:
        return generation.scratch(self)["sequences"]

    # -- the superposed loop of one row -----------------------------------------------------------

    @torch.inference_mode()
    def _decode(self, gen, row: int) -> list[Sequence]:
        o, k = self.options, self.options.num_drafts
        model, prompt = gen.model, list(gen.tokens[row])
        eos = set(gen.limits.eos_token_ids)
        ngram = NGramModel([self.corpus_ids if self.corpus_ids is not None else prompt], o.ngram_orders)
        embedding = model.get_input_embeddings().weight  # [V_emb, H]
        device = embedding.device

        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1].float()  # logits [1, V]
        passes = 1
        drafts: list[list[int]] = [[]]
        scores: list[float] = [0.0]
        finished: list[tuple[list[int], float]] = []
        for t in range(gen.limits.max_new_tokens):
            lp = _per_draft(gen, row, drafts, logits)  # [m, V] log p' of each draft
            cands = expand(lp.cpu(), scores, [prompt + d for d in drafts], ngram, k, o.alpha, o.ngram_floor)
            running, ended = select(cands, k, eos)
            finished += [(drafts[c.draft] + [c.token], c.score) for c in ended]
            drafts = [drafts[c.draft] + [c.token] for c in running]
            scores = [c.score for c in running]
            if not drafts or t == gen.limits.max_new_tokens - 1:
                break
            w = superposition_weights(torch.tensor(scores))  # [m]
            e = superposed_embedding(embedding, [d[-1] for d in drafts], w)  # [H]
            pos = torch.tensor([[len(prompt) + t]], device=device)  # the drafts' common position
            out = model(inputs_embeds=e.to(embedding.dtype)[None, None, :], position_ids=pos, cache=cache,
                        use_cache=True, logits_to_keep=1)
            cache, logits = out.cache, out.logits[:, -1].float()
            passes += 1
        pool = finished + list(zip(drafts, scores))
        ranked = sorted(pool, key=lambda p: -p[1] / max(1, len(p[0])) ** o.length_penalty)[:k]
        # stats: this loop's passes, and every returned draft's tokens (the host counted one token)
        gen.stats.target_passes += passes
        gen.stats.row_passes += passes
        gen.stats.new_tokens += sum(len(toks) for toks, _ in ranked) - 1
        return [Sequence(list(toks), s / max(1, len(toks)) ** o.length_penalty) for toks, s in ranked]


def _per_draft(gen, row: int, drafts: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
    """The shared superposed ``logits [1, V]`` processed along each draft's own path: ``[m, V]``."""
    m = len(drafts)
    positions = Positions(gen, [row] * m, [[d] for d in drafts], is_draft=True)
    return gen.process(positions, logits.expand(m, -1)[:, None, :].contiguous())[:, 0]
