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
"""

from __future__ import annotations

import numpy as np

BUCKETS = (1, 2, 3, 4, 6, 9, 13)  # bucket k holds match lengths in [BUCKETS[k], BUCKETS[k+1])


def bucket(match_len: int) -> int:
    k = 0
    while k + 1 < len(BUCKETS) and match_len >= BUCKETS[k + 1]:
        k += 1
    return k


ANCHOR_WINDOW = (-4, 8)  # a match starting this close to where the last copy would continue is "anchored"


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


def lookup_draft(tokens: list[int], ngram_min: int, ngram_max: int, max_len: int,
                 offset: int | None = None) -> tuple[list[int], int, bool, int | None]:
    """``(draft tokens, match length, anchored, new offset)`` for one row; at most ``max_len`` tokens.

    ``offset``: ``start - T`` of the row's last copy (None at first). While a copy goes on, the
    source and the text advance together, so the copy would now continue at ``T + offset``.
    """
    arr = np.asarray(tokens, dtype=np.int64)
    T = arr.shape[0]
    expected = T + offset if offset is not None else -1
    start, m, anchored = find_match(arr, ngram_min, ngram_max, expected)
    if start < 0:
        return [], 0, False, offset
    return arr[start:start + max_len].tolist(), m, anchored, start - T
