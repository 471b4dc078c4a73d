"""Each shipped reward against values computed by hand or by a direct model forward."""

from __future__ import annotations

import textwrap

import pytest
import torch

from decodekit_qstar.rewards import (
    CallableOptions,
    Classifier,
    ClassifierOptions,
    CountOptions,
    Judge,
    JudgeOptions,
    KeywordsOptions,
    ReadabilityOptions,
    callable_reward,
    count_reward,
    flesch_reading_ease,
    keywords_reward,
    readability_reward,
    syllables,
)


def test_count():
    r = count_reward(CountOptions(text="e"))
    assert r(["", "e", "tree here"]) == [0.0, 1.0, 4.0]


def test_keywords_coverage_whole_words_and_case():
    r = keywords_reward(KeywordsOptions(keywords=["sun", "blue sky", "Sea"]))
    assert r(["The SUN and the sea.", "sunday", "a blue sky, sun, sea", ""]) == [2 / 3, 0.0, 1.0, 0.0]
    r_sub = keywords_reward(KeywordsOptions(keywords=["sun"], whole_words=False, case_sensitive=True))
    assert r_sub(["sunday", "SUN"]) == [1.0, 0.0]


def test_readability_matches_the_flesch_formula():
    assert [syllables(w) for w in ["cat", "table", "make", "reading", "a"]] == [1, 2, 1, 2, 1]
    text = "The cat sat. It was happy."  # 6 words, 2 sentences, syllables 1+1+1+1+1+2 = 7
    expected = 206.835 - 1.015 * 6 / 2 - 84.6 * 7 / 6
    assert flesch_reading_ease(text) == pytest.approx(expected)
    r = readability_reward(ReadabilityOptions())
    easy, hard = r(["The cat sat. It ran.", "Incomprehensibility characterizes institutionalization."])
    assert easy > hard
    assert r([""]) == [0.0]


def test_callable_plain_and_batched(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def length(text):
            return len(text)
        def lengths(texts):
            return [len(t) * 2 for t in texts]
        def wrong(texts):
            return [1.0]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert callable_reward(CallableOptions(callable="my_rewards:length"))(["ab", ""]) == [2.0, 0.0]
    assert callable_reward(CallableOptions(callable="my_rewards:lengths", batched=True))(["ab"]) == [4.0]
    with pytest.raises(ValueError, match="returned 1 scores for 2 texts"):
        callable_reward(CallableOptions(callable="my_rewards:wrong", batched=True))(["a", "b"])
    with pytest.raises(ValueError, match="has no attribute"):
        callable_reward(CallableOptions(callable="my_rewards:missing"))
    with pytest.raises(ValueError, match='expected "module:function"'):
        callable_reward(CallableOptions(callable="my_rewards.length"))


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from decodekit.testing import tiny_tokenizer

    path = tmp_path_factory.mktemp("cls")
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0,
                      id2label={0: "bad", 1: "ok", 2: "good"}, label2id={"bad": 0, "ok": 1, "good": 2})
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_classifier_batched_equals_one_text_forward(classifier_dir):
    from transformers import AutoModelForSequenceClassification

    texts = ["a short one", "a much longer text than the first", "x"]
    reward = Classifier(ClassifierOptions(path=str(classifier_dir), label="ok", batch_size=2), None)
    got = reward(texts)
    ref_model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    for text, score in zip(texts, got):
        ids = reward.tokenizer(text, return_tensors="pt")["input_ids"]  # one text: no padding at all
        with torch.no_grad():
            want = float(ref_model(input_ids=ids).logits[0, 1])
        assert score == pytest.approx(want, abs=1e-4)
    default = Classifier(ClassifierOptions(path=str(classifier_dir)), None)
    assert default.label == 2  # the last label


def test_classifier_errors(classifier_dir, tmp_path):
    with pytest.raises(ValueError, match="not a HuggingFace model directory"):
        Classifier(ClassifierOptions(path=str(tmp_path)), None)
    with pytest.raises(ValueError, match="label 'great' not among"):
        Classifier(ClassifierOptions(path=str(classifier_dir), label="great"), None)
    with pytest.raises(ValueError, match="out of range"):
        Classifier(ClassifierOptions(path=str(classifier_dir), label=3), None)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from decodekit.testing import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("judge")
    tok = tiny_tokenizer()
    tiny_model("llama", tok, seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_judge_is_log_prob_of_yes_from_a_plain_forward(judge_dir):
    judge = Judge(JudgeOptions(model=str(judge_dir), question="is it good?", yes=["y"], no=["n"],
                               batch_size=2), None)
    texts = ["good", "a longer answer here", "bad"]
    got = judge(texts)
    y = judge.tokenizer("y", add_special_tokens=False)["input_ids"][0]
    for text, score in zip(texts, got):
        ids = torch.tensor([judge.prompt_ids(text)])
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, -1].float(), dim=-1)
        assert score == pytest.approx(float(logp[y]), abs=1e-4)
        assert score < 0
    odds = Judge(JudgeOptions(model=str(judge_dir), question="is it good?", yes=["y"], no=["n"],
                              score="log_odds"), None)(texts)
    n = judge.tokenizer("n", add_special_tokens=False)["input_ids"][0]
    ids = torch.tensor([judge.prompt_ids(texts[0])])
    with torch.no_grad():
        logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, -1].float(), dim=-1)
    assert odds[0] == pytest.approx(float(logp[y] - logp[n]), abs=1e-4)


@pytest.mark.embedded
def test_judge_on_the_embedded_model():
    judge = Judge(JudgeOptions(question="Is this sentence about the weather?"), None)
    on, off = judge(["It is sunny and warm today, with a light breeze.", "I like to eat pasta with cheese."])
    assert on < 0 and off < 0
    assert on > off
