"""decodekit-superposed: Superposed Decoding (Shen et al. 2024) as a decoding strategy.

Pipeline::

    decoding: {strategy: superposed, num_drafts: 3, alpha: 0.5, max_new_tokens: 16}

Returns ``num_drafts`` sequences per prompt (``result.completions[p].sequences``), like beam
search, for one forward pass per step: the drafts' last-token embeddings are mixed by the drafts'
probabilities and fed as one input; each draft expands with the top-k tokens of the shared
distribution and an n-gram interpolation filter keeps the k best of the k² candidates.
"""

from decodekit import hookimpl
from decodekit_superposed.ngram import NGramModel
from decodekit_superposed.strategy import Superposed, SuperposedOptions
from decodekit_superposed.superpose import Candidate, expand, select, superposed_embedding, superposition_weights

__all__ = ["Superposed", "SuperposedOptions", "NGramModel", "Candidate", "expand", "select",
           "superposed_embedding", "superposition_weights"]


@hookimpl
def register_plugins(register):
    register("superposed", Superposed, options=SuperposedOptions, kind="strategy",
             description="superposed decoding: k drafts from one forward pass per step (Shen et al. 2024)")
