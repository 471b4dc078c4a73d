"""Test helpers: a brute-force momentum decoder and deterministic drafting plugins."""

from __future__ import annotations

import torch

from decodekit import Draft, hookimpl

DEFAULT_R = [0.0, 1.0, 3.0, 4.0, 5.0, 5.0]


def brute_repetition_length(text: list[int], v: int, max_n: int = 5) -> int:
    """``L(v)`` straight from the definition: scan every n-gram of ``text``, no index."""
    if v not in text:
        return 0
    for n in range(max_n, 1, -1):
        if n - 1 > len(text):
            continue
        query = tuple(text[len(text) - n + 1:]) + (v,)
        if any(tuple(text[s:s + n]) == query for s in range(len(text) - n + 1)):
            return n
    return 1


def brute_momentum_choice(logits: torch.Tensor, text: list[int], k: int = 5, alpha: float = 0.2,
                          table: list[float] = DEFAULT_R, max_n: int = 5) -> int:
    """One momentum step for ``logits [V]``, written as the paper states it (a loop over top k)."""
    probs = torch.softmax(logits.double(), dim=-1)
    ids = torch.topk(logits, k).indices.tolist()
    best, best_score = None, None
    for v in ids:  # in descending probability: the first of equal scores wins
        s = float(probs[v]) - alpha * table[brute_repetition_length(text, v, max_n)]
        if best_score is None or s > best_score:
            best, best_score = v, s
    return best


@torch.no_grad()
def brute_momentum_generate(model, prompt: list[int], n: int, banned: list[int] = (), **kw) -> list[int]:
    """Momentum decoding with a full forward per step (no cache, no drafts): the reference.
    ``banned`` token ids are removed from the distribution before the momentum step."""
    text = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([text])).logits[0, -1].float()
        logits[list(banned)] = float("-inf")
        text.append(brute_momentum_choice(logits, text, **kw))
    return text[len(prompt):]


class Ban:
    """A mask plugin that forbids some token ids everywhere."""

    name = "ban"

    def __init__(self, banned: list[int]):
        self.banned = list(banned)

    @hookimpl
    def mask(self, logits):
        allowed = torch.ones_like(logits, dtype=torch.bool)
        allowed[..., self.banned] = False
        return allowed


class NgramProposer:
    """Prompt lookup: after the latest earlier occurrence of the last ``match`` tokens, propose
    the ``n`` tokens that followed it (a chain); with no match, propose the last token repeated.
    Momentum discourages exactly such repetitions, so most drafts are rejected, some accepted."""

    name = "ngram_proposer"

    def __init__(self, n: int = 4, match: int = 2):
        self.n, self.match = n, match

    @hookimpl
    def propose(self, generation):
        drafts = []
        for b in range(generation.num_rows):
            toks = generation.tokens[b]
            key = toks[-self.match:]
            proposal = None
            for s in range(len(toks) - self.match - 1, -1, -1):
                if toks[s:s + self.match] == key:
                    proposal = toks[s + self.match:s + self.match + self.n]
                    break
            drafts.append(Draft.chain(proposal or [toks[-1]] * self.n))
        return drafts


class OracleProposer:
    """Knows each row's true continuation ``truth[b]`` and proposes its next ``n`` tokens with
    deterministic corruptions, so acceptance lengths vary from 0 to n. With ``tree=True`` each
    draft is a tree: a corrupted branch first, the true chain as the root's second child."""

    name = "oracle_proposer"

    def __init__(self, truth: list[list[int]], vocab: int, n: int = 4, tree: bool = False):
        self.truth, self.vocab, self.n, self.tree = truth, vocab, n, tree
        self.step = 0

    def _corrupt(self, chain: list[int]) -> list[int]:
        self.step += 1
        cut = self.step % (self.n + 2)  # 0 .. n + 1: where the first wrong token goes (n, n+1: none)
        return [(t + 1 + self.step) % self.vocab if i >= cut else t for i, t in enumerate(chain)]

    @hookimpl
    def propose(self, generation):
        drafts = []
        for b in range(generation.num_rows):
            done = len(generation.new_tokens(b))
            chain = self.truth[b][done:done + self.n]
            if not chain:
                drafts.append(None)
                continue
            wrong = self._corrupt(chain)
            if not self.tree:
                drafts.append(Draft.chain(wrong))
                continue
            # tree: branch A = corrupted chain (nodes 0..m-1), branch B = true chain under the root
            m = len(wrong)
            alt = [(chain[0] + 3) % self.vocab] + chain[1:]  # a wrong first token, then the truth
            tokens = wrong + alt + chain
            parents = (list(range(-1, m - 1)) + [-1] + list(range(m, 2 * m - 1))
                       + [-1] + list(range(2 * m, 3 * m - 1)))
            drafts.append(Draft(tokens, parents))
        return drafts
