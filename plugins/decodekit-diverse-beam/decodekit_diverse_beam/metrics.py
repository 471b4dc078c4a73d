"""Diversity of a list of returned sequences (used by the tests and the benchmark)."""

from __future__ import annotations


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """distinct-n (Li et al., 2016) of a list: unique n-grams / all n-grams, pooled over the list.

    1.0 when no n-gram repeats anywhere in the list; near 1 / len(sequences) when the sequences
    are copies of each other. 0.0 for a list with no n-gram at all.
    """
    grams = [g for s in sequences for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0
