"""The model's vocabulary as bytes, read from its own tokenizer (no hub access).

Three token spellings are understood, chosen from the tokenizer's decoder:

* byte-level BPE (GPT-2, Llama-3, SmolLM2, Qwen2): each character of a token stands for one byte
  through GPT-2's printable byte alphabet; a token may be a partial UTF-8 sequence.
* SentencePiece (Llama-2, Mistral): ``▁`` is a space and ``<0xNN>`` is the single byte NN.
* anything else (word-level, character-level): the token string's UTF-8 bytes.

Special tokens (``<|endoftext|>``, ``<pad>``, added special tokens) get ``None``: no grammar
ever allows them; the plugin adds the EOS ids itself when the constraint may end.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def byte_alphabet() -> dict[str, int]:
    """GPT-2's map from printable stand-in characters to the bytes 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


@dataclass
class TokenVocab:
    """``tokens[i]``: token ``i`` as bytes, or None for a special token (never allowed).

    ``size`` = ``len(tokens)`` (the tokenizer's vocabulary; the model's logits may be wider, and
    ids beyond ``size`` are never allowed). ``key`` is a digest of the whole vocabulary, used to
    key on-disk caches.
    """

    tokens: list[bytes | None]
    eos_token_id: int | None
    bos_token_id: int | None
    special_ids: list[int] = field(default_factory=list)
    key: str = ""
    encode: Any = None  # text -> ids, for backends that tokenize forced text

    @property
    def size(self) -> int:
        return len(self.tokens)

    def by_bytes(self) -> dict[bytes, list[int]]:
        """Map each distinct byte string to the ids spelling it (specials and empty tokens left out)."""
        out: dict[bytes, list[int]] = {}
        for i, b in enumerate(self.tokens):
            if b:
                out.setdefault(b, []).append(i)
        return out


def _decoder_kinds(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    dec = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {dec.get("type", "")}
    for sub in dec.get("decoders", []) or []:
        kinds.add(sub.get("type", ""))
        if sub.get("type") == "Replace" and "▁" in json.dumps(sub):
            kinds.add("Metaspace")
    return kinds


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    for i, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return ids


def from_tokenizer(tokenizer: Any) -> TokenVocab:
    """Build the byte vocabulary of a HuggingFace tokenizer (fast or slow)."""
    kinds = _decoder_kinds(tokenizer)
    vocab = tokenizer.get_vocab()  # str -> id, added tokens included
    n = max(max(vocab.values()) + 1, len(tokenizer))
    specials = _special_ids(tokenizer)
    tokens: list[bytes | None] = [None] * n
    if "ByteLevel" in kinds:
        alphabet = byte_alphabet()
        for s, i in vocab.items():
            if i in specials:
                continue
            try:
                tokens[i] = bytes(alphabet[c] for c in s)
            except KeyError:  # an added non-special token written as plain text
                tokens[i] = s.encode("utf-8")
    elif "Metaspace" in kinds or "ByteFallback" in kinds:
        for s, i in vocab.items():
            if i in specials:
                continue
            m = _BYTE_TOKEN.match(s)
            tokens[i] = bytes([int(m.group(1), 16)]) if m else s.replace("▁", " ").encode("utf-8")
    else:
        for s, i in vocab.items():
            if i not in specials:
                tokens[i] = s.encode("utf-8")
    digest = hashlib.sha256()
    for t in tokens:
        digest.update(b"\x00" if t is None else b"\x01" + len(t).to_bytes(2, "little") + t)
    eos = tokenizer.eos_token_id
    return TokenVocab(
        tokens=tokens,
        eos_token_id=int(eos) if eos is not None else None,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        special_ids=sorted(specials),
        key=digest.hexdigest()[:16],
        encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
    )
