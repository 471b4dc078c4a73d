"""decodekit-diverse-beam: Diverse Beam Search (Vijayakumar et al., 2016) as a decoding strategy.

Pipeline::

    decoding: {strategy: diverse_beam, num_beams: 6, num_groups: 3, diversity_penalty: 1.0,
               max_new_tokens: 32}

The ``num_beams`` beams of each prompt are split into ``num_groups`` groups decoded in order at
every step; a group's scores are lowered by ``diversity_penalty`` times the number of beams of
earlier groups that picked the same token at this step (Hamming diversity). The semantics follow
HF transformers v4's ``_group_beam_search`` with ``HammingDiversityLogitsProcessor``.
"""

from decodekit import hookimpl
from decodekit_diverse_beam.diversity import DIVERSITY_TERMS, hamming_penalty
from decodekit_diverse_beam.hypotheses import Hypotheses
from decodekit_diverse_beam.options import DiverseBeamOptions
from decodekit_diverse_beam.strategy import DiverseBeam

__all__ = ["DiverseBeam", "DiverseBeamOptions", "Hypotheses", "hamming_penalty", "DIVERSITY_TERMS"]


@hookimpl
def register_plugins(register):
    register("diverse_beam", DiverseBeam, options=DiverseBeamOptions, kind="strategy",
             description="diverse beam search: beam groups with a Hamming diversity penalty")
