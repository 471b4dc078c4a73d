"""decodekit-speculative: speculative decoding that stays exact under every other plugin.

Four proposers (``proposer:``), no training needed:

* ``prompt_lookup``: copy what followed the longest earlier match of the text's end;
* ``token_recycling``: a tree from an adjacency matrix of the target's past top-k candidates;
* ``draft_model``: a smaller causal LM sharing the tokenizer, sampled from its processed q';
* ``layer_skip``: the target itself with some decoder layers skipped.

And one that is trained (shipped for the embedded model; ``python -m
decodekit_speculative.train_heads`` fits it for any local model):

* ``heads``: Medusa / Hydra draft heads on the target's last hidden state (``heads.py``).

Drafts are verified by the pipeline's strategy (``greedy`` / ``sample``) against the processed
target distribution p', so masks and rescorers never break exactness. Draft length and tree size
adapt to the measured cost of a target pass and to the recent acceptance.

Example::

    from decodekit import Pipeline
    pipe = Pipeline("smollm2-135m", decoding={"max_new_tokens": 64},
                    plugins=[{"name": "speculative", "proposer": "prompt_lookup"}])
"""

from __future__ import annotations

from decodekit.hookspecs import hookimpl

from decodekit_speculative.options import SpeculativeOptions
from decodekit_speculative.plugin import Speculative

__all__ = ["Speculative", "SpeculativeOptions"]


@hookimpl
def register_plugins(register):
    register("speculative", Speculative, options=SpeculativeOptions,
             description="speculative decoding (prompt lookup, token recycling, draft model, layer skip, draft heads), "
                         "exact under masks and rescorers")
