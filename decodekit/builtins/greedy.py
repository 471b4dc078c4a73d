"""Built-in strategy ``greedy``: the argmax of p' at every position (and exact over drafts)."""

from __future__ import annotations

import torch

from decodekit.hookspecs import hookimpl
from decodekit.plugins import NoOptions
from decodekit.types import Decision, Draft
from decodekit.verify import greedy_verdict


class Greedy:
    """Pick argmax p'; with a draft, accept while the draft equals argmax p'."""

    def __init__(self, options: NoOptions | None = None, pipeline: object = None):
        self.options = options

    @hookimpl
    def verify(self, drafts: list[Draft | None], logprobs: torch.Tensor) -> Decision:
        lp = logprobs.cpu()
        return Decision([greedy_verdict(d, lp[b]) for b, d in enumerate(drafts)])


@hookimpl
def register_plugins(register):
    register("greedy", Greedy, options=NoOptions, kind="strategy",
             description="greedy decoding: argmax of the processed distribution")
