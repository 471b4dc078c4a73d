"""decodekit-grammar: grammar-constrained and grammar-aligned decoding.

Constraints (one per plugin entry): ``regex``, ``choice``, ``json_schema``, ``lark`` (+ ``start``).
Backends behind one interface (:mod:`decodekit_grammar.backends.base`): llguidance and
outlines-core; ``backend: auto`` (the default) picks one per constraint. ``mode: aligned`` adds
ASAp grammar-aligned sampling.
"""

from __future__ import annotations

from decodekit import hookimpl
from decodekit_grammar.options import GrammarOptions
from decodekit_grammar.plugin import Grammar


@hookimpl
def register_plugins(register):
    register("grammar", Grammar, options=GrammarOptions,
             description="constrain outputs to a regex, choice, JSON Schema or lark CFG; "
                         "mode: aligned for ASAp grammar-aligned sampling")


__all__ = ["Grammar", "GrammarOptions", "register_plugins"]
