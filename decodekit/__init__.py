"""decodekit: composable, exact LLM decoding strategies as plugins.

Library use::

    from decodekit import Pipeline
    pipe = Pipeline("smollm2-135m", decoding={"strategy": "greedy", "max_new_tokens": 32})
    print(pipe.generate("Name three colours.").text)
"""

__version__ = "0.1.0"

from decodekit.errors import (  # noqa: E402
    ConfigError,
    DecodekitError,
    ModelNotFoundError,
    NoAllowedTokenError,
    PluginError,
)
from decodekit.hookspecs import hookimpl  # noqa: E402
from decodekit.positions import Positions  # noqa: E402
from decodekit.state import TokenState  # noqa: E402
from decodekit.types import Decision, Draft, Result, Sequence, Verdict  # noqa: E402


def __getattr__(name: str):
    # Pipeline pulls in transformers; import it lazily so `decodekit validate` stays quick.
    if name in ("Pipeline", "Stream"):
        from decodekit import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = [
    "Pipeline", "Stream", "hookimpl", "Draft", "Verdict", "Decision", "Result", "Sequence",
    "Positions", "TokenState", "DecodekitError", "ConfigError", "PluginError", "ModelNotFoundError",
    "NoAllowedTokenError",
]
