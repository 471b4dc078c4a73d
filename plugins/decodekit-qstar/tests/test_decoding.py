"""Decoding with qstar on a tiny random Llama, rewarded by the count of one character.

The synthetic reward's optimum is known (as many copies of the character as the budget allows),
so "the reward goes up" is a real check; α = 0 / w = 0 must give plain decoding token for token.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import mannwhitneyu

from decodekit import hookimpl
from decodekit.types import Draft

CHAR = "r"


def total(texts, char=CHAR):
    return sum(t.count(char) for t in texts)


@pytest.mark.parametrize("mode, opts", [("args", {"w": 2.0}), ("transfer_q", {"alpha": 2.0})])
def test_reward_goes_up_greedy(make_pipe, entry, prompts, mode, opts):
    plain = make_pipe().generate(prompts).texts
    guided = make_pipe([entry(mode, CHAR, **opts)]).generate(prompts).texts
    assert total(guided) > total(plain)
    assert total(guided) <= 16 * len(prompts)  # the optimum: every token is the character


@pytest.mark.parametrize("mode, opts", [("args", {"w": 2.0}), ("transfer_q", {"alpha": 2.0})])
def test_reward_goes_up_sampling(make_pipe, entry, prompts, mode, opts):
    """One-sided Mann-Whitney U over 4 seeds × 6 prompts each, at significance 0.01."""
    plain, guided = [], []
    for seed in range(4):
        plain += [t.count(CHAR) for t in make_pipe(strategy="sample", seed=seed).generate(prompts).texts]
        pipe = make_pipe([entry(mode, CHAR, **opts)], strategy="sample", seed=seed)
        guided += [t.count(CHAR) for t in pipe.generate(prompts).texts]
    assert sum(guided) > sum(plain)
    assert mannwhitneyu(guided, plain, alternative="greater").pvalue < 0.01


@pytest.mark.parametrize("mode, opts", [("args", {"w": 0.0}), ("transfer_q", {"alpha": 0.0})])
def test_zero_weight_is_plain_greedy(make_pipe, entry, prompts, mode, opts):
    plain = make_pipe().generate(prompts)
    guided = make_pipe([entry(mode, CHAR, **opts)]).generate(prompts)
    assert [c.token_ids for c in guided.completions] == [c.token_ids for c in plain.completions]


@pytest.mark.parametrize("mode, opts", [("args", {"w": 0.0}), ("transfer_q", {"alpha": 0.0})])
def test_zero_weight_is_plain_top_k_sampling(make_pipe, entry, prompts, mode, opts):
    """π ∝ π_ref over the top-k is exactly the sample strategy's top_k: same seed, same tokens."""
    dec = {"strategy": "sample", "temperature": 0.7, "seed": 5}
    plain = make_pipe(top_k=4, **dec).generate(prompts)
    guided = make_pipe([entry(mode, CHAR, k=4, **opts)], **dec).generate(prompts)
    assert [c.token_ids for c in guided.completions] == [c.token_ids for c in plain.completions]


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_same_baseline_reward_is_direct_transfer(make_pipe, entry, prompts, strategy):
    spec = {"name": "count", "text": CHAR}
    direct = make_pipe([entry(alpha=2.0)], strategy=strategy).generate(prompts)
    indirect = make_pipe([entry(alpha=2.0, baseline_reward=spec, beta=0.1)], strategy=strategy).generate(prompts)
    assert [c.token_ids for c in indirect.completions] == [c.token_ids for c in direct.completions]


def test_indirect_transfer_changes_the_estimate(make_pipe, entry, prompts):
    """r_BL rewarding the same character makes r − r_BL = 0 (identity); rewarding another does not."""
    direct = make_pipe([entry(alpha=3.0, num_rollouts=4)], strategy="sample").generate(prompts)
    other = {"name": "count", "text": "m"}
    tilted = make_pipe([entry(alpha=3.0, num_rollouts=4, baseline_reward=other, beta=0.2)],
                       strategy="sample").generate(prompts)
    assert [c.token_ids for c in tilted.completions] != [c.token_ids for c in direct.completions]


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
@pytest.mark.parametrize("mode", ["args", "transfer_q"])
def test_batch_equals_singles(make_pipe, entry, prompts, mode, strategy):
    pipe = make_pipe([entry(mode, CHAR)], strategy=strategy, seed=3)
    batch = pipe.generate(prompts)
    for p, c in zip(prompts, batch.completions):
        assert pipe.generate(p).token_ids == c.token_ids


def test_seeded_runs_repeat(make_pipe, entry, prompts):
    pipe = make_pipe([entry(alpha=2.0)], strategy="sample", seed=11)
    assert pipe.generate(prompts).texts == pipe.generate(prompts).texts


def test_every_m_tokens_leaves_the_others_plain(make_pipe, entry, prompts, model, tok):
    """With every=3, tokens at generated positions 1, 2, 4, 5, ... are plain greedy's choice."""
    pipe = make_pipe([entry(alpha=50.0, every=3)], max_new_tokens=9)
    plain_steered_differently = False
    for p in prompts:
        ids = tok(p)["input_ids"]
        out = pipe.generate(ids).token_ids
        for g, t in enumerate(out):
            with torch.no_grad():
                best = int(model(input_ids=torch.tensor([ids + out[:g]])).logits[0, -1].argmax())
            if g % 3:
                assert t == best
            elif t != best:
                plain_steered_differently = True
    assert plain_steered_differently  # the scored positions did change something


class NoRepeat:
    """A path-dependent mask: never the token just before (so no doubled character).

    It also bans <pad>, <bos> and <unk>, which decode to nothing and could hide a doubled pair.
    """

    name = "no_repeat"

    @hookimpl
    def mask(self, positions, logits):
        allowed = torch.ones_like(logits, dtype=torch.bool)
        allowed[..., [0, 2, 3]] = False
        for i in range(len(positions)):
            for j in range(positions.length(i)):
                allowed[i, j, positions.prefix(i, j)[-1]] = False
        return allowed


def doubled(text):
    return any(a == b for a, b in zip(text, text[1:]))


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """A ``callable`` reward (count of CHAR) that records every batch of texts it is given."""
    (tmp_path / "qstar_recorder.py").write_text(
        "calls = []\n"
        "def reward(texts):\n"
        "    calls.append(list(texts))\n"
        f"    return [t.count({CHAR!r}) for t in texts]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("qstar_recorder")
    yield mod
    import sys

    sys.modules.pop("qstar_recorder", None)


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_rollouts_respect_masks(make_pipe, entry, prompts, recorder, strategy):
    spec = {"name": "callable", "callable": "qstar_recorder:reward", "batched": True}
    plugins = [entry(alpha=2.0, reward=spec, reward_text="full"), NoRepeat()]
    raw = [p.replace(" ", "") for p in prompts]  # prompts without doubled characters either
    raw = [p for p in raw if not doubled(p)]
    result = make_pipe(plugins, strategy=strategy).generate(raw)
    for p, text in zip(raw, result.texts):
        assert not doubled(p + text)
    texts = [t for call in recorder.calls for t in call]
    assert len(texts) > 100
    assert not any(doubled(t) for t in texts)  # every rollout obeyed the mask along its own path
    plain = make_pipe([NoRepeat()], strategy=strategy).generate(raw)
    assert total(result.texts) > total(plain.texts)


@pytest.mark.parametrize("baseline", ["self", "other"])
def test_greedy_rollouts_match_an_uncached_reference(make_pipe, entry, prompts, recorder, model, tok,
                                                     baseline, tmp_path):
    """Rollouts at temperature 0 equal a plain argmax loop over full forwards of ρ_BL (no cache)."""
    from decodekit.testing import tiny_model

    rho = model
    opts = {}
    if baseline == "other":
        rho = tiny_model("llama", tok, seed=7)
        rho.save_pretrained(tmp_path / "bl")
        tok.save_pretrained(tmp_path / "bl")
        opts["baseline"] = str(tmp_path / "bl")
    spec = {"name": "callable", "callable": "qstar_recorder:reward", "batched": True}
    R, H, N = 2, 3, 6
    pipe = make_pipe([entry(alpha=2.0, reward=spec, rollout_temperature=0.0, num_rollouts=R, rollout_len=H,
                            **opts)], max_new_tokens=N, ignore_eos=True)
    prompt = tok(prompts[1])["input_ids"]
    out = pipe.generate(prompt).token_ids
    assert len(recorder.calls) == N

    def greedy(ids, n):
        ids = list(ids)
        for _ in range(n):
            with torch.no_grad():
                ids.append(int(rho(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        return ids

    for g, texts in enumerate(recorder.calls):
        prefix = prompt + out[:g]
        with torch.no_grad():
            cands = torch.topk(model(input_ids=torch.tensor([prefix])).logits[0, -1], 4).indices.tolist()
        h = min(H, N - g - 1)
        want = [tok.decode(greedy(prefix + [c], h)[len(prompt):], skip_special_tokens=True)
                for c in cands for _ in range(R)]
        assert sorted(texts) == sorted(want)


class OracleDrafter:
    """Proposes the next 3 tokens of a known output, the third one wrong: 2 accepted per step."""

    name = "oracle"

    def __init__(self, outputs, prompt_lengths):
        self.outputs, self.prompt_lengths = outputs, prompt_lengths

    @hookimpl
    def propose(self, generation):
        drafts = []
        for b, toks in enumerate(generation.tokens):
            done = len(toks) - self.prompt_lengths[b]
            nxt = self.outputs[b][done:done + 3]
            if len(nxt) == 3:
                nxt[2] = (nxt[2] + 1) % 40 + 4
            drafts.append(Draft.chain(nxt) if nxt else None)
        return drafts


@pytest.mark.parametrize("mode", ["args", "transfer_q"])
def test_drafts_give_the_same_tokens(make_pipe, entry, prompts, tok, mode):
    """Speculation is exact: every draft position is scored along its own path."""
    ids = [tok(p)["input_ids"] for p in prompts[:4]]
    plugins = [entry(mode, CHAR, alpha=2.0, w=2.0), NoRepeat()]
    ref = make_pipe(plugins).generate(ids)
    outputs = [list(c.token_ids) for c in ref.completions]
    drafter = OracleDrafter(outputs, [len(i) for i in ids])
    spec = make_pipe([drafter] + plugins).generate(ids)
    assert [c.token_ids for c in spec.completions] == outputs
    assert spec.stats.accepted_draft_tokens > 0
    assert spec.stats.target_passes < ref.stats.target_passes


def test_progress_bar(make_pipe, entry, capsys):
    make_pipe([entry(progress=True)], max_new_tokens=4).generate("hello")
    err = capsys.readouterr().err
    assert "qstar rollouts" in err
    make_pipe([entry()], max_new_tokens=4).generate("hello")  # not a tty: off by default
    assert "qstar rollouts" not in capsys.readouterr().err
    make_pipe([entry(progress=False)], max_new_tokens=4).generate("hello")
    assert "qstar rollouts" not in capsys.readouterr().err


class NoSpecials:
    """Bans <pad>, <eos>, <bos>, <unk>: every token then shows in the decoded text."""

    name = "no_specials"

    @hookimpl
    def mask(self, positions, logits):
        allowed = torch.ones_like(logits, dtype=torch.bool)
        allowed[..., [0, 1, 2, 3]] = False
        return allowed


def test_rollout_cache_follows_beam_reordering(make_pipe, entry, recorder, model, tok):
    """Under beam search every greedy rollout token is the argmax after its own full prefix."""
    spec = {"name": "callable", "callable": "qstar_recorder:reward", "batched": True}
    H, N = 3, 6
    pipe = make_pipe([entry(alpha=2.0, reward=spec, reward_text="full", rollout_temperature=0.0,
                            num_rollouts=1, rollout_len=H), NoSpecials()],
                     strategy="beam", num_beams=3, max_new_tokens=N)
    pipe.generate(["hello", "the c"], raw=True)
    assert len(recorder.calls) == N
    checked = 0
    for g, texts in enumerate(recorder.calls):
        h = min(H, N - g - 1)
        for text in texts:
            ids = tok(text)["input_ids"]
            for cut in range(len(ids) - h, len(ids)):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids[:cut]])).logits[0, -1]
                logits[[0, 1, 2, 3]] = float("-inf")
                assert ids[cut] == int(logits.argmax())
                checked += 1
    assert checked > 100
