"""decodekit-span: exact-extract span decoding (answers that are exact spans of a passage).

Pipeline::

    decoding: {strategy: greedy, max_new_tokens: 16}
    plugins:
      - {name: span, passage: "The Eiffel Tower is 330 metres tall.", search: exact}

``search: greedy`` masks every step to the tokens that continue an exact span of the passage (and
EOS once the answer is one); ``search: exact`` returns the most probable span under the model
("How optimal is greedy decoding for extractive QA?").
"""

from decodekit import hookimpl
from decodekit_span.automaton import SpanAutomaton, build
from decodekit_span.plugin import Span, SpanOptions
from decodekit_span.search import Best, best_span, sequence_logprob

__all__ = ["Span", "SpanOptions", "SpanAutomaton", "build", "Best", "best_span", "sequence_logprob"]


@hookimpl
def register_plugins(register):
    register("span", Span, options=SpanOptions,
             description="answers restricted to exact spans of a passage; search: exact finds the most probable span")
