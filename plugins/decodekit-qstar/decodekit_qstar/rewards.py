"""Reward functions registered through ``register_rewards``: ``reward(texts) -> scores``.

Every factory has the signature ``factory(options, pipeline)`` and returns a callable mapping a
batch of texts (``list[str]``) to a batch of floats. None of them downloads anything.

=============  ==================================================================================
name           score of one text
=============  ==================================================================================
count          how many times ``text:`` occurs (the synthetic test reward; its optimum is known)
keywords       fraction of ``keywords:`` that occur as whole words (keyword coverage, in [0, 1])
readability    Flesch reading ease / 100 (short sentences of short words score higher)
judge          log P("yes") from a causal LM asked ``question:`` about the text (default smollm2-135m)
classifier     one logit of a local HF sequence-classification model directory (``path:``)
callable       any Python function ``"module:function"`` (``text -> float``, or batched)
=============  ==================================================================================
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

Reward = Callable[[list[str]], list[float]]


# -- count: the synthetic reward ----------------------------------------------------------------


class CountOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, description="the substring (a character, a word) to count")


def count_reward(options: CountOptions, pipeline: Any = None) -> Reward:
    """``r(text) = text.count(options.text)``. Example: ``count_reward(CountOptions(text="e"))(["tee"])`` → ``[2.0]``."""
    needle = options.text
    return lambda texts: [float(t.count(needle)) for t in texts]


# -- keywords: keyword coverage -----------------------------------------------------------------


class KeywordsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keywords: list[str] = Field(..., min_length=1, description="words or phrases the text should contain")
    case_sensitive: bool = False
    whole_words: bool = Field(True, description="match at word boundaries only (so 'sun' misses 'sunday')")


def keywords_reward(options: KeywordsOptions, pipeline: Any = None) -> Reward:
    """Fraction of the keywords present in the text: ``|{k : k in text}| / |keywords|``."""
    flags = 0 if options.case_sensitive else re.IGNORECASE
    patterns = []
    for k in options.keywords:
        if not k.strip():
            raise ValueError("keywords: every keyword must contain a non-space character")
        body = re.escape(k.strip())
        patterns.append(re.compile(rf"(?<!\w){body}(?!\w)" if options.whole_words else body, flags))

    def reward(texts: list[str]) -> list[float]:
        return [sum(1 for p in patterns if p.search(t)) / len(patterns) for t in texts]

    return reward


# -- readability: Flesch reading ease -----------------------------------------------------------


class ReadabilityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(0.01, gt=0, description="multiply the Flesch score (about 0..120) by this")


_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+")


def syllables(word: str) -> int:
    """Heuristic syllable count: vowel groups, minus a silent final 'e'; at least 1."""
    w = word.lower()
    groups = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    return max(1, groups)


def flesch_reading_ease(text: str) -> float:
    """``206.835 − 1.015 · words/sentences − 84.6 · syllables/words``; 0 for a text with no word."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, len([s for s in _SENTENCE_END.split(text) if _WORD.search(s)]))
    syl = sum(syllables(w) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syl / len(words)


def readability_reward(options: ReadabilityOptions, pipeline: Any = None) -> Reward:
    """Flesch reading ease times ``scale`` (so about 0..1.2 by default)."""
    return lambda texts: [options.scale * flesch_reading_ease(t) for t in texts]


# -- judge: a causal LM answering a yes/no rubric question --------------------------------------


class JudgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2-135m", description="alias or local directory of the judging causal LM")
    question: str = Field("Is this response helpful, clear and polite?", min_length=1)
    yes: list[str] = Field(["Yes", "yes", " Yes", " yes"], min_length=1,
                           description="answers counted as yes (each one's first token)")
    no: list[str] = Field(["No", "no", " No", " no"], min_length=1)
    score: str = Field("logp_yes", pattern="^(logp_yes|log_odds)$",
                       description="logp_yes: log P(yes); log_odds: log P(yes) − log P(no)")
    batch_size: int = Field(16, ge=1)


class Judge:
    """``r(text) = log Σ_{y ∈ yes} P(y | rubric prompt about text)`` under a causal LM.

    The prompt is the judge's chat template (when it has one) with the user message
    ``"{question}\\n\\nResponse:\\n{text}\\n\\nAnswer yes or no."``; the score reads the next-token
    distribution right after the assistant turn starts (one forward pass, no generation).
    """

    def __init__(self, options: JudgeOptions, pipeline: Any = None):
        from decodekit.models import load

        device = str(pipeline.device) if pipeline is not None else "cpu"
        self.model, self.tokenizer = load(options.model, device=device)
        self.options = options
        self.yes_ids = self._first_ids(options.yes, "yes")
        self.no_ids = self._first_ids(options.no, "no")

    def _first_ids(self, words: list[str], field: str) -> list[int]:
        ids = []
        for w in words:
            toks = self.tokenizer(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"judge: {field}: {w!r} encodes to no token")
            ids.append(toks[0])
        return sorted(set(ids))

    def prompt_ids(self, text: str) -> list[int]:
        q = self.options.question
        tok = self.tokenizer
        body = f"{q}\n\nResponse:\n{text}\n\nAnswer yes or no."
        if getattr(tok, "chat_template", None):
            s = tok.apply_chat_template([{"role": "user", "content": body}], add_generation_prompt=True,
                                        tokenize=False)
            return tok(s, add_special_tokens=False)["input_ids"]
        return tok(body + "\nAnswer:", add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        bs = self.options.batch_size
        for start in range(0, len(texts), bs):
            out.extend(self._batch([self.prompt_ids(t) for t in texts[start:start + bs]]))
        return out

    def _batch(self, prompts: list[list[int]]) -> list[float]:
        # Left-pad to [n, L]; positions count real tokens only so padding does not shift them.
        n, L = len(prompts), max(len(p) for p in prompts)
        dev = next(self.model.parameters()).device
        ids = torch.zeros((n, L), dtype=torch.long)
        mask = torch.zeros((n, L), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, L - len(p):] = torch.tensor(p)
            mask[i, L - len(p):] = 1
        pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                            logits_to_keep=1).logits[:, -1].float()  # [n, V]
        logp = torch.log_softmax(logits, dim=-1)
        yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)  # [n]: log P(any yes token)
        if self.options.score == "log_odds":
            yes = yes - torch.logsumexp(logp[:, self.no_ids], dim=-1)
        return yes.cpu().tolist()


# -- classifier: a local HF sequence-classification model ---------------------------------------


class ClassifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="local directory of an AutoModelForSequenceClassification + tokenizer")
    label: int | str | None = Field(None, description="label index or name to score; default: the last label")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(512, ge=1)


class Classifier:
    """``r(text) = logit_label(text)`` of a sequence-classification model (e.g. a reward model)."""

    def __init__(self, options: ClassifierOptions, pipeline: Any = None):
        from pathlib import Path

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(options.path).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"classifier: path {options.path!r} is not a HuggingFace model directory "
                             f"(no config.json); nothing is downloaded")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if pipeline is not None:
            self.model.to(pipeline.device)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.label = self._label_index(options.label)
        self.options = options

    def _label_index(self, label: int | str | None) -> int:
        n = self.model.config.num_labels
        if label is None:
            return n - 1
        if isinstance(label, str):
            table = self.model.config.label2id or {}
            if label not in table:
                raise ValueError(f"classifier: label {label!r} not among {sorted(table)}")
            return int(table[label])
        if not 0 <= label < n:
            raise ValueError(f"classifier: label {label} out of range for {n} labels")
        return label

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        dev = next(self.model.parameters()).device
        bs = self.options.batch_size
        for start in range(0, len(texts), bs):
            chunk = [t if t else " " for t in texts[start:start + bs]]  # an empty text still gets a score
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.options.max_length)
            logits = self.model(**{k: v.to(dev) for k, v in enc.items()}).logits.float()  # [n, num_labels]
            out.extend(logits[:, self.label].cpu().tolist())
        return out


# -- callable: any Python function --------------------------------------------------------------


class CallableOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callable: str = Field(..., description='"package.module:function"')
    batched: bool = Field(False, description="the function takes list[str] and returns list[float]")


def import_callable(spec: str) -> Callable[..., Any]:
    """``"pkg.mod:attr.sub"`` → the object, with errors that say what is wrong."""
    if spec.count(":") != 1:
        raise ValueError(f'callable: expected "module:function", got {spec!r}')
    mod_name, attr = spec.split(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"callable: cannot import module {mod_name!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"callable: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"callable: {spec!r} is not callable")
    return obj


def callable_reward(options: CallableOptions, pipeline: Any = None) -> Reward:
    fn = import_callable(options.callable)
    if options.batched:
        def batched(texts: list[str]) -> list[float]:
            scores = list(fn(texts))
            if len(scores) != len(texts):
                raise ValueError(f"callable {options.callable!r} returned {len(scores)} scores for {len(texts)} texts")
            return [float(s) for s in scores]
        return batched
    return lambda texts: [float(fn(t)) for t in texts]


REWARDS: list[tuple[str, Callable[..., Reward], type[BaseModel], str]] = [
    ("count", count_reward, CountOptions, "synthetic: occurrences of a substring (for tests)"),
    ("keywords", keywords_reward, KeywordsOptions, "fraction of given keywords present (offline)"),
    ("readability", readability_reward, ReadabilityOptions, "Flesch reading ease / 100 (offline)"),
    ("judge", Judge, JudgeOptions, "log P(yes) of a causal-LM judge to a rubric question (smollm2-135m)"),
    ("classifier", Classifier, ClassifierOptions, "a logit of a local HF sequence-classification model"),
    ("callable", callable_reward, CallableOptions, 'any Python function "module:function"'),
]


def check_scores(name: str, scores: list[float], n: int) -> torch.Tensor:
    """The reward's output as a float64 tensor ``[n]``; a wrong length or a non-finite score is an error."""
    if len(scores) != n:
        raise ValueError(f"reward {name!r} returned {len(scores)} scores for {n} texts")
    t = torch.tensor([float(s) for s in scores], dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"reward {name!r} returned a NaN or infinite score")
    return t
