"""Every composing pair that docs/composition.md lists, proven on tiny random models.

Two kinds of check:

* **strategies**: a mask or rescorer under ``beam``, ``diverse_beam`` and ``superposed``: every
  output obeys the mask, and the strategy reduces to a simpler one with the plugin attached
  (``diverse_beam`` with one group is ``beam``; ``superposed`` with one draft and no n-gram filter
  is ``greedy``), so the plugin really acts inside the strategy's own loop.
* **pairs**: greedy decoding with two plugins equals a brute-force decoder that runs a full
  forward pass per token (no cache, no drafts) and applies the documented rules by hand, in the
  documented order: guidance's CFG formula, momentum's ``p(v) − α·R(L(v))`` over the top k
  allowed tokens, qstar's (ARGS) ``ℓ(z) + w·r([s, z])`` over the top k, masks AND-ed.

Pairs that cannot compose are checked to be refused with an error that says why.
"""

from __future__ import annotations

import re

import pytest
import regex
import torch

from decodekit import ConfigError, Pipeline, hookimpl
from decodekit.testing import tiny_model, tiny_tokenizer

for _plugin in ("speculative", "grammar", "guidance", "momentum", "qstar", "span", "diverse_beam",
                "superposed"):
    pytest.importorskip(f"decodekit_{_plugin}")

EOS = 1
R_TABLE = [0.0, 1.0, 3.0, 4.0, 5.0, 5.0]  # momentum's default resistance, α = 0.2, k = 5
PASSAGE = "the quick brown fox jumps over the lazy dog to the zoo"  # every suffix holds an 'o'
PROMPTS = ["once upon a time", "the cat sat on the mat. the cat", "abc abc ab", "1, 2, 3,"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """Peaked distributions (beam, masks, guidance, qstar)."""
    return tiny_model("llama", tok, init_range=0.3, seed=7)


@pytest.fixture(scope="module")
def flat(tok):
    """Flatter distributions, so that momentum's top 5 compete and it departs from greedy."""
    return tiny_model("llama", tok, init_range=0.08)


def pipe(model, tok, plugins=(), **decoding):
    return Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 16, **decoding}, plugins=list(plugins))


def sequences(result) -> list[list[int]]:
    return [s.token_ids for s in result.completions[0].sequences]


def char_of(tok, v: int) -> str | None:
    """The character of token ``v`` (None for the four special tokens)."""
    return tok.convert_ids_to_tokens(v) if v >= 4 else None


# -- brute-force references: one full forward per token --------------------------------------


@torch.no_grad()
def next_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float()  # [V]


def brute_greedy(model, prompt: list[int], n: int, process) -> list[int]:
    """Greedy decoding of ``argmax process(logits, prompt, generated)``, stopping after EOS."""
    out: list[int] = []
    for _ in range(n):
        x = process(next_logits(model, prompt + out), prompt, out)
        out.append(int(x.argmax()))
        if out[-1] == EOS:
            break
    return out


def cfg(model, prompt, generated, gamma, negative=None):
    """Classifier-free guidance by hand: log p_u + γ (log p_c − log p_u); the unconditional branch
    sees the negative prompt (default: the last prompt token) followed by the generated text."""
    neg = list(negative) if negative is not None else prompt[-1:]
    lp_c = torch.log_softmax(next_logits(model, prompt + generated), -1)
    lp_u = torch.log_softmax(next_logits(model, neg + generated), -1)
    return lp_u + gamma * (lp_c - lp_u)


def repetition_length(text: list[int], v: int, max_n: int = 5) -> int:
    """Momentum's L(v): 0 if v is new, else the longest n ≤ max_n whose n-gram (last n − 1 tokens,
    then v) already occurs in ``text``, and 1 if only v itself does."""
    if v not in text:
        return 0
    best = 1
    for n in range(2, max_n + 1):
        if n - 1 > len(text):
            break
        gram = text[len(text) - n + 1:] + [v]
        if any(text[s:s + n] == gram for s in range(len(text) - n + 1)):
            best = n
    return best


def momentum(x: torch.Tensor, text: list[int], k: int = 5, alpha: float = 0.2) -> torch.Tensor:
    """Momentum's rescore of ``x [V]`` by hand: p(v) − α·R(L(v)) on the top k finite entries."""
    p = torch.softmax(x.double(), -1)
    out = torch.full_like(x.double(), float("-inf"))
    for v in torch.topk(x, k).indices.tolist():
        if x[v] > float("-inf"):
            out[v] = p[v] - alpha * R_TABLE[repetition_length(text, v)]
    return out


def args(x: torch.Tensor, tok, generated: list[int], k: int, w: float, char: str = "r") -> torch.Tensor:
    """qstar's ARGS rescore by hand: ℓ(z) + w · count(char in the text with z) on the top k finite."""
    out = torch.full_like(x.double(), float("-inf"))
    for z in torch.topk(x, k).indices.tolist():
        if x[z] > float("-inf"):
            out[z] = float(x[z]) + w * tok.decode(generated + [z], skip_special_tokens=True).count(char)
    return out


def regex_mask(tok, pattern: str, generated: list[int], V: int) -> torch.Tensor:
    """The tokens that keep ``generated`` a prefix of a match (EOS once it is a full match)."""
    text = tok.decode(generated)
    allowed = torch.zeros(V, dtype=torch.bool)
    for v in range(4, V):
        allowed[v] = regex.fullmatch(pattern, text + char_of(tok, v), partial=True) is not None
    allowed[EOS] = re.fullmatch(pattern, text) is not None
    return allowed


def span_mask(tok, passage: str, generated: list[int], V: int) -> torch.Tensor:
    """The tokens that keep ``generated`` a substring of ``passage`` (EOS once it is non-empty)."""
    text = tok.decode(generated)
    allowed = torch.zeros(V, dtype=torch.bool)
    for v in range(4, V):
        allowed[v] = (text + char_of(tok, v)) in passage
    allowed[EOS] = bool(text)
    return allowed


def masked(x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~allowed, float("-inf"))


class AllowOnly:
    """A stateless mask plugin: only ``ids`` (and EOS) are allowed, everywhere."""

    def __init__(self, ids: list[int]):
        self.ids = list(ids) + [EOS]

    @hookimpl
    def mask(self, positions, logits):
        allowed = torch.zeros(logits.shape, dtype=torch.bool)
        allowed[..., self.ids] = True
        return allowed.to(logits.device)


# == strategies ===============================================================================

GRAMMAR = {"name": "grammar", "regex": r"(ab|ba|cab)+[0-9]"}
BEAM = {"strategy": "beam", "num_beams": 4, "num_return_sequences": 4, "max_new_tokens": 10}
DBS = {"strategy": "diverse_beam", "num_beams": 4, "num_groups": 2, "diversity_penalty": 1.0,
       "num_return_sequences": 4, "max_new_tokens": 10}


@pytest.mark.parametrize("decoding", [BEAM, DBS], ids=["beam", "diverse_beam"])
def test_grammar_every_beam_validates(model, tok, decoding):
    """The grammar plugin's stateful mask follows the beams as they are reordered: every returned
    sequence (finished by EOS) matches the regex; the grammar does change the search."""
    constrained, plain = pipe(model, tok, [GRAMMAR], **decoding), pipe(model, tok, **decoding)
    changed = False
    for p in PROMPTS[:3]:
        seqs = constrained.generate(p).completions[0].sequences
        assert len(seqs) == 4
        for s in seqs:
            assert s.token_ids[-1] == EOS and re.fullmatch(GRAMMAR["regex"], s.text), (p, s.text)
        changed |= sequences(plain.generate(p)) != [s.token_ids for s in seqs]
    assert changed


@pytest.mark.parametrize("early_stopping", [True, "never"])
def test_grammar_diverse_beam_with_one_group_is_beam(model, tok, early_stopping):
    """One group is beam search, the grammar's mask included. Not with ``early_stopping: false``:
    there diverse_beam stops a group by HF v4's rule (the best *candidate* of the step, which may
    be an EOS) and beam by HF 5's (the best *running* beam); with this grammar, which makes EOS
    candidates frequent, the two stop at different steps (docs/composition.md)."""
    dbs = pipe(model, tok, [GRAMMAR], **{**DBS, "num_groups": 1, "early_stopping": early_stopping})
    beam = pipe(model, tok, [GRAMMAR], **{**BEAM, "early_stopping": early_stopping})
    for p in PROMPTS[:3]:
        got, want = dbs.generate(p).completions[0].sequences, beam.generate(p).completions[0].sequences
        assert [s.token_ids for s in got] == [s.token_ids for s in want], p
        assert [s.score for s in got] == pytest.approx([s.score for s in want], rel=1e-5)


@pytest.mark.parametrize("decoding", [BEAM, DBS], ids=["beam", "diverse_beam"])
def test_grammar_equals_the_same_mask_written_by_hand(model, tok, decoding):
    """A regex whose mask is the same at every position, ``[a-e ]*``, gives exactly the search of
    a stateless hand-written mask allowing those characters and EOS (sequences and scores)."""
    chars = tok.convert_tokens_to_ids(list("abcde "))
    grammar = pipe(model, tok, [{"name": "grammar", "regex": "[a-e ]*"}], **decoding)
    by_hand = pipe(model, tok, [AllowOnly(chars)], **decoding)
    for p in PROMPTS[:3]:
        got, want = grammar.generate(p).completions[0].sequences, by_hand.generate(p).completions[0].sequences
        assert [s.token_ids for s in got] == [s.token_ids for s in want], p
        assert [s.score for s in got] == pytest.approx([s.score for s in want], rel=1e-5)


def test_guidance_diverse_beam(model, tok):
    """The prompt as its own negative prompt makes both branches see the same tokens, so guidance
    is the identity for any γ: diverse beam search (two groups) is unchanged only if the branch
    cache follows the beams as each group reorders them. With one group it equals beam + guidance."""
    plain = pipe(model, tok, **DBS)
    ids = [plain.encode(p) for p in PROMPTS]
    self_negative = pipe(model, tok, [{"name": "guidance", "guidance_scale": 4.0, "negative_prompt": ids}], **DBS)
    got = self_negative.generate(ids).completions
    want = plain.generate(ids).completions
    assert [[s.token_ids for s in c.sequences] for c in got] == [[s.token_ids for s in c.sequences] for c in want]
    guided = pipe(model, tok, [{"name": "guidance", "guidance_scale": 4.0}], **DBS)
    assert [[s.token_ids for s in c.sequences] for c in guided.generate(ids).completions] != \
        [[s.token_ids for s in c.sequences] for c in want]
    g1 = pipe(model, tok, [{"name": "guidance", "guidance_scale": 3.0}], **{**DBS, "num_groups": 1})
    beam = pipe(model, tok, [{"name": "guidance", "guidance_scale": 3.0}], **BEAM)
    for p in ids:
        assert sequences(g1.generate(p)) == sequences(beam.generate(p))


def test_guidance_superposed(model, tok):
    """The windowed contrastive amateur scores any position, so it applies inside superposed's own
    loop: one draft without the n-gram filter equals greedy with the same guidance. Guidance with a
    cached second pass cannot follow that loop and is refused (it would be silently ignored)."""
    contrastive = {"name": "guidance", "mode": "contrastive", "amateur_context": 1, "alpha": 0.05}
    one = pipe(model, tok, [contrastive], strategy="superposed", num_drafts=1, alpha=0.0, max_new_tokens=10)
    greedy = pipe(model, tok, [contrastive], max_new_tokens=10)
    plain_greedy = pipe(model, tok, max_new_tokens=10)
    assert [one.generate(p).token_ids for p in PROMPTS] == [greedy.generate(p).token_ids for p in PROMPTS]
    assert [greedy.generate(p).token_ids for p in PROMPTS] != [plain_greedy.generate(p).token_ids for p in PROMPTS]
    three = pipe(model, tok, [contrastive], strategy="superposed", num_drafts=3, max_new_tokens=10)
    plain3 = pipe(model, tok, strategy="superposed", num_drafts=3, max_new_tokens=10)
    assert [sequences(three.generate(p)) for p in PROMPTS] != [sequences(plain3.generate(p)) for p in PROMPTS]
    for opts in ({"guidance_scale": 2.0}, {"mode": "contrastive", "amateur_skip_layers": [1]}):
        with pytest.raises(ConfigError, match="superposed"):
            pipe(model, tok, [{"name": "guidance", **opts}], strategy="superposed")
    # a call that overrides the strategy is refused as well
    cfg_pipe = pipe(model, tok, [{"name": "guidance", "guidance_scale": 2.0}])
    with pytest.raises(ConfigError, match="superposed"):
        cfg_pipe.generate("abc", strategy="superposed")


def qstar(mode="args", **opts):
    defaults = {"k": 3, "num_rollouts": 1, "rollout_len": 3} if mode == "transfer_q" else {}
    return {"name": "qstar", "mode": mode, "reward": {"name": "count", "text": "r"}, **defaults, **opts}


def test_qstar_diverse_beam(model, tok):
    """Zero weight over the whole vocabulary leaves diverse beam search unchanged; with one group
    (Transfer Q*, so the rollout cache must follow the reordering) it equals beam + qstar; a
    positive weight raises the reward summed over every returned sequence."""
    V = len(tok)
    dec = {**DBS, "max_new_tokens": 8}
    plain = pipe(model, tok, **dec)
    zero = pipe(model, tok, [qstar(w=0.0, k=V)], **dec)
    rewarded = pipe(model, tok, [qstar(w=3.0, k=6)], **dec)
    count = lambda r: sum(s.text.count("r") for s in r.completions[0].sequences)  # noqa: E731
    gained = 0
    for p in PROMPTS[:3]:
        base = plain.generate(p)
        assert sequences(zero.generate(p)) == sequences(base), p
        gained += count(rewarded.generate(p)) - count(base)
    assert gained > 0
    one = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 6, "early_stopping": "never", "seed": 0}
    g1 = pipe(model, tok, [qstar("transfer_q", alpha=2.0)], **{**one, "strategy": "diverse_beam", "num_groups": 1})
    beam = pipe(model, tok, [qstar("transfer_q", alpha=2.0)], **{**one, "strategy": "beam"})
    for p in PROMPTS[:2]:
        assert sequences(g1.generate(p)) == sequences(beam.generate(p)), p


def test_qstar_superposed_is_refused(model, tok):
    """superposed evaluates its drafts as a drafter's positions, which qstar leaves unchanged: the
    reward would be ignored, so pipeline validation refuses the pair."""
    with pytest.raises(ConfigError, match=r"qstar.*superposed"):
        pipe(model, tok, [qstar()], strategy="superposed")
    with pytest.raises(ConfigError, match=r"qstar.*superposed"):
        pipe(model, tok, [qstar()]).generate("abc", strategy="superposed")


SPAN = {"name": "span", "passage": PASSAGE}


def test_span_diverse_beam(model, tok):
    dbs = pipe(model, tok, [SPAN], **DBS)
    g1 = pipe(model, tok, [SPAN], **{**DBS, "num_groups": 1, "early_stopping": "never"})
    beam = pipe(model, tok, [SPAN], **{**BEAM, "early_stopping": "never"})
    for p in PROMPTS:
        seqs = dbs.generate(p).completions[0].sequences
        assert len(seqs) == 4 and all(s.text and s.text in PASSAGE for s in seqs), p
        assert sequences(g1.generate(p)) == sequences(beam.generate(p)), p


def test_span_superposed(model, tok):
    three = pipe(model, tok, [SPAN], strategy="superposed", num_drafts=3, max_new_tokens=10)
    for p in PROMPTS:
        seqs = three.generate(p).completions[0].sequences
        assert len(seqs) == 3 and all(s.text and s.text in PASSAGE for s in seqs), p
    one = pipe(model, tok, [SPAN], strategy="superposed", num_drafts=1, alpha=0.0, max_new_tokens=10)
    greedy = pipe(model, tok, [SPAN], max_new_tokens=10)
    assert [one.generate(p).token_ids for p in PROMPTS] == [greedy.generate(p).token_ids for p in PROMPTS]


# == pairs ====================================================================================

MOMENTUM = {"name": "momentum"}


@pytest.mark.parametrize("proposer", ["prompt_lookup", "token_recycling"])
def test_speculative_momentum_is_token_identical(flat, tok, proposer):
    """The real speculative plugin: momentum's output, token for token, with drafts accepted."""
    spec = {"name": "speculative", "proposer": proposer, "adaptive": False, "max_draft_tokens": 4}
    plain = pipe(flat, tok, [MOMENTUM], max_new_tokens=32, ignore_eos=True)
    drafted = pipe(flat, tok, [spec, MOMENTUM], max_new_tokens=32, ignore_eos=True)
    greedy = pipe(flat, tok, max_new_tokens=32, ignore_eos=True)
    accepted = departed = 0
    for p in PROMPTS:
        want, res = plain.generate(p), drafted.generate(p)
        assert res.token_ids == want.token_ids, p
        accepted += res.stats.accepted_draft_tokens
        departed += want.token_ids != greedy.generate(p).token_ids
    assert accepted > 0 and departed > 0


GRAMMAR_WORDS = r"(the |a |cat |sat |on |mat )+"


@pytest.mark.parametrize("with_speculative", [False, True])
def test_grammar_momentum_equals_brute_force(flat, tok, with_speculative):
    """Momentum's candidates are the top 5 tokens the grammar allows: equal to the reference that
    masks the logits with the regex, then applies momentum's rule, one full pass per token."""
    V = flat.config.vocab_size
    spec = [{"name": "speculative", "proposer": "prompt_lookup", "adaptive": False}] if with_speculative else []
    pipeline = pipe(flat, tok, spec + [{"name": "grammar", "regex": GRAMMAR_WORDS}, MOMENTUM], max_new_tokens=20)
    grammar_only = pipe(flat, tok, [{"name": "grammar", "regex": GRAMMAR_WORDS}], max_new_tokens=20)

    def process(x, prompt, out):
        return momentum(masked(x, regex_mask(tok, GRAMMAR_WORDS, out, V)), prompt + out)

    departed = 0
    for p in PROMPTS:
        ids = pipeline.encode(p)
        want = brute_greedy(flat, ids, 20, process)
        got = pipeline.generate(ids)
        assert got.token_ids == want, p
        assert regex.fullmatch(GRAMMAR_WORDS, got.text, partial=True), got.text
        departed += got.token_ids != grammar_only.generate(ids).token_ids
    assert departed > 0  # momentum acts inside the grammar


SPAN_REGEX = "[a-z ]*o[a-z ]*"  # the answer holds an 'o'


@pytest.mark.parametrize("with_speculative", [False, True])
def test_grammar_span_masks_are_anded(model, tok, with_speculative):
    """Both masks AND-ed: every output is a span of the passage AND matches the regex, exactly the
    reference that ANDs the two masks by hand; the span mask alone does not ensure the regex."""
    V = model.config.vocab_size
    spec = [{"name": "speculative", "proposer": "prompt_lookup", "adaptive": False}] if with_speculative else []
    both = pipe(model, tok, spec + [SPAN, {"name": "grammar", "regex": SPAN_REGEX}], max_new_tokens=16)
    span_only = pipe(model, tok, [SPAN], max_new_tokens=16)

    def process(x, prompt, out):
        return masked(x, span_mask(tok, PASSAGE, out, V) & regex_mask(tok, SPAN_REGEX, out, V))

    prompts = PROMPTS + ["the zoo", "quick brown", "jumps", "lazy"]
    alone_fails = 0
    for p in prompts:
        ids = both.encode(p)
        got = both.generate(ids)
        assert got.token_ids == brute_greedy(model, ids, 16, process), p
        if got.completions[0].finish_reason == "eos":
            assert got.text in PASSAGE and re.fullmatch(SPAN_REGEX, got.text), got.text
        alone = span_only.generate(ids)
        alone_fails += alone.completions[0].finish_reason == "eos" and not re.fullmatch(SPAN_REGEX, alone.text)
    assert alone_fails > 0


def test_grammar_span_sampling_obeys_both(model, tok):
    dec = {"strategy": "sample", "temperature": 1.5, "max_new_tokens": 40}
    both = pipe(model, tok, [SPAN, {"name": "grammar", "regex": SPAN_REGEX}], **dec)
    for seed in range(8):
        for c in both.generate(PROMPTS, seed=seed).completions:
            assert c.finish_reason == "eos" and c.text in PASSAGE and re.fullmatch(SPAN_REGEX, c.text), c.text


def test_guidance_momentum_equals_brute_force(flat, tok):
    """Guidance, then momentum: momentum's p is the guided distribution. γ = 1 is momentum alone."""
    gamma, n = 2.0, 16
    guided = pipe(flat, tok, [{"name": "guidance", "guidance_scale": gamma}, MOMENTUM], max_new_tokens=n,
                  ignore_eos=True)
    alone = pipe(flat, tok, [MOMENTUM], max_new_tokens=n, ignore_eos=True)
    unit = pipe(flat, tok, [{"name": "guidance", "guidance_scale": 1.0}, MOMENTUM], max_new_tokens=n,
                ignore_eos=True)

    def reference(ids):
        out: list[int] = []
        for _ in range(n):
            out.append(int(momentum(cfg(flat, ids, out, gamma), ids + out).argmax()))
        return out

    differs = 0
    for p in PROMPTS[:3]:
        ids = guided.encode(p)
        got = guided.generate(ids).token_ids
        assert got == reference(ids), p
        assert unit.generate(ids).token_ids == alone.generate(ids).token_ids
        differs += got != alone.generate(ids).token_ids
    assert differs > 0


def test_guidance_qstar_equals_brute_force(model, tok):
    """Guidance, then qstar: the guided log-probabilities are qstar's π_ref (ARGS: its top-k
    candidates and the base of ℓ + w·r). γ = 1 leaves qstar alone unchanged."""
    gamma, n, k, w = 2.5, 12, 4, 1.0
    both = pipe(model, tok, [{"name": "guidance", "guidance_scale": gamma}, qstar(k=k, w=w)], max_new_tokens=n)
    alone = pipe(model, tok, [qstar(k=k, w=w)], max_new_tokens=n)
    unit = pipe(model, tok, [{"name": "guidance", "guidance_scale": 1.0}, qstar(k=k, w=w)], max_new_tokens=n)

    def process(x, prompt, out):
        return args(cfg(model, prompt, out, gamma), tok, out, k, w)

    differs = 0
    for p in PROMPTS[:3]:
        ids = both.encode(p)
        got = both.generate(ids).token_ids
        assert got == brute_greedy(model, ids, n, process), p
        assert unit.generate(ids).token_ids == alone.generate(ids).token_ids
        differs += got != alone.generate(ids).token_ids
    assert differs > 0


@pytest.mark.parametrize("order", ["momentum_first", "qstar_first"])
def test_momentum_qstar_equals_brute_force(flat, tok, order):
    """Either order: the second plugin rescores the first one's output, exactly as written here."""
    n, k = 16, 6
    w = 0.05 if order == "momentum_first" else 0.5  # a reward of 1 against p(v) in [0, 1], or against ℓ
    plugins = [MOMENTUM, qstar(k=k, w=w)] if order == "momentum_first" else [qstar(k=k, w=w), MOMENTUM]
    both = pipe(flat, tok, plugins, max_new_tokens=n, ignore_eos=True)
    alone = pipe(flat, tok, [MOMENTUM], max_new_tokens=n, ignore_eos=True)

    def process(x, prompt, out):
        if order == "momentum_first":
            return args(momentum(x, prompt + out).float(), tok, out, k, w)
        return momentum(args(x, tok, out, k, w).float(), prompt + out)

    differs = 0
    for p in PROMPTS[:3]:
        ids = both.encode(p)
        got = both.generate(ids).token_ids
        assert got == brute_greedy(flat, ids, n, process), p
        differs += got != alone.generate(ids).token_ids
    assert differs > 0


@pytest.mark.parametrize("order", ["momentum_first", "qstar_first"])
def test_momentum_with_zero_weight_qstar_is_momentum(flat, tok, order):
    """qstar with w = 0 over the whole vocabulary passes the logits through: momentum alone."""
    zero = qstar(k=len(tok), w=0.0)
    plugins = [MOMENTUM, zero] if order == "momentum_first" else [zero, MOMENTUM]
    both = pipe(flat, tok, plugins, max_new_tokens=16, ignore_eos=True)
    alone = pipe(flat, tok, [MOMENTUM], max_new_tokens=16, ignore_eos=True)
    for p in PROMPTS:
        assert both.generate(p).token_ids == alone.generate(p).token_ids, p
