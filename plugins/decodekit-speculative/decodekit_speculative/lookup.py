"""Prompt lookup: continue the text by copying what followed the longest earlier match of its end.

For a row's committed tokens ``t[0..T-1]`` (prompt and generated text) find the earlier position
``e < T - 1`` whose suffix ``t[..e]`` agrees longest with the row's suffix ``t[..T-1]`` (ties go
to the most recent ``e``), and draft ``t[e+1 : e+1+L]``. The match length ``m`` (capped at
``ngram_max``) says how reliable the copy is; the plugin keeps acceptance statistics per
:func:`bucket` of ``m`` so that a long match may draft far and a one-token match rarely.

Copying with edits (fixing typos, renaming a variable) breaks the match at every edit, after
which the suffix is short and occurs in many places. The row's copy *offset* (where its last
copy came from, relative to its length) says where the copy would continue; a match there is
*anchored* and kept in statistics of its own, as it is far more reliable than a random one.

Right after an edit there is often no match at all: the corrected word (``committee`` for
``com|itt|ee``) occurs nowhere earlier, and neither does the row's last token. The copy has then
most likely moved past the changed word, so the draft *resumes* the source at the first word start
at or after where the copy would continue (input-guided aggressive decoding re-aligns the same way
after a mismatch). Resumed drafts have statistics of their own too. Word starts come from the
tokenizer (:func:`word_starts`); without one, nothing is resumed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

BUCKETS = (1, 2, 3, 4, 6, 9, 13)  # bucket k holds match lengths in [BUCKETS[k], BUCKETS[k+1])


def bucket(match_len: int) -> int:
    k = 0
    while k + 1 < len(BUCKETS) and match_len >= BUCKETS[k + 1]:
        k += 1
    return k


ANCHOR_WINDOW = (-4, 8)  # a match starting this close to where the last copy would continue is "anchored"
RESUME_KEY = "resume"    # statistics key of resumed drafts (matches use (bucket, anchored))
WORD_MARKERS = "\u0120\u010a\u0109\u2581"  # byte-level BPE's space / newline / tab, SentencePiece's space


class LookupDraft(NamedTuple):
    """One row's prompt-lookup draft. ``offset``: the row's copy offset after this lookup."""

    tokens: list[int]
    match_len: int      # 0 when nothing matched (empty, or resumed)
    anchored: bool      # the match (or the resumed copy) continues the row's last copy
    resumed: bool       # no match: the copy resumes at the next word start
    offset: int | None

    @property
    def key(self) -> tuple[int, bool] | str:
        """Which acceptance statistics this draft belongs to."""
        return RESUME_KEY if self.resumed else (bucket(self.match_len), self.anchored)


def word_starts(tokenizer, vocab_size: int) -> np.ndarray:
    """``[vocab_size]`` bool: whether a token begins a word, i.e. its text starts with white space
    (as a byte-level BPE or SentencePiece marker) or with a character that is not a letter or
    digit. Ids beyond the tokenizer's vocabulary are False."""
    out = np.zeros(vocab_size, dtype=bool)
    n = min(vocab_size, len(tokenizer))
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
        if piece:
            c = piece[0]
            out[i] = c in WORD_MARKERS or c.isspace() or not c.isalnum()
    return out


def find_match(tokens: np.ndarray, ngram_min: int, ngram_max: int, expected: int = -1) -> tuple[int, int, bool]:
    """``(start, m, anchored)``: the continuation starts at ``tokens[start]``; ``m`` is the match length.

    ``tokens``: ``[T]`` int array. ``expected``: where the row's last copy would continue now
    (-1: unknown). Among the longest matches, the one starting closest to ``expected`` (within
    ``ANCHOR_WINDOW``) wins and is *anchored*: the text is still copying the same source, only
    past a changed word; otherwise the most recent one wins. Returns ``(-1, 0, False)`` when no
    suffix of at least ``ngram_min`` tokens occurs earlier with a continuation.
    """
    T = tokens.shape[0]
    if T < 2:
        return -1, 0, False
    # candidates e: earlier positions holding the last token, with at least one token after them
    ends = np.nonzero(tokens[:-1] == tokens[-1])[0]  # [K]
    m = 1
    while ends.size and m < ngram_max and T - 1 - m >= 0:
        ok = ends - m >= 0
        nxt = ends[ok]
        nxt = nxt[tokens[nxt - m] == tokens[T - 1 - m]]
        if nxt.size == 0:
            break
        ends, m = nxt, m + 1
    if ends.size == 0 or m < ngram_min:
        return -1, 0, False
    starts = ends + 1
    if expected >= 0:
        d = starts - expected
        near = (d >= ANCHOR_WINDOW[0]) & (d <= ANCHOR_WINDOW[1])
        if near.any():
            best = np.argmin(np.where(near, np.abs(d), np.iinfo(np.int64).max))
            return int(starts[best]), m, True
    return int(starts[-1]), m, False  # the most recent of the longest matches


def resume_point(tokens: np.ndarray, expected: int, starts: np.ndarray) -> int:
    """The first word start at or after ``expected``, at most ``ANCHOR_WINDOW[1]`` tokens on and
    with a token after it in ``tokens`` (``[T]``); -1 if there is none."""
    T = tokens.shape[0]
    if expected < 0:
        return -1
    for p in range(expected, min(expected + ANCHOR_WINDOW[1] + 1, T - 1)):
        if starts[tokens[p]]:
            return p
    return -1


def lookup_draft(tokens: list[int], ngram_min: int, ngram_max: int, max_len: int,
                 offset: int | None = None, starts: np.ndarray | None = None) -> LookupDraft:
    """One row's draft of at most ``max_len`` tokens.

    ``offset``: ``start - T`` of the row's last copy (None at first). While a copy goes on, the
    source and the text advance together, so the copy would now continue at ``T + offset``.
    ``starts``: :func:`word_starts` of the vocabulary, to resume a copy when nothing matches
    (None: never resume).
    """
    arr = np.asarray(tokens, dtype=np.int64)
    T = arr.shape[0]
    expected = T + offset if offset is not None else -1
    start, m, anchored = find_match(arr, ngram_min, ngram_max, expected)
    if start >= 0:
        return LookupDraft(arr[start:start + max_len].tolist(), m, anchored, False, start - T)
    start = resume_point(arr, expected, starts) if starts is not None else -1
    if start >= 0:
        return LookupDraft(arr[start:start + max_len].tolist(), 0, True, True, start - T)
    return LookupDraft([], 0, False, False, offset)
