"""Branches: extra rows that run inside the target's forward pass (``Generation.attach_branch``).

A test plugin attaches a branch and records, at every target pass, the branch's logits at the
root; they must equal a fresh uncached forward of ``context + generated tokens``.
"""

from __future__ import annotations

import pytest
import torch

from decodekit import Pipeline, hookimpl


class Recorder:
    """Attaches a branch with the given contexts and records its root logits at each step."""

    name = "recorder"

    def __init__(self, contexts):
        self.contexts = contexts
        self.seen: list[torch.Tensor] = []
        self.tokens: list[list[list[int]]] = []

    @hookimpl
    def start(self, generation):
        generation.attach_branch(self, self.contexts)

    @hookimpl
    def rescore(self, positions, logits):
        if positions.is_draft:
            return None
        gen = positions.generation
        other = gen.branch_logits(self)
        assert other.shape == logits.shape
        self.seen.append(other[:, 0].clone())
        self.tokens.append([gen.new_tokens(b) for b in range(gen.num_rows)])
        return None


@torch.inference_mode()
def full_forward_last(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("decoding", [{"strategy": "greedy"}, {"strategy": "beam", "num_beams": 2}])
def test_branch_logits_equal_an_uncached_forward(llama, tok, decoding):
    prompts = ["hello world", "abc"]
    plain = Pipeline(llama, tokenizer=tok, decoding={**decoding, "max_new_tokens": 8})
    ids = [plain.encode(p) for p in prompts]
    k = decoding.get("num_beams", 1)
    contexts = [c for c in ([5, 6, 7], [9]) for _ in range(k)]  # one per row (beams of a prompt alike)
    rec = Recorder(contexts)
    pipe = Pipeline(llama, tokenizer=tok, decoding={**decoding, "max_new_tokens": 8}, plugins=[rec])
    got = pipe.generate(ids)
    # the branch never changes the result
    assert [c.token_ids for c in got.completions] == [c.token_ids for c in plain.generate(ids).completions]
    assert len(rec.seen) == got.stats.target_passes
    for step, (logits, new) in enumerate(zip(rec.seen, rec.tokens)):
        for b, ctx in enumerate(contexts):
            want = full_forward_last(llama, ctx + new[b])
            torch.testing.assert_close(logits[b], want, rtol=1e-4, atol=1e-4, msg=f"step {step} row {b}")


def test_attach_branch_checks_its_arguments(llama, tok):
    class Wrong(Recorder):
        name = "wrong"

    with pytest.raises(Exception, match="one context per row"):
        Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 2}, plugins=[Wrong([[1], [2]])]).generate("hi")
    with pytest.raises(Exception, match="at least one token"):
        Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 2}, plugins=[Wrong([[]])]).generate("hi")


def test_attach_branch_after_start_is_refused(llama, tok):
    class Late(Recorder):
        name = "late"

        @hookimpl
        def start(self, generation):
            pass

        @hookimpl
        def rescore(self, positions, logits):
            return None

        @hookimpl
        def advance(self, generation, decision):
            generation.attach_branch(self, self.contexts)

    with pytest.raises(Exception, match="start hook"):
        Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 3}, plugins=[Late([[1]])]).generate("hi")


def test_branch_logits_without_a_branch_name_the_cause(llama, tok):
    class Absent(Recorder):
        name = "absent"

        @hookimpl
        def start(self, generation):
            pass

    with pytest.raises(Exception, match="attached no branch"):
        Pipeline(llama, tokenizer=tok, decoding={"max_new_tokens": 3}, plugins=[Absent([[1]])]).generate("hi")
