"""Every output is a span of the passage, under any strategy, seed and batch."""

import random

import pytest

from decodekit import Pipeline



@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_outputs_are_substrings(tiny, tok, strategy, passage):
    PASSAGE = passage
    _, model = tiny
    rng = random.Random(1)
    prompts = ["".join(rng.choice("abcdefgh ?") for _ in range(rng.randint(1, 8))) for _ in range(6)]
    pipe = Pipeline(model, tokenizer=tok, decoding={"strategy": strategy, "max_new_tokens": 10},
                    plugins=[{"name": "span", "passage": PASSAGE}])
    for seed in range(5):
        for c in pipe.generate(prompts, seed=seed).completions:
            assert c.text and c.text in PASSAGE


def test_batch_equals_one_by_one(tok, tiny, passage):
    PASSAGE = passage
    _, model = tiny
    prompts = ["ab", "what jumps?", "z"]
    for search in ("greedy", "exact"):
        pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 6},
                        plugins=[{"name": "span", "passage": PASSAGE, "search": search}])
        batch = pipe.generate(prompts).completions
        assert [c.token_ids for c in batch] == [pipe.generate(p).token_ids for p in prompts]


def test_beam_search_keeps_every_beam_a_span(tok, tiny, passage):
    PASSAGE = passage
    _, model = tiny
    pipe = Pipeline(model, tokenizer=tok,
                    decoding={"strategy": "beam", "num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 5},
                    plugins=[{"name": "span", "passage": PASSAGE}])
    for s in pipe.generate("fox?").completions[0].sequences:
        assert s.text in PASSAGE


@pytest.mark.embedded
def test_embedded_model_answers_with_a_span(smol, embedded_passage):
    EMBEDDED_PASSAGE = embedded_passage
    from decodekit_span import sequence_logprob

    q = (f"Passage: {EMBEDDED_PASSAGE}\nQuestion: When was the Eiffel Tower completed? "
         "Answer with words from the passage.")
    greedy = Pipeline(smol.model, tokenizer=smol.tokenizer, decoding={"max_new_tokens": 6},
                      plugins=[{"name": "span", "passage": EMBEDDED_PASSAGE}]).generate(q)
    exact = Pipeline(smol.model, tokenizer=smol.tokenizer, decoding={"max_new_tokens": 6},
                     plugins=[{"name": "span", "passage": EMBEDDED_PASSAGE, "search": "exact"}]).generate(q)
    assert greedy.text in EMBEDDED_PASSAGE and exact.text in EMBEDDED_PASSAGE
    assert exact.text == "1889" and exact.completions[0].finish_reason == "eos"
    ids = smol.encode(q)
    if greedy.completions[0].finish_reason == "eos":
        assert sequence_logprob(smol.model, ids, exact.token_ids) >= sequence_logprob(smol.model, ids, greedy.token_ids) - 1e-4


def test_exact_under_speculative_drafts(tok, tiny, passage):
    """Prompt-lookup drafts copy the passage from the prompt: the mask walked along drafts must
    give the same greedy answer, token for token, as plain masked decoding."""
    pytest.importorskip("decodekit_speculative")
    _, model = tiny
    prompts = [f"{passage} q{i}: {passage[i:i + 9]}" for i in range(0, 30, 6)]
    span = {"name": "span", "passage": passage}
    plain = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 12}, plugins=[span])
    spec = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 12},
                    plugins=[{"name": "speculative", "proposer": "prompt_lookup", "adaptive": False}, span])
    got = spec.generate(prompts)
    assert [c.token_ids for c in got.completions] == [c.token_ids for c in plain.generate(prompts).completions]
    assert got.stats.drafted_tokens > 0
