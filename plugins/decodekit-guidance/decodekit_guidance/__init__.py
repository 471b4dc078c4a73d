"""decodekit-guidance: classifier-free guidance and contrastive decoding as one ``rescore`` plugin.

Pipeline entries::

    plugins:
      - {name: guidance, mode: cfg, guidance_scale: 1.5, negative_prompt: "Write something dull."}
      - {name: guidance, mode: contrastive, amateur_context: 4, alpha: 0.1, beta: 0.5}

Both keep the second branch (unconditional prompt, amateur) exact under speculative decoding: it is
evaluated over the same draft tree as the target and commits only the accepted nodes.
"""

from decodekit import hookimpl
from decodekit_guidance.options import GuidanceOptions
from decodekit_guidance.plugin import Guidance
from decodekit_guidance.scores import cfg_scores, contrastive_scores, plausible

__all__ = ["Guidance", "GuidanceOptions", "cfg_scores", "contrastive_scores", "plausible"]


@hookimpl
def register_plugins(register):
    register("guidance", Guidance, options=GuidanceOptions,
             description="classifier-free guidance (cfg) and contrastive decoding (contrastive)")
